"""What a proposer sees of the node it expands: :func:`proposal_context` reads it from the database.

``benchmark`` is the search's :class:`~search.search.BenchmarkInfo` (name, description, operators).
"""

from __future__ import annotations

import difflib
import random
from typing import Any

from sqlalchemy import Engine, select

from search.base import FailedExample, ProposalContext
from search.tree import Tree
from storage.engine import session_scope
from storage.models import Evaluation, Problem, Workflow


def _summary(parent_code: str, child_code: str, limit: int = 160) -> str:
    """Lines the child added, compactly: the history entry shown to later proposals."""
    added = [
        line[1:].strip() for line in difflib.unified_diff(parent_code.splitlines(), child_code.splitlines(),
                                                           lineterm="", n=0)
        if line.startswith("+") and not line.startswith("+++")
    ]
    return (" | ".join(added) or "no textual change")[:limit]


def proposal_context(engine: Engine, benchmark: Any, tree: Tree, node: int, k: int, rng: random.Random,
                     max_failures: int) -> ProposalContext:
    """The parent's code, score, sampled failures, solved problems and earlier children."""
    with session_scope(engine) as session:
        parent = session.get(Workflow, tree.workflow_id[node])
        rows = session.execute(
            select(Evaluation, Problem)
            .join(Problem, Problem.id == Evaluation.problem_id)
            .where(Evaluation.workflow_id == parent.id, Problem.split == "validation")
            .order_by(Evaluation.problem_id, Evaluation.repeat)
        ).all()
        failures = [
            FailedExample(p.id, p.text, str(p.reference), e.answer if e.answer is not None else e.output,
                          e.error_message)
            for e, p in rows if e.reward < 1.0
        ]
        passes = tuple(p.text for e, p in rows if e.reward >= 1.0)
        history = []
        for ch in tree.children[node]:
            child = session.get(Workflow, tree.workflow_id[ch])
            history.append((_summary(parent.code, child.code), tree.own_score[ch] or 0.0))
        code = parent.code
    every = tuple(failures)
    if len(failures) > max_failures:
        failures = [failures[i] for i in sorted(rng.sample(range(len(failures)), max_failures))]
    return ProposalContext(
        benchmark=benchmark.name, task_description=benchmark.description,
        operator_names=benchmark.operator_names, parent_workflow_id=tree.workflow_id[node],
        parent_code=code, parent_score=tree.own_score[node] or 0.0, failures=tuple(failures),
        history=tuple(history), round=k, passes=passes, all_failures=every,
    )
