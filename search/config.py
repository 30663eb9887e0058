"""``SearchConfig``: the one documented configuration of ``workflow-rl search`` (like TRL's ``GRPOConfig``).

Every field has help text (``metadata["help"]``, also used by the CLI); ``__post_init__`` validates
and raises :class:`SearchConfigError` with the bad value and the fix. The CLI turns it into the
project's ``WorkflowRLError`` (``search`` does not import ``workflow_rl``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from search.selection import BACKUPS, SELECTION_METHODS

RANDOM = "random"
"""Baseline selection: expand a uniformly random node (for ``benchmarks/bench_search.py``)."""

PROPOSERS = ("mutation", "llm", "policy")
"""Proposer names accepted by ``--proposer``."""

RESUME_FIXED = ("benchmark", "benchmark_options", "proposer", "selection", "seed", "children", "batch_size", "repeats",
                "exploration", "backup", "aflow_top_k", "aflow_alpha", "aflow_lambda", "promote")
"""Fields that decide the tree: a resumed run keeps its stored values (stopping rules may change)."""


class SearchConfigError(ValueError):
    """An invalid search setting; the message states the value and the fix."""


def help_field(default: Any, help: str) -> Any:  # noqa: A002 - "help" mirrors argparse/typer naming
    """A dataclass field whose help text (``metadata["help"]``) the CLI shows; every config of the project uses it."""
    return field(default=default, metadata={"help": help})


@dataclass
class SearchConfig:
    """Settings of one MCTS search over workflow programs."""

    benchmark: str = help_field("calc", "Benchmark whose validation split drives the search.")
    benchmark_options: dict[str, str] = field(default_factory=dict, metadata={"help": (
        "Options of the benchmark as typed (KEY -> VALUE text, e.g. path of a JSONL file); stored "
        "with the run so that eval and a resume rebuild the same benchmark.")})
    proposer: str = help_field("mutation", "Who writes children: mutation (no model), llm (chat endpoint), policy.")
    selection: str = help_field("uct", "Node selection: uct, puct (proposer priors), aflow (soft-mixed), random.")
    budget: int = help_field(
        6000, "Evaluation budget: workflow x problem x repeat executions, a hard bound: a child's batch "
        "starts only if it fits (an expansion may keep fewer children); 0 = none."
    )
    token_budget: int = help_field(
        0, "LLM token budget (prompt + completion tokens of the run's stored validation evaluations); a "
        "child's batch starts only if the tokens spent plus its unstored evaluations times the most tokens "
        "one evaluation of the run used (its own first problem, run alone first, included) fit; 0 = none. "
        "See docs/search.md."
    )
    cost_budget: float = help_field(
        0.0, "Dollar budget, counted like --token-budget from each evaluation's stored cost (needs "
        "a known price: a loopback endpoint is free, else --price); 0 = none."
    )
    max_simulations: int = help_field(0, "Stop after this many simulations (expansions); 0 = no limit.")
    children: int = help_field(4, "G: child workflows proposed per expansion (siblings share one problem batch).")
    batch_size: int = help_field(60, "Validation problems per expansion (all of them when the split is smaller).")
    repeats: int = help_field(1, "Executions per (workflow, problem); >1 for stochastic (LLM) executors.")
    promote: bool = help_field(
        False, "Promotion check, for noisy (LLM) executors: the seeds are scored on the whole validation split, and "
        "a child whose batch score beats the best node's is evaluated on the whole split too before it can become "
        "the best (its score becomes its mean there), so a lucky batch is not selected. Its evaluations count in "
        "--budget. Off (default): every node is scored on its batch alone, as before."
    )
    seed: int = help_field(0, "Seed: each simulation's RNG derives from (seed, simulation index).")
    exploration: float = help_field(0.1, "c in UCT/PUCT: weight of the exploration bonus (rewards are in [0, 1]).")
    backup: str = help_field("max", "Back-propagation: max (best reward found below a node; default, see search.selection) or mean.")
    aflow_top_k: int = help_field(3, "AFlow selection: candidates are the top-k nodes by score plus the seeds.")
    aflow_alpha: float = help_field(0.2, "AFlow selection: softmax temperature on scores in percent.")
    aflow_lambda: float = help_field(0.3, "AFlow selection: weight of the uniform part of the mixture.")
    patience: int = help_field(0, "Early stop when the top-k mean is unchanged for this many simulations; 0 = off.")
    top_k: int = help_field(3, "k of the top-k mean used by early stopping and the summary.")
    max_failures: int = help_field(6, "Failed problems shown to the proposer (mutation cues, LLM prompt).")

    def __post_init__(self) -> None:
        def bad(name: str, value: Any, fix: str) -> SearchConfigError:
            """The error for one invalid field: its value and the fix."""
            return SearchConfigError(f"{name}={value!r} is invalid: {fix}")

        if not isinstance(self.benchmark_options, dict) or not all(
            isinstance(k, str) and k.isidentifier() and isinstance(v, str) for k, v in self.benchmark_options.items()
        ):
            raise bad("benchmark_options", self.benchmark_options, "use KEY=VALUE pairs with identifier keys")
        if self.budget < 0:
            raise bad("budget", self.budget, "use a non-negative number of evaluations (e.g. --budget 1500)")
        if self.token_budget < 0:
            raise bad("token_budget", self.token_budget, "use a non-negative number of tokens (0 = no bound)")
        if not self.cost_budget >= 0:  # also refuses NaN
            raise bad("cost_budget", self.cost_budget, "use a non-negative number of dollars (0 = no bound)")
        if self.max_simulations < 0:
            raise bad("max_simulations", self.max_simulations, "use 0 (no limit) or a positive number")
        if not (self.budget or self.max_simulations or self.token_budget or self.cost_budget):
            raise bad("budget", 0, "set --budget, --token-budget, --cost-budget or --max-simulations, "
                      "otherwise the search never stops")
        for name in ("children", "batch_size", "repeats", "top_k", "aflow_top_k"):
            if getattr(self, name) < 1:
                raise bad(name, getattr(self, name), f"{name} must be >= 1")
        if self.patience < 0:
            raise bad("patience", self.patience, "use 0 (off) or a positive number of simulations")
        if self.max_failures < 0:
            raise bad("max_failures", self.max_failures, "use a non-negative number")
        if self.selection not in SELECTION_METHODS + (RANDOM,):
            raise bad("selection", self.selection, f"choose one of {SELECTION_METHODS + (RANDOM,)}")
        if self.proposer not in PROPOSERS:
            raise bad("proposer", self.proposer, f"choose one of {PROPOSERS}")
        if self.exploration < 0:
            raise bad("exploration", self.exploration, "use a non-negative exploration weight")
        if self.backup not in BACKUPS:
            raise bad("backup", self.backup, f"choose one of {BACKUPS}")
        if not 0.0 <= self.aflow_lambda <= 1.0:
            raise bad("aflow_lambda", self.aflow_lambda, "use a mixing weight in [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (stored in ``runs.config``)."""
        return asdict(self)

    def resumed_from(self, stored: dict[str, Any]) -> SearchConfig:
        """This config with the tree-deciding fields (:data:`RESUME_FIXED`) taken from a stored run."""
        known = {f.name for f in fields(self)}
        values = {**self.to_dict(), **{k: v for k, v in stored.items() if k in RESUME_FIXED and k in known}}
        return SearchConfig(**values)

    @staticmethod
    def help(name: str) -> str:
        """Help text of one field (used by the CLI options)."""
        return next(f.metadata["help"] for f in fields(SearchConfig) if f.name == name)
