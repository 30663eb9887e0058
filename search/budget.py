"""Search budgets in evaluations, LLM tokens and dollars, and the rule that keeps a search under them.

A bound is never crossed by starting work that might not fit, because a batch cannot be stopped
half way without losing what it paid for. The driver asks :meth:`Budget.over` before each child
workflow's batch (and before each expansion, for one child's worth), with these counts:

- **evaluations** (``--budget``) are the run's deterministic counter in ``runs.state``: a child
  evaluated on ``batch x repeats`` problems counts that many, executed now or found stored. They
  are known before the batch runs, so this bound is exact.
- **tokens** (``--token-budget``) and **dollars** (``--cost-budget``) are summed from the
  ``evaluations`` rows stored for the run's validation split (:func:`spent_by_run`), so a resumed
  search counts what was already spent, a search killed with SIGKILL included. What a batch will
  use is unknown before it runs; the rule is a measured worst case: the batch starts only if
  ``spent + missing x largest <= bound``, where ``missing`` is how many of its evaluations are not
  stored yet and ``largest`` the most tokens (dollars) one evaluation of this run has used so far.
  With such a budget the driver first evaluates a child's first problem alone (a probe, reused by
  the full batch), so ``largest`` includes that child. Only the run's very first evaluation starts
  unmeasured; apart from it, a search crosses the bound only if one evaluation uses more than every
  evaluation measured before it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from search.config import SearchConfig, SearchConfigError
from storage.models import Evaluation, Problem


class BudgetCut(Exception):
    """A child's batch does not fit a budget: the expansion stops before it (``args[0]``: the bound)."""


EVALUATIONS, TOKENS, COST = "budget", "token_budget", "cost_budget"
"""Stop reasons of the three bounds (as stored in ``runs.state["stop_reason"]``)."""


@dataclass(frozen=True)
class Spent:
    """What the stored validation evaluations of one run used."""

    evaluations: int = 0  # stored rows (not the budget counter, which lives in runs.state)
    tokens: int = 0  # prompt + completion tokens
    cost: float = 0.0  # USD over the rows with a known price
    unpriced: int = 0  # rows whose cost is NULL (price unknown)
    max_tokens: int | None = None  # most tokens of one evaluation; None before the first
    max_cost: float | None = None  # most dollars of one evaluation; None before the first priced one


def spent_by_run(session: Session, run_id: int) -> Spent:
    """Sum the tokens and cost of every stored evaluation of ``run_id`` on validation problems.

    The test split is left out: ``workflow-rl eval`` scores it after the search, outside its budget.
    """
    tokens = Evaluation.prompt_tokens + Evaluation.completion_tokens
    row = session.execute(
        select(func.count(), func.coalesce(func.sum(tokens), 0), func.coalesce(func.sum(Evaluation.cost), 0.0),
               func.count(Evaluation.cost), func.max(tokens), func.max(Evaluation.cost))
        .select_from(Evaluation)
        .join(Problem, Problem.id == Evaluation.problem_id)
        .where(Evaluation.run_id == run_id, Problem.split == "validation")
    ).one()
    count, total, cost, priced, max_tokens, max_cost = row
    return Spent(evaluations=count, tokens=int(total), cost=float(cost), unpriced=count - priced,
                 max_tokens=None if max_tokens is None else int(max_tokens),
                 max_cost=None if max_cost is None else float(max_cost))


def unstored(session: Session, workflow_id: int, problem_ids: list[int], repeats: int) -> int:
    """How many of ``problem_ids x range(repeats)`` have no stored evaluation of ``workflow_id`` yet.

    A count, not the rows: (workflow, problem, repeat) is unique and ``problem_ids`` are distinct.
    """
    stored = session.scalar(select(func.count()).select_from(Evaluation).where(
        Evaluation.workflow_id == workflow_id, Evaluation.problem_id.in_(problem_ids), Evaluation.repeat < repeats))
    return len(problem_ids) * repeats - int(stored or 0)


@dataclass(frozen=True)
class Budget:
    """The bounds of one search (0 = no bound)."""

    evaluations: int = 0
    tokens: int = 0
    cost: float = 0.0

    @classmethod
    def of(cls, config: SearchConfig) -> Budget:
        """The bounds set in ``config``."""
        return cls(config.budget, config.token_budget, config.cost_budget)

    @property
    def metered(self) -> bool:
        """True when tokens or dollars are bounded (the driver then probes each child first)."""
        return bool(self.tokens or self.cost)

    def check_seeds_fit(self, seeds: int, per_seed: int) -> None:
        """Refuse an evaluation budget smaller than the seed simulation (run before anything is stored)."""
        need = seeds * per_seed
        if self.evaluations and need > self.evaluations:
            raise SearchConfigError(
                f"budget={self.evaluations} is smaller than the seed simulation ({seeds} seed workflows x "
                f"{per_seed} evaluations = {need}): use --budget {need} or more")

    def over(self, evaluations_after: int, spent: Spent | None, missing: int) -> str | None:
        """The bound (stop reason) that ``missing`` more evaluations could cross, or None if they fit.

        ``evaluations_after`` is the run's evaluation counter once the batch is counted; ``spent`` is
        :func:`spent_by_run` (only read when tokens or dollars are bounded).
        """
        if self.evaluations and evaluations_after > self.evaluations:
            return EVALUATIONS
        if spent is None or not missing:
            return None
        if self.tokens and spent.max_tokens is not None and spent.tokens + missing * spent.max_tokens > self.tokens:
            return TOKENS
        if self.cost:
            if spent.unpriced:
                raise SearchConfigError(
                    f"cost_budget={self.cost!r} cannot be counted: {spent.unpriced} stored evaluations of this "
                    "run have an unknown price (NULL cost); state the executor's price (--price) or use "
                    "--token-budget")
            # The slack absorbs float rounding of the sum, never a whole evaluation.
            if spent.max_cost is not None and spent.cost + missing * spent.max_cost > self.cost + 1e-12:
                return COST
        return None
