"""``workflow-rl report``: PNG plots and a markdown summary of a loop (or a search run), from the DB alone.

- ``search.png``: per round, the best and the mean validation reward of the workflows found so far
  against the validation evaluations the search spent (workflow x problem executions, in node
  creation order);
- ``training.png``: per optimizer step over all rounds, with the rounds shaded and labelled:
  training reward, KL to the reference (only when it was computed: beta > 0), clipped tokens and
  the old-vs-behavior logprob gap (docs/design.md rule 10 metrics); not written when nothing was trained;
- ``summary.md``: the run's totals and one row per round, counted exactly as ``workflow-rl runs``
  counts them (:mod:`storage.listing`), with a legend saying what each column counts, plus the
  stored ``eval --policy`` results of its checkpoints.

Matplotlib runs with the Agg backend (no display needed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, or_, select
from sqlalchemy.orm import Session

from search.tree import validation_scores
from storage.engine import open_db, session_scope
from storage.listing import RunRow, run_listing
from storage.models import Evaluation, Problem, Run, SearchNode, TrainStep, Workflow
from storage.repo import find_run
from workflow_rl.errors import WorkflowRLError

METRIC_LABELS: dict[str, str] = {
    "reward/mean": "mean over the round's training samples",
    "reward/batch_mean": "mean over the step's batch",
    "loss/kl": "KL estimate per token",
    "clip/low": "ratio clipped below 1 - eps_low",
    "clip/high": "ratio clipped above 1 + eps_high",
    "mismatch/old_behavior_abs_mean": "mean over tokens",
    "mismatch/old_behavior_abs_max": "max over tokens",
}
"""Readable legend labels of the learner's metric keys."""

TRAIN_PANELS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Training reward", "reward (0 to 1)", ("reward/mean", "reward/batch_mean")),
    ("KL to the reference policy", "KL", ("loss/kl",)),
    ("Tokens whose probability ratio was clipped", "fraction of tokens", ("clip/low", "clip/high")),
    ("Learner vs sampler log-probability gap", "|old - behavior| logprob", (
        "mismatch/old_behavior_abs_mean", "mismatch/old_behavior_abs_max")),
)
"""Panels of ``training.png``: title, y label and the metric keys drawn in it."""

LEGEND: tuple[str, ...] = (
    "run: the round's own run (in the SQL views its rows have loop = the loop's name)",
    "best val: the best workflow's mean validation reward (the leaderboard view; `runs` shows the same)",
    "mean val: mean validation reward of the workflows in the round's search tree",
    "workflows: every workflow stored in the round's run (search tree, invalid children, the learner's "
    "samples), as `runs` counts them",
    "evaluations: every stored execution in the round's run (workflow x problem x repeat, any split: "
    "search on validation, the learner's data on train), as `runs` counts them",
    "search evals: the validation evaluations of the search tree's workflows, i.e. the search budget "
    "as spent (the x axis of search.png)",
    "evals to best: search evals spent when a workflow first reached best val",
    "children: workflows the search added under a parent (seeds excluded); by policy: those the policy "
    "wrote (graft: its verified programs as branches of the parent; rewrite: one policy sample each)",
    "train steps: optimizer steps of the round's training; train reward: mean reward of the samples "
    "it trained on",
    "checkpoint: the policy the round's training saved (the next round's search uses it)",
    "eval run: a stored `workflow-rl eval --policy` of one of these checkpoints; accuracy: mean test (or "
    "chosen split) reward of the workflows the policy wrote, one per problem; valid: share of them that "
    "are valid programs; cost: USD of the LLM calls (- = unknown)",
)
"""What each column of the summary table counts (printed under it)."""


@dataclass(frozen=True)
class RoundRows:
    """What the report knows about one round."""

    round: int
    search_run: str
    run_id: int
    curve: list[tuple[int, float]]  # (cumulative validation evaluations, node score) in node creation order
    children: int  # search-tree nodes below a parent
    policy_children: int  # of those, written with the policy
    steps: list[dict[str, Any]]  # train step metrics in step order
    checkpoint_id: int | None
    listed: RunRow | None  # the round's row of `workflow-rl runs`


@dataclass(frozen=True)
class Report:
    """Files written by :func:`write_report` and the summary table (for the terminal)."""

    search_png: Path
    training_png: Path | None  # None when the run has no training metrics
    summary_md: Path
    summary: str
    tables: tuple[SummaryTable, ...] = ()
    totals: str = ""


def search_curve(session: Session, run_id: int) -> list[tuple[int, float]]:
    """``(validation evaluations so far, node score)`` per search node, in creation order."""
    scores = validation_scores(session, run_id)
    counts = dict(session.execute(
        select(Evaluation.workflow_id, func.count())
        .join(Problem, Problem.id == Evaluation.problem_id)
        .where(Evaluation.run_id == run_id, Problem.split == "validation")
        .group_by(Evaluation.workflow_id)
    ).all())
    total, curve = 0, []
    for (wid,) in session.execute(select(SearchNode.workflow_id).where(SearchNode.run_id == run_id)
                                  .order_by(SearchNode.id)):
        total += counts.get(wid, 0)
        curve.append((total, scores.get(wid, 0.0)))
    return curve


def evaluations_to_reach(curve: list[tuple[int, float]], threshold: float) -> int | None:
    """Evaluations spent when a node first scored ``>= threshold`` (None if never)."""
    return next((evals for evals, score in curve if score >= threshold - 1e-12), None)


def tree_children(session: Session, run_id: int) -> tuple[int, int]:
    """``(children, policy children)`` of a search tree.

    A child is a node with a parent node (seeds have none). It was written with the policy when
    its workflow is a policy sample (``source = 'policy'``, rewrite mode) or records the checkpoint
    whose programs it contains (``checkpoint_id``: graft mode stores its edits as ``mutation``
    with the policy's checkpoint, :mod:`workflow_rl.policy.graft`).
    """
    children = (select(func.count()).select_from(SearchNode).join(Workflow, Workflow.id == SearchNode.workflow_id)
                .where(SearchNode.run_id == run_id, SearchNode.parent_node_id.is_not(None)))
    by_policy = children.where(or_(Workflow.source == "policy", Workflow.checkpoint_id.is_not(None)))
    return session.scalar(children) or 0, session.scalar(by_policy) or 0


def _rounds(session: Session, name: str) -> tuple[Run, RunRow | None, list[RoundRows]]:
    run = find_run(session, name)
    if run is None:
        raise WorkflowRLError(f"run {name!r} not found; list runs with `workflow-rl runs`")
    if run.kind == "loop":
        entries = sorted((int(k), v) for k, v in (run.state or {}).get("rounds", {}).items())
        names = [(r, v["search_run"], v.get("checkpoint_id")) for r, v in entries]
    else:
        names = [(0, run.name, None)]
    by_name = {r.name: r for r in run_listing(session)}  # a loop's row carries its rounds' totals
    listed = by_name.get(run.name)
    rows = []
    for r, search_name, ckpt in names:
        search_run = find_run(session, search_name)
        if search_run is None:
            continue
        steps = [m for (m,) in session.execute(select(TrainStep.metrics).where(TrainStep.run_id == search_run.id)
                                                 .order_by(TrainStep.round, TrainStep.step))]
        children, by_policy = tree_children(session, search_run.id)
        rows.append(RoundRows(r, search_name, search_run.id, search_curve(session, search_run.id), children,
                              by_policy, steps, ckpt, by_name.get(search_name)))
    return run, listed, rows


def _round_label(row: RoundRows) -> str:
    if not row.children:
        return f"round {row.round} best"
    return f"round {row.round} best ({row.policy_children}/{row.children} children by policy)"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def search_figure(rows: list[RoundRows]):
    """The figure of ``search.png`` (a matplotlib Figure; close it after use)."""
    fig, ax = _pyplot().subplots(figsize=(9.5, 5.6))
    for row in rows:
        if not row.curve:
            continue
        xs = [x for x, _ in row.curve]
        best, mean, running = [], [], 0.0
        for i, (_, score) in enumerate(row.curve):
            best.append(max(score, best[-1]) if best else score)
            running += score
            mean.append(running / (i + 1))
        line, = ax.plot(xs, best, label=_round_label(row))
        ax.plot(xs, mean, linestyle="--", color=line.get_color(), label=f"round {row.round} mean")
    ax.set_xlabel("validation evaluations spent by the search (workflow x problem)")
    ax.set_ylabel("validation reward (best / mean of the workflows so far)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    # Below the axes (never over a curve), one column per round: its best line above its mean line.
    if ax.lines:
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=max(1, min(3, len(ax.lines) // 2)))
    ax.set_title("Search: validation reward against evaluations spent, each round from its start")
    fig.tight_layout()
    return fig


def train_panels(steps: list[dict[str, Any]], beta: float | None) -> list[tuple[str, str, tuple[str, ...]]]:
    """The panels of ``training.png`` that have something to show.

    A panel needs at least one of its metrics recorded; the KL panel also needs a reference: with
    ``beta == 0`` the learner computes no KL and records a flat zero (``beta`` None = unknown: the
    panel is kept if any KL value is non-zero).
    """
    out = []
    for title, ylabel, keys in TRAIN_PANELS:
        values = [m[k] for m in steps for k in keys if k in m]
        if not values:
            continue
        if keys == ("loss/kl",) and (beta == 0 or (beta is None and not any(values))):
            continue
        out.append((title, ylabel, keys))
    return out


def training_figure(rows: list[RoundRows], beta: float | None, panels: list | None = None):
    """The figure of ``training.png`` (needs at least one panel, see :func:`train_panels`; pass
    ``panels`` when the caller has already worked them out)."""
    steps = [(row.round, m) for row in rows for m in row.steps]
    panels = panels or train_panels([m for _, m in steps], beta)
    fig, axes = _pyplot().subplots(len(panels), 1, figsize=(9, 2.6 * len(panels) + 0.6), sharex=True, squeeze=False)
    spans: list[tuple[int, float, float]] = []  # (round, first x, last x) of each round's steps
    for i, (r, _) in enumerate(steps):
        if spans and spans[-1][0] == r:
            spans[-1] = (r, spans[-1][1], i + 1.5)
        else:
            spans.append((r, i + 0.5, i + 1.5))
    for ax, (title, ylabel, keys) in zip(axes[:, 0], panels, strict=True):
        for n, (_r, lo, hi) in enumerate(spans):  # shade alternate rounds so their steps read as one block
            ax.axvspan(lo, hi, color="grey", alpha=0.12 if n % 2 == 0 else 0.0, linewidth=0)
            if n:
                ax.axvline(lo, color="grey", linewidth=0.8, linestyle=":")
        for key in keys:
            points = [(i + 1, m[key]) for i, (_, m) in enumerate(steps) if key in m]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=METRIC_LABELS.get(key, key))
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    top = axes[0, 0]
    for r, lo, hi in spans:  # round labels above the first panel, one per block of steps
        top.text((lo + hi) / 2, 1.18, f"round {r}", transform=top.get_xaxis_transform(), ha="center", fontsize=9)
    axes[-1, 0].set_xlabel("optimizer step (all rounds in order)")
    fig.tight_layout()
    return fig


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)


def _eval_rows(session: Session, checkpoint_ids: set[int]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for run in session.scalars(select(Run).where(Run.kind == "eval").order_by(Run.id)):
        state = run.state or {}
        if state.get("checkpoint_id") in checkpoint_ids and "accuracy" in state:
            out.append((run.name, state))
    return out


SEARCH_HEADERS = ("round", "best val", "mean val", "search evals", "evals to best", "children", "by policy")
STORED_HEADERS = ("round", "run", "workflows", "evaluations", "train steps", "train reward", "checkpoint")
EVAL_HEADERS = ("eval run", "split", "accuracy", "cost", "valid")
"""Columns of the summary tables (explained by :data:`LEGEND`); each fits 80 columns."""


@dataclass(frozen=True)
class SummaryTable:
    """One table of the summary: a title, its columns and one row per round."""

    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]


def summary_tables(rows: list[RoundRows]) -> tuple[SummaryTable, SummaryTable]:
    """The search table and the stored/trained table, one row per round (``-`` where nothing counts)."""
    search, stored = [], []
    for row in rows:
        scores = [s for _, s in row.curve]
        best = row.listed.best_validation if row.listed and row.listed.best_validation is not None else None
        reach = evaluations_to_reach(row.curve, best) if scores and best is not None else None
        last = row.steps[-1] if row.steps else {}
        search.append((
            row.round, "-" if best is None else f"{best:.3f}", f"{sum(scores) / len(scores):.3f}" if scores else "-",
            row.curve[-1][0] if row.curve else 0, "-" if reach is None else reach, row.children, row.policy_children,
        ))
        stored.append((
            row.round, row.search_run, row.listed.workflows if row.listed else "-",
            row.listed.evaluations if row.listed else "-", len(row.steps),
            f"{last['reward/mean']:.3f}" if "reward/mean" in last else "-", row.checkpoint_id or "-",
        ))
    return (SummaryTable("Search, per round (validation split)", SEARCH_HEADERS, tuple(search)),
            SummaryTable("Stored and trained, per round", STORED_HEADERS, tuple(stored)))


def totals_line(run: Run, listed: RunRow | None) -> str:
    """The run's totals, counted as ``workflow-rl runs`` counts them."""
    if listed is None:
        return ""
    best = "-" if listed.best_validation is None else f"{listed.best_validation:.3f}"
    scope = "all rounds" if run.kind == "loop" else "this run"
    return (f"Totals over {scope}, as `workflow-rl runs` counts them: {listed.workflows} workflows, "
            f"{listed.evaluations} evaluations (every stored execution, any split; "
            f"{listed.validation_evaluations} of them on validation), best validation reward {best}.")


def eval_table(evals: list[tuple[str, dict[str, Any]]]) -> SummaryTable | None:
    """The stored ``eval --policy`` results of the report's checkpoints (None when there are none)."""
    if not evals:
        return None
    rows = tuple((name, st.get("split"), f"{st['accuracy']:.3f}", "-" if st.get("cost") is None else f"{st['cost']:.4f}",
                  f"{st.get('valid_fraction', 0.0):.2f}") for name, st in evals)
    return SummaryTable("Policy evaluations of these checkpoints", EVAL_HEADERS, rows)


def _summary(run: Run, totals: str, tables: tuple[SummaryTable, ...], notes: list[str]) -> str:
    lines = [f"# Report: {run.name}", "", f"benchmark `{run.benchmark}`, kind `{run.kind}`, status `{run.status}`",
             "", totals]
    for table in tables:
        lines += ["", f"## {table.title}", "", "| " + " | ".join(table.headers) + " |", "|" + "---|" * len(table.headers)]
        lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.rows]
    lines += ["", *(f"- {line}" for line in legend(tables))]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def legend(tables: tuple[SummaryTable, ...]) -> list[str]:
    """The lines of :data:`LEGEND` that explain a column of ``tables``."""
    headers = {h for t in tables for h in t.headers}
    return [line for line in LEGEND if any(line.startswith(f"{h}:") for h in headers)]


def write_report(db: str | Engine, run: str, out_dir: str | Path | None = None) -> Report:
    """Write ``search.png``, ``training.png`` (if anything was trained) and ``summary.md`` into ``out_dir``."""
    engine = open_db(db) if isinstance(db, str) else db
    with session_scope(engine) as session:
        loop_run, listed, rows = _rounds(session, run)
        ckpts = {r.checkpoint_id for r in rows if r.checkpoint_id is not None}
        evaluated = eval_table(_eval_rows(session, ckpts))
        beta = (loop_run.config or {}).get("beta") if loop_run.kind == "loop" else None
        totals = totals_line(loop_run, listed)
        tables = summary_tables(rows) + ((evaluated,) if evaluated else ())
        steps = [m for row in rows for m in row.steps]
        panels = train_panels(steps, beta)
        notes = []
        if panels and beta == 0:
            notes.append("training.png has no KL panel: beta = 0, so no reference policy and no KL were computed.")
        if not panels:
            notes.append("No training metrics are stored for this run, so there is no training.png.")
        summary = _summary(loop_run, totals, tables, notes)
    out = Path(out_dir or Path("runs") / run / "report")
    out.mkdir(parents=True, exist_ok=True)
    search_png, summary_md = out / "search.png", out / "summary.md"
    training_png = out / "training.png" if panels else None
    _save(search_figure(rows), search_png)
    if training_png is not None:
        _save(training_figure(rows, beta, panels), training_png)
    summary_md.write_text(summary)
    return Report(search_png, training_png, summary_md, summary, tables, totals)
