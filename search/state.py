"""A search run's counters between simulations, stored as JSON in ``runs.state`` after each one.

Resuming reads them back, so a killed search continues at the next simulation with the same
budget counter and early-stopping streak. The JSON keys are the field names (unknown keys that a
later version may add are kept as they are).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class SearchState:
    """Counters of one search run."""

    next_simulation: int = 0
    """Index of the next simulation (0 = the seeds still have to run)."""
    evaluations: int = 0
    """The budget counter: (workflow, problem, repeat) evaluations counted against ``--budget``."""
    cost: float | None = 0.0
    """Dollars of the evaluations run; None once one of them had an unknown price."""
    stale: int = 0
    """Simulations in a row whose top-k mean score did not change (early stopping's patience)."""
    topk_mean: float | None = None
    """The top-k mean validation score after the last simulation."""
    stop_reason: str | None = None
    """Why the last run of the search stopped (a budget, max_simulations, converged)."""
    other: dict[str, Any] = field(default_factory=dict)
    """Stored keys this version does not know, written back unchanged."""

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> SearchState:
        """Read ``runs.state`` of a search run (None or empty: a new run)."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)} - {"other"}
        return cls(**{k: data.pop(k) for k in list(data) if k in known}, other=data)

    def to_json(self) -> dict[str, Any]:
        """The stored form."""
        out = asdict(self)
        return {**out.pop("other"), **out}
