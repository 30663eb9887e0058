"""``workflow-rl report``: PNG plots and a markdown summary of a loop (or a search run), from the DB alone.

- ``search.png``: per round, the best and the mean validation reward of the workflows found so far
  against the evaluations spent (workflow x problem executions, in node creation order);
- ``training.png``: per optimizer step over all rounds: training reward, KL, clip fractions and the
  old-vs-behavior logprob mismatch (docs/design.md rule 10 metrics);
- ``summary.md``: one row per round, plus the stored ``eval --policy`` results of its checkpoints.

Matplotlib runs with the Agg backend (no display needed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from search.tree import validation_scores
from storage.engine import open_db, session_scope
from storage.models import Evaluation, Generation, Problem, Run, SearchNode, TrainStep
from storage.repo import find_run
from workflow_rl.errors import WorkflowRLError

TRAIN_PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("training reward", ("reward/mean", "reward/batch_mean")),
    ("KL to reference", ("loss/kl",)),
    ("clip fraction", ("clip/low", "clip/high")),
    ("|old - behavior| logprob", ("mismatch/old_behavior_abs_mean", "mismatch/old_behavior_abs_max")),
)
"""Panels of ``training.png``: title and the metric keys drawn in it."""


@dataclass(frozen=True)
class RoundRows:
    """What the report knows about one round."""

    round: int
    search_run: str
    run_id: int
    curve: list[tuple[int, float]]  # (cumulative evaluations, node score) in node creation order
    policy_children: int
    steps: list[dict[str, Any]]  # train step metrics in step order
    checkpoint_id: int | None


@dataclass(frozen=True)
class Report:
    """Files written by :func:`write_report`."""

    search_png: Path
    training_png: Path
    summary_md: Path
    summary: str


def search_curve(session: Session, run_id: int) -> list[tuple[int, float]]:
    """``(evaluations so far, node score)`` per search node, in creation order."""
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


def _rounds(session: Session, name: str) -> tuple[Run, list[RoundRows]]:
    run = find_run(session, name)
    if run is None:
        raise WorkflowRLError(f"run {name!r} not found; list runs with `workflow-rl runs`")
    if run.kind == "loop":
        entries = sorted((int(k), v) for k, v in (run.state or {}).get("rounds", {}).items())
        names = [(r, v["search_run"], v.get("checkpoint_id")) for r, v in entries]
    else:
        names = [(0, run.name, None)]
    rows = []
    for r, search_name, ckpt in names:
        search_run = find_run(session, search_name)
        if search_run is None:
            continue
        steps = [m for (m,) in session.execute(select(TrainStep.metrics).where(TrainStep.run_id == search_run.id)
                                                 .order_by(TrainStep.round, TrainStep.step))]
        children = session.scalar(select(func.count()).select_from(Generation).join(
            SearchNode, SearchNode.workflow_id == Generation.workflow_id).where(
            Generation.run_id == search_run.id, SearchNode.run_id == search_run.id)) or 0
        rows.append(RoundRows(r, search_name, search_run.id, search_curve(session, search_run.id), children,
                              steps, ckpt))
    return run, rows


def _plot_search(rows: list[RoundRows], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        if not row.curve:
            continue
        xs = [x for x, _ in row.curve]
        best, mean, running = [], [], 0.0
        for i, (_, score) in enumerate(row.curve):
            best.append(max(score, best[-1]) if best else score)
            running += score
            mean.append(running / (i + 1))
        line, = ax.plot(xs, best, label=f"round {row.round} best")
        ax.plot(xs, mean, linestyle="--", color=line.get_color(), label=f"round {row.round} mean")
    ax.set_xlabel("evaluations (workflow x problem)")
    ax.set_ylabel("validation reward")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("search: validation reward vs evaluations per round")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_training(rows: list[RoundRows], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [(row.round, m) for row in rows for m in row.steps]
    fig, axes = plt.subplots(2, 2, figsize=(9, 6))
    for ax, (title, keys) in zip(axes.flat, TRAIN_PANELS, strict=True):
        for key in keys:
            points = [(i + 1, m[key]) for i, (_, m) in enumerate(steps) if key in m]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=key)
        bounds = [i + 0.5 for i in range(1, len(steps)) if steps[i][0] != steps[i - 1][0]]
        for x in bounds:  # round boundaries
            ax.axvline(x, color="grey", linewidth=0.8, linestyle=":")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("optimizer step (all rounds)")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _eval_rows(session: Session, checkpoint_ids: set[int]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for run in session.scalars(select(Run).where(Run.kind == "eval").order_by(Run.id)):
        state = run.state or {}
        if state.get("checkpoint_id") in checkpoint_ids and "accuracy" in state:
            out.append((run.name, state))
    return out


def _summary(run: Run, rows: list[RoundRows], evals: list[tuple[str, dict[str, Any]]]) -> str:
    lines = [f"# Report: {run.name}", "", f"benchmark `{run.benchmark}`, kind `{run.kind}`, status `{run.status}`", "",
             "| round | search run | best val | mean val | evaluations | evals to best | policy children "
             "| train steps | final train reward | checkpoint |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        scores = [s for _, s in row.curve]
        best = max(scores, default=0.0)
        reach = evaluations_to_reach(row.curve, best) if scores else None
        last = row.steps[-1] if row.steps else {}
        reward = f"{last['reward/mean']:.3f}" if "reward/mean" in last else "-"
        lines.append(
            f"| {row.round} | {row.search_run} | {best:.3f} | {sum(scores) / max(len(scores), 1):.3f} "
            f"| {row.curve[-1][0] if row.curve else 0} | {reach if reach is not None else '-'} "
            f"| {row.policy_children} | {len(row.steps)} | {reward} | {row.checkpoint_id or '-'} |")
    if evals:
        lines += ["", "## Policy evaluations", "", "| eval run | split | accuracy | cost | valid |", "|---|---|---|---|---|"]
        for name, st in evals:
            cost = "-" if st.get("cost") is None else f"{st['cost']:.4f}"
            lines.append(f"| {name} | {st.get('split')} | {st['accuracy']:.3f} | {cost} "
                         f"| {st.get('valid_fraction', 0.0):.2f} |")
    return "\n".join(lines) + "\n"


def write_report(db: str | Engine, run: str, out_dir: str | Path | None = None) -> Report:
    """Write ``search.png``, ``training.png`` and ``summary.md`` for ``run`` into ``out_dir``."""
    engine = open_db(db) if isinstance(db, str) else db
    with session_scope(engine) as session:
        loop_run, rows = _rounds(session, run)
        ckpts = {r.checkpoint_id for r in rows if r.checkpoint_id is not None}
        evals = _eval_rows(session, ckpts)
        summary = _summary(loop_run, rows, evals)
    out = Path(out_dir or Path("runs") / run / "report")
    out.mkdir(parents=True, exist_ok=True)
    search_png, training_png, summary_md = out / "search.png", out / "training.png", out / "summary.md"
    _plot_search(rows, search_png)
    _plot_training(rows, training_png)
    summary_md.write_text(summary)
    return Report(search_png, training_png, summary_md, summary)
