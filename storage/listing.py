"""Runs as the user sees them: a loop with its totals, its rounds listed under it.

A loop stores round ``k`` as its own run (``<loop>/r<k>``, ``runs.parent_id`` = the loop); its own
row holds no workflows. :func:`run_listing` gives every run with its counts, each loop followed by
its rounds, and the loop's counts summed over them, so ``workflow-rl runs`` and ``workflow-rl report``
print the same figures.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.orm import Session

_COUNTS_SQL = """
SELECT r.id, r.name, r.benchmark, r.kind, r.status, r.created_at, r.parent_id, r.loop_round,
       (SELECT COUNT(*) FROM workflows w WHERE w.run_id = r.id) AS workflows,
       (SELECT COUNT(*) FROM evaluations e WHERE e.run_id = r.id) AS evaluations,
       (SELECT COUNT(*) FROM evaluations e JOIN problems p ON p.id = e.problem_id
        WHERE e.run_id = r.id AND p.split = 'validation') AS validation_evaluations,
       (SELECT MAX(l.mean_reward) FROM leaderboard l WHERE l.run_id = r.id) AS best_validation
FROM runs r ORDER BY r.id
"""


@dataclass(frozen=True)
class RunRow:
    """One run with what it holds; a loop's counts include its rounds'.

    ``evaluations`` counts every stored execution (workflow x problem x repeat, any split: search
    on validation, the learner's data on train, ``eval`` on test); ``validation_evaluations`` only
    those on the validation split, which is what search spends its budget on. ``best_validation``
    is the best workflow's mean validation reward (the ``leaderboard`` view).
    """

    id: int
    name: str
    benchmark: str
    kind: str
    status: str
    created_at: datetime | str
    parent_id: int | None
    loop_round: int | None
    workflows: int
    evaluations: int
    validation_evaluations: int
    best_validation: float | None
    depth: int = 0  # 1 for a loop's round, listed under its loop


def _with_rounds(row: RunRow, rounds: list[RunRow]) -> RunRow:
    """``row`` with its rounds' counts added (a loop's own row holds no workflows of its own)."""
    bests = [r.best_validation for r in (row, *rounds) if r.best_validation is not None]
    return replace(
        row,
        workflows=row.workflows + sum(r.workflows for r in rounds),
        evaluations=row.evaluations + sum(r.evaluations for r in rounds),
        validation_evaluations=row.validation_evaluations + sum(r.validation_evaluations for r in rounds),
        best_validation=max(bests) if bests else None,
    )


def run_listing(session: Session) -> list[RunRow]:
    """Every run, oldest first, each loop directly followed by its rounds (``depth`` 1, by round)."""
    rows = [RunRow(**dict(r._mapping)) for r in session.execute(text(_COUNTS_SQL))]
    ids = {r.id for r in rows}
    children: dict[int, list[RunRow]] = {}
    for r in rows:
        if r.parent_id is not None and r.parent_id in ids:
            children.setdefault(r.parent_id, []).append(r)
    out: list[RunRow] = []
    for r in rows:
        if r.parent_id is not None and r.parent_id in ids:
            continue  # listed under its loop
        rounds = sorted(children.get(r.id, []), key=lambda c: (c.loop_round is None, c.loop_round, c.id))
        out.append(_with_rounds(r, rounds))
        out += [replace(c, depth=1) for c in rounds]
    return out

