"""The search driver (mctx's ``search.py``): simulate = select -> expand -> evaluate -> backward.

One *simulation* ``k`` draws everything random from ``Random(f"{seed}:{k}")`` (the validation batch,
the node choice for AFlow/random selection, the proposer's seed), writes each child workflow as soon
as it exists, lets the evaluator store every execution, and finally commits the new nodes, the
back-propagated visits/values and the run's counters in ONE transaction. Simulation 0 stores and
evaluates the benchmark's seed workflows.

Resume: a run killed in the middle of simulation ``k`` restarts at ``k``; the proposer returns the
same children (same seed), their workflow rows already exist (unique per run and code hash) and
their stored evaluations are reused, so nothing is lost or run twice and the final tree equals an
uninterrupted run. Budget accounting is therefore deterministic: a child that is evaluated counts
``batch x repeats`` evaluations whether they were executed now or found stored.

Budgets (``search.budget``) are hard bounds: a child's batch starts only if it fits, so an expansion
cut short by a bound keeps the children it evaluated (and commits), and one that evaluated none is
not committed at all (a resume with a higher bound redoes it, reusing what was stored). The seed
simulation is all or nothing: cut short, it is not committed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import Engine

from operators.graph import graph_hash
from operators.validate import code_hash, validation_error
from search.base import Candidate, EvalBatch, Evaluator, Proposer
from search.budget import Budget, BudgetCut, Spent, spent_by_run, unstored
from search.config import RANDOM, SearchConfig, SearchConfigError
from search.context import proposal_context
from search.promotion import promote, promotion_reserve, wants_promotion
from search.selection import AFLOW, backpropagate, select_aflow, select_leaf
from search.state import SearchState
from search.tree import ROOT_INDEX, Tree, load_tree, save_nodes
from storage.engine import session_scope
from storage.models import Run
from storage.repo import add_generation, add_workflow, find_run, generations_for, get_or_create_run


@dataclass(frozen=True)
class BenchmarkInfo:
    """What the driver needs from a benchmark (``workflow_rl`` passes its Benchmark object's fields)."""

    name: str
    description: str
    operator_names: tuple[str, ...]
    seed_workflows: dict[str, str]


@dataclass(frozen=True)
class SearchProgress:
    """Counters after a committed simulation (for progress displays)."""

    simulations: int  # expansions done (simulation 0, the seeds, not counted)
    evaluations: int  # budget accounting (see the module docstring)
    executed: int  # executions actually run by this process
    nodes: int
    best_score: float
    best_workflow_id: int | None
    cost: float | None
    tokens: int = 0  # LLM tokens of the run's stored validation evaluations (what --token-budget counts)


@dataclass(frozen=True)
class SearchResult:
    """Final state of a search."""

    run_id: int
    tree: Tree
    progress: SearchProgress
    seed_best_score: float
    stop_reason: str
    resume_notes: tuple[str, ...] = ()  # settings kept from the stored run on resume


class NewNode(NamedTuple):
    """A child that becomes a new node of the tree."""

    workflow_id: int
    code_hash: str
    graph_hash: str | None


class Search:
    """Runs (or resumes) one named search run against a database."""

    def __init__(
        self,
        engine: Engine,
        config: SearchConfig,
        benchmark: BenchmarkInfo,
        evaluator: Evaluator,
        proposer: Proposer,
    ):
        """Wire a database, a config, a benchmark description, an evaluator and a proposer."""
        self.engine = engine
        self.config = config
        self.benchmark = benchmark
        self.evaluator = evaluator
        self.proposer = proposer
        self.executed = 0
        self._cut: str | None = None
        self.resume_notes: list[str] = []
        """Settings of a resumed run that were kept from the stored run instead of the new config."""

    # ------------------------------------------------------------------ run

    async def run(
        self, run_name: str, on_progress: Callable[[SearchProgress], None] | None = None,
        *, parent: tuple[int, int] | None = None,
    ) -> SearchResult:
        """Run simulations until a stopping rule fires; resumes ``run_name`` if it exists.

        ``parent`` is ``(loop run id, loop round)`` when this search is a round of a loop: the run
        row records it (``runs.parent_id``, ``runs.loop_round``) for listings and views only.
        """
        problems = self.evaluator.validation_problems()
        if not problems:
            raise SearchConfigError(f"benchmark {self.benchmark.name!r} has no validation problems stored")
        self.problem_ids = [p.problem_id for p in problems]
        run_id, state = self._open_run(run_name, parent)
        self.run_id = run_id
        with session_scope(self.engine) as session:
            tree = load_tree(session, run_id)
        stop = None
        self._cut = None
        # one read of the stored tokens/dollars per simulation, shared by the stop rule and progress line
        spent = self._spent(for_progress=on_progress is not None)
        while True:
            stop = self._stop_reason(state, spent)
            if stop is not None:
                break
            k = state.next_simulation
            try:
                if k == 0:
                    await self._seed(run_id, tree, state)
                else:
                    await self._simulate(run_id, k, tree, state)
            except BudgetCut as cut:  # nothing was committed: drop what the simulation changed in memory
                stop = cut.args[0]
                with session_scope(self.engine) as session:
                    tree = load_tree(session, run_id)
                    state = SearchState.from_json(session.get(Run, run_id).state)
                break
            spent = self._spent(for_progress=on_progress is not None)
            if on_progress is not None:
                on_progress(self._progress(tree, state, spent))
            if self._cut is not None:  # a bound cut this expansion short (its children are committed)
                stop = self._cut
                break
        with session_scope(self.engine) as session:
            run = session.get(Run, run_id)
            run.status = "done"
            state.stop_reason = stop
            run.state = state.to_json()
        seeds = [tree.own_score[i] or 0.0 for i in tree.children[ROOT_INDEX]]
        return SearchResult(run_id, tree, self._progress(tree, state, self._spent(for_progress=True)),
                            max(seeds, default=0.0), stop, tuple(self.resume_notes))

    def _open_run(self, run_name: str, parent: tuple[int, int] | None = None) -> tuple[int, SearchState]:
        with session_scope(self.engine) as session:
            existing = find_run(session, run_name)
            if existing is not None:
                if existing.benchmark != self.benchmark.name:
                    raise SearchConfigError(
                        f"run {run_name!r} searches {existing.benchmark!r}, not {self.benchmark.name!r}: "
                        "pick another --run name or the same --benchmark"
                    )
                resumed = self.config.resumed_from(existing.config or {})
                self.resume_notes = [
                    f"{name}={getattr(resumed, name)!r} kept from the stored run (asked {getattr(self.config, name)!r})"
                    for name in sorted(vars(resumed)) if getattr(resumed, name) != getattr(self.config, name)
                ]
                self.config = resumed
            if existing is None or not (existing.state or {}).get("next_simulation"):  # seeds still to run
                per_seed = len(self.problem_ids) * self.config.repeats if self.config.promote else self._per_child()
                Budget.of(self.config).check_seeds_fit(len(self.benchmark.seed_workflows), per_seed)
            run = get_or_create_run(session, run_name, self.benchmark.name, kind="search",
                                    config=self.config.to_dict())
            if parent is not None:
                run.parent_id, run.loop_round = parent
            state = SearchState.from_json(run.state)
            run.status = "running"
            run.config = {**self.config.to_dict()}
            return run.id, state

    def _per_child(self) -> int:
        """Evaluations one child's batch counts."""
        return min(self.config.batch_size, len(self.problem_ids)) * self.config.repeats

    def _spent(self, for_progress: bool = False) -> Spent | None:
        """Tokens and dollars stored for the run; None when no bound needs them and no progress
        line shows them (nothing to read)."""
        if not (for_progress or Budget.of(self.config).metered):
            return None
        with session_scope(self.engine) as session:
            return spent_by_run(session, self.run_id)

    def _stop_reason(self, state: SearchState, spent: Spent | None) -> str | None:
        c = self.config
        if state.next_simulation == 0:
            return None
        n = self._per_child()  # an expansion starts only if at least one child's batch fits
        over = Budget.of(c).over(state.evaluations + n, spent, n)
        if over is not None:
            return over
        if c.max_simulations and state.next_simulation - 1 >= c.max_simulations:
            return "max_simulations"
        if c.patience and state.stale >= c.patience:
            return "converged"
        return None

    def _progress(self, tree: Tree, state: SearchState, spent: Spent) -> SearchProgress:
        best = tree.best()
        return SearchProgress(
            simulations=max(state.next_simulation - 1, 0), evaluations=state.evaluations,
            executed=self.executed, nodes=len(tree) - 1,
            best_score=0.0 if best is None else tree.own_score[best] or 0.0,
            best_workflow_id=None if best is None else tree.workflow_id[best], cost=state.cost,
            tokens=spent.tokens,
        )

    # ------------------------------------------------------------------ simulation

    def _batch(self, rng: random.Random) -> list[int]:
        size = min(self.config.batch_size, len(self.problem_ids))
        return sorted(rng.sample(self.problem_ids, size))

    async def _seed(self, run_id: int, tree: Tree, state: SearchState) -> None:
        """Simulation 0: store the seed workflows and evaluate them on batch 0."""
        rng = random.Random(f"{self.config.seed}:0")
        batch = sorted(self.problem_ids) if self.config.promote else self._batch(rng)
        touched: set[int] = set()
        for name in sorted(self.benchmark.seed_workflows):
            candidate = Candidate(code=self.benchmark.seed_workflows[name], source="seed", description=name)
            reward, child = await self._child(run_id, tree, None, candidate, batch, 0, state)
            if child is not None:
                index = tree.add_node(ROOT_INDEX, child.workflow_id, child.code_hash, reward, 0, graph_hash=child.graph_hash)
                touched.add(index)
        self._commit(run_id, tree, touched, state)

    async def _simulate(self, run_id: int, k: int, tree: Tree, state: SearchState) -> None:
        """Simulation ``k >= 1``: select a node, expand it with G children, evaluate, back-propagate."""
        c = self.config
        rng = random.Random(f"{c.seed}:{k}")
        batch = self._batch(rng)
        if c.selection == AFLOW:
            node = select_aflow(tree, rng, c.aflow_top_k, c.aflow_alpha, c.aflow_lambda)
        elif c.selection == RANDOM:
            node = rng.randrange(1, len(tree))
        else:
            node = select_leaf(tree, c.selection, c.exploration)
        context = proposal_context(self.engine, self.benchmark, tree, node, k, rng, self.config.max_failures)
        candidates = await self.proposer.propose(context, c.children, rng.randrange(2**31))
        rewards: list[float] = []
        touched = {node}
        for candidate in candidates[: c.children]:
            try:
                reward, child = await self._child(run_id, tree, node, candidate, batch, k, state)
            except BudgetCut as cut:
                if len(touched) == 1:  # no child evaluated: nothing to commit, a resume redoes it
                    raise
                self._cut = cut.args[0]
                break
            rewards.append(reward)
            if child is not None:
                index = tree.add_node(node, child.workflow_id, child.code_hash, reward, k, candidate.prior,
                                     graph_hash=child.graph_hash)
                touched.add(index)
        tree.expansions[node] += 1
        if not rewards:
            value = 0.0
        elif c.backup == "max":
            value = max(rewards)  # the best child is what this expansion achieved
        else:
            value = sum(rewards) / len(rewards)
        path = node
        while path != ROOT_INDEX:
            touched.add(path)
            path = tree.parent[path]
        backpropagate(tree, node, value, mode=c.backup)
        self._commit(run_id, tree, touched, state)

    async def _child(
        self, run_id: int, tree: Tree, parent: int | None, candidate: Candidate, batch: list[int], k: int,
        state: SearchState,
    ) -> tuple[float, NewNode | None]:
        """Store one candidate; evaluate it unless invalid or a duplicate.

        Returns its reward and, for a new node, what the tree needs to add it (None: no new node).
        """
        digest = code_hash(candidate.code)
        error = validation_error(candidate.code, self.benchmark.operator_names)
        ghash = graph_hash(candidate.code) if error is None else None
        for i in range(1, len(tree)):  # duplicates of a node already in the tree reuse its score
            if tree.code_hash[i] == digest or (ghash is not None and tree.graph_hash[i] == ghash):
                return tree.own_score[i] or 0.0, None
        budget = Budget.of(self.config)
        n = len(batch) * self.config.repeats
        if error is None:  # before anything is stored: an invalid child costs nothing (room for a promotion kept)
            most = n + promotion_reserve(self.config, parent, len(batch), len(self.problem_ids))
            over = budget.over(state.evaluations + most, self._spent(), most)
            if over is not None:
                raise BudgetCut(over)
        parent_wid = None if parent is None else tree.workflow_id[parent]
        with session_scope(self.engine) as session:
            workflow = add_workflow(
                session, run_id, candidate.code, candidate.source, code_hash=digest, graph_hash=ghash,
                parent_id=parent_wid, round=k, valid=error is None, error=error,
                # Policy children carry their sampler's version; edits that contain policy-written
                # code (grafts) carry it as the candidate's own policy_version.
                checkpoint_id=(candidate.generation.policy_version if candidate.generation
                               else candidate.policy_version),
            )
            if candidate.generation is not None and not generations_for(session, workflow.id):
                g = candidate.generation
                add_generation(
                    session, run_id=run_id, workflow_id=workflow.id, problem_id=g.problem_id,
                    parent_workflow_id=parent_wid, group_key=f"run{run_id}:sim{k}:node{parent_wid}",
                    prompt_text=g.prompt_text, completion_text=g.completion_text,
                    prompt_token_ids=None if g.prompt_token_ids is None else list(g.prompt_token_ids),
                    completion_token_ids=None if g.completion_token_ids is None else list(g.completion_token_ids),
                    behavior_logprobs=None if g.behavior_logprobs is None else list(g.behavior_logprobs),
                    temperature=g.temperature, top_p=g.top_p, top_k=g.top_k, sampler=g.sampler,
                    policy_version=g.policy_version, truncated=g.truncated,
                )
            workflow_id = workflow.id
        if error is not None:
            return 0.0, None  # invalid: stored with its error, never evaluated
        if any(tree.workflow_id[i] == workflow_id for i in range(1, len(tree))):
            return tree.own_score[tree.index_of_workflow(workflow_id)] or 0.0, None
        if budget.metered:  # measure this child on one problem, then check its whole batch
            probe = await self.evaluator.evaluate(run_id, workflow_id, candidate.code, batch[:1], 1)
            self.executed += probe.executed
            with session_scope(self.engine) as session:
                missing, spent = unstored(session, workflow_id, batch, self.config.repeats), spent_by_run(session, run_id)
            over = budget.over(state.evaluations + n, spent, missing)
            if over is not None:
                raise BudgetCut(over)
        result: EvalBatch = await self.evaluator.evaluate(
            run_id, workflow_id, candidate.code, batch, self.config.repeats
        )
        self._count(result, result.records, len(batch), state)
        if wants_promotion(self.config, tree, parent, result.mean_reward, len(batch), len(self.problem_ids)):
            result = await promote(self, run_id, workflow_id, candidate.code, batch, state)
        return result.mean_reward, NewNode(workflow_id, digest, ghash)

    def _count(self, result: EvalBatch, records: Any, problems: int, state: SearchState) -> None:
        """Count ``problems`` x repeats evaluations of ``result`` (``records`` are the new ones) in the run's counters."""
        self.executed += result.executed
        state.evaluations += problems * self.config.repeats
        costs = [r.cost for r in records]
        if state.cost is not None:
            state.cost = None if any(x is None for x in costs) else state.cost + sum(costs)

    def _commit(self, run_id: int, tree: Tree, touched: set[int], state: SearchState) -> None:
        """Persist new nodes, updated visits/values and the counters in one transaction."""
        scores = sorted((s for s in tree.own_score[1:] if s is not None), reverse=True)[: self.config.top_k]
        topk = round(sum(scores) / len(scores), 12) if scores else None
        state.stale = state.stale + 1 if topk == state.topk_mean and state.next_simulation else 0
        state.topk_mean = topk
        state.next_simulation += 1
        with session_scope(self.engine) as session:
            save_nodes(session, run_id, tree, touched)
            run = session.get(Run, run_id)
            run.state = state.to_json()
