"""The loop's resumable state: one :class:`RoundState` per round, stored as JSON in ``runs.state``.

A round goes through its phases in order (:data:`Phase`), and the driver saves the state after
each, so a killed ``workflow-rl loop`` continues at the phase it was in. The JSON shape is the one
earlier versions wrote (a round's key appears once its phase has set it), so old loops resume.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

Phase = Literal["search", "data", "train", "select", "done"]
"""search: round r's search runs; data: the policy samples train problems; train: the learner runs;
select: the new checkpoint is scored greedy on validation (``select_policy="validation"`` only); done."""


@dataclass
class RoundState:
    """What one round has done so far (fields stay None until the phase that sets them has finished)."""

    search_run: str
    phase: Phase = "search"
    best_score: float | None = None
    best_workflow_id: int | None = None
    evaluations: int | None = None
    search_run_id: int | None = None
    samples: dict[str, int] | None = None
    checkpoint_id: int | None = None
    checkpoint_path: str | None = None
    train_steps: int | None = None
    policy_validation: float | None = None  # greedy validation accuracy of the checkpoint (select_policy)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RoundState:
        """Read a stored round (keys this version does not know are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self) -> dict[str, Any]:
        """The stored form: the fields that are set."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class LoopState:
    """Every round's state by round number, plus any other keys a stored state holds (kept as they are)."""

    rounds: dict[int, RoundState] = field(default_factory=dict)
    other: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> LoopState:
        """Read ``runs.state`` of a loop run (None: a new loop)."""
        data = dict(data or {})
        rounds = {int(k): RoundState.from_json(v) for k, v in data.pop("rounds", {}).items()}
        return cls(rounds, data)

    def to_json(self) -> dict[str, Any]:
        """The stored form (round numbers as string keys: JSON objects have string keys)."""
        return {**self.other, "rounds": {str(r): rs.to_json() for r, rs in sorted(self.rounds.items())}}

    def done(self) -> list[tuple[int, RoundState]]:
        """The finished rounds, in order."""
        return [(r, rs) for r, rs in sorted(self.rounds.items()) if rs.phase == "done"]
