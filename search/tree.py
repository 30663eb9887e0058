"""The search tree: in-memory state (mctx's ``tree.py``) mirrored row by row in ``search_nodes``.

Index 0 is a virtual root that is never stored: its children are the benchmark's seed workflows
(``search_nodes.parent_node_id IS NULL``). Every other index is one stored node. A node's
``own_score`` is the mean validation reward of its workflow; ``value_sum / visits`` is its MCTS value
``Q`` after back-propagation. ``expansions`` counts how many times the node was expanded; it is
stored in ``search_nodes.expansions`` (not derived from the children: an expansion whose children
were all duplicates adds no child row) and written in the simulation's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import Evaluation, Problem, SearchNode, Workflow

ROOT_INDEX = 0
"""Index of the virtual root (the parent of the seed workflows)."""


@dataclass
class Tree:
    """Parallel lists, one entry per node; index 0 is the virtual root."""

    node_id: list[int | None] = field(default_factory=lambda: [None])  # search_nodes.id
    workflow_id: list[int | None] = field(default_factory=lambda: [None])
    code_hash: list[str | None] = field(default_factory=lambda: [None])
    graph_hash: list[str | None] = field(default_factory=lambda: [None])
    parent: list[int] = field(default_factory=lambda: [-1])  # parent_index; -1 for the virtual root
    children: list[list[int]] = field(default_factory=lambda: [[]])
    visits: list[int] = field(default_factory=lambda: [0])
    value_sum: list[float] = field(default_factory=lambda: [0.0])
    prior: list[float | None] = field(default_factory=lambda: [None])
    expansions: list[int] = field(default_factory=lambda: [0])
    depth: list[int] = field(default_factory=lambda: [-1])
    round: list[int] = field(default_factory=lambda: [-1])  # simulation index that created the node
    own_score: list[float | None] = field(default_factory=lambda: [None])

    def __len__(self) -> int:
        return len(self.parent)

    def add_node(
        self,
        parent: int,
        workflow_id: int,
        code_hash: str,
        own_score: float,
        round: int,
        prior: float | None = None,
        node_id: int | None = None,
        graph_hash: str | None = None,
    ) -> int:
        """Append a node under ``parent`` with one visit worth ``own_score``; returns its index."""
        index = len(self.parent)
        self.node_id.append(node_id)
        self.workflow_id.append(workflow_id)
        self.code_hash.append(code_hash)
        self.graph_hash.append(graph_hash)
        self.parent.append(parent)
        self.children.append([])
        self.children[parent].append(index)
        self.visits.append(1)
        self.value_sum.append(own_score)
        self.prior.append(prior)
        self.expansions.append(0)
        self.depth.append(self.depth[parent] + 1)
        self.round.append(round)
        self.own_score.append(own_score)
        return index

    def node_visits(self, node: int) -> int:
        """Visits of ``node``; the virtual root's visits are the sum over the seeds."""
        if node == ROOT_INDEX:
            return sum(self.visits[ch] for ch in self.children[ROOT_INDEX])
        return self.visits[node]

    def q(self, node: int) -> float:
        """Mean back-propagated value ``value_sum / visits`` (0 for an unvisited node)."""
        return self.value_sum[node] / self.visits[node] if self.visits[node] else 0.0

    def index_of_workflow(self, workflow_id: int) -> int | None:
        """Index of the node holding ``workflow_id`` (None when it is not in the tree)."""
        for i in range(1, len(self)):
            if self.workflow_id[i] == workflow_id:
                return i
        return None

    def best(self) -> int | None:
        """Index of the node with the highest own score (earliest on ties); None if empty."""
        nodes = [i for i in range(1, len(self)) if self.own_score[i] is not None]
        if not nodes:
            return None
        return max(nodes, key=lambda i: (self.own_score[i], -i))  # type: ignore[arg-type]

    def snapshot(self) -> list[tuple]:
        """A database-id-free description of the tree, for equality checks (golden/resume tests)."""
        return [
            (
                self.code_hash[i],
                self.parent[i],
                self.visits[i],
                round(self.value_sum[i], 12),
                self.prior[i],
                self.expansions[i],
                self.round[i],
                self.depth[i],
                None if self.own_score[i] is None else round(self.own_score[i], 12),
            )
            for i in range(1, len(self))
        ]


def validation_scores(session: Session, run_id: int) -> dict[int, float]:
    """Mean validation reward per workflow of the run, summed in (problem, repeat) order."""
    rows = session.execute(
        select(Evaluation.workflow_id, Evaluation.reward)
        .join(Problem, Problem.id == Evaluation.problem_id)
        .where(Evaluation.run_id == run_id, Problem.split == "validation")
        .order_by(Evaluation.workflow_id, Evaluation.problem_id, Evaluation.repeat)
    ).all()
    sums: dict[int, list[float]] = {}
    for workflow_id, reward in rows:
        sums.setdefault(workflow_id, []).append(reward)
    return {wid: sum(rs) / len(rs) for wid, rs in sums.items()}


def load_tree(session: Session, run_id: int) -> Tree:
    """Rebuild the in-memory tree of a run from ``search_nodes`` (node order = insertion order)."""
    tree = Tree()
    rows = session.execute(
        select(SearchNode, Workflow.code_hash, Workflow.graph_hash)
        .join(Workflow, Workflow.id == SearchNode.workflow_id)
        .where(SearchNode.run_id == run_id)
        .order_by(SearchNode.id)
    ).all()
    scores = validation_scores(session, run_id)
    by_node_id: dict[int, int] = {}
    for node, code_hash, graph_hash in rows:
        parent = ROOT_INDEX if node.parent_node_id is None else by_node_id[node.parent_node_id]
        index = tree.add_node(
            parent, node.workflow_id, code_hash, scores.get(node.workflow_id, 0.0), node.round,
            node.prior, node.id, graph_hash,
        )
        tree.visits[index] = node.visits
        tree.value_sum[index] = node.value_sum
        tree.expansions[index] = node.expansions
        by_node_id[node.id] = index
    return tree


def save_nodes(session: Session, run_id: int, tree: Tree, touched: set[int]) -> None:
    """Insert new nodes and update visits/values/expansions of ``touched`` ones, in index order.

    Runs inside the caller's transaction so that one simulation commits atomically: the expanded
    node's count and the back-propagated values can never be split by a crash.
    """
    for i in sorted(touched):
        if i == ROOT_INDEX:
            continue
        if tree.node_id[i] is None:
            parent = tree.parent[i]
            row = SearchNode(
                run_id=run_id,
                workflow_id=tree.workflow_id[i],
                parent_node_id=None if parent == ROOT_INDEX else tree.node_id[parent],
                round=tree.round[i],
                depth=tree.depth[i],
                visits=tree.visits[i],
                value_sum=tree.value_sum[i],
                prior=tree.prior[i],
                expansions=tree.expansions[i],
                expanded=tree.expansions[i] > 0,
            )
            session.add(row)
            session.flush()
            tree.node_id[i] = row.id
        else:
            row = session.get(SearchNode, tree.node_id[i])
            assert row is not None, f"search node {tree.node_id[i]} vanished"
            row.visits = tree.visits[i]
            row.value_sum = tree.value_sum[i]
            row.expansions = tree.expansions[i]
            row.expanded = tree.expansions[i] > 0
