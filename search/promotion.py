"""The promotion check (``SearchConfig.promote``): a node becomes the best only on the whole validation split.

With a stochastic executor and a validation batch smaller than the split, a child's batch score is
noisy twice over (which problems it drew, which samples the model gave), and the search's best node
is the maximum of many such scores: the winner's curse picks a lucky batch, not a better workflow.
Racing methods (successive halving, Hoeffding races, the re-evaluation of candidates before they
replace the incumbent in evolutionary search with noisy fitness) screen cheaply and confirm before
promoting. Here: the seeds are scored on the whole split; a child is screened on its batch, and only
one whose batch score beats the best node's is evaluated on the rest of the split (its batch rows are
reused), its score becoming its mean over the whole split. The best node is thus always compared on
the same problems (and, since LLM operators draw their seeds from the request, the same samples
wherever two workflows send the same requests: see ``operators.llm_ops``).

Off by default: the tool-only benchmarks are deterministic, and their results stay as they were.
"""

from __future__ import annotations

from typing import Any

from search.base import EvalBatch
from search.budget import Budget, BudgetCut
from search.config import SearchConfig
from search.state import SearchState
from search.tree import Tree


def wants_promotion(config: SearchConfig, tree: Tree, parent: int | None, score: float, batch: int,
                    problems: int) -> bool:
    """Whether a child (not a seed) with batch ``score`` must be confirmed on the whole split first."""
    best = tree.best()
    if not config.promote or parent is None or best is None or batch >= problems:
        return False
    return score > (tree.own_score[best] or 0.0)


def promotion_reserve(config: SearchConfig, parent: int | None, batch: int, problems: int) -> int:
    """Evaluations a child's promotion may add: its batch starts only if they fit too (nothing is stored
    for a child that could not be confirmed), so an evaluation budget is never crossed by a promotion."""
    if not config.promote or parent is None or batch >= problems:
        return 0
    return (problems - batch) * config.repeats


async def promote(search: Any, run_id: int, workflow_id: int, code: str, batch: list[int],
                  state: SearchState) -> EvalBatch:
    """Evaluate the child on the whole validation split (batch rows reused) and count what is new.

    ``search`` is the :class:`search.search.Search` driver (its evaluator, config, counters).

    The rest of the split must fit the bounds as a batch does (an evaluation budget always has room:
    :func:`promotion_reserve`; a token or dollar bound is re-measured); if it does not, :class:`BudgetCut`
    (the child is not committed; its stored rows are reused by a resume with a higher bound).
    """
    config, problems = search.config, sorted(search.problem_ids)
    n = (len(problems) - len(batch)) * config.repeats
    over = Budget.of(config).over(state.evaluations + n, search._spent(), n)
    if over is not None:
        raise BudgetCut(over)
    result = await search.evaluator.evaluate(run_id, workflow_id, code, problems, config.repeats)
    in_batch = set(batch)
    search._count(result, [r for r in result.records if r.problem_id not in in_batch], len(problems) - len(batch), state)
    return result
