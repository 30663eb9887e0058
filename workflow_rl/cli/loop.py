"""``workflow-rl loop`` and ``workflow-rl report`` (and the ``eval --policy`` path of ``eval``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from workflow_rl.cli.options import DbOption, resolve_db
from workflow_rl.cli.output import Summary, command, db_facts, log_console, next_for_run, print_summary
from workflow_rl.errors import WorkflowRLError
from workflow_rl.loop.config import LoopConfig
from workflow_rl.loop.presets import presets_help

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from workflow_rl.loop.driver import LoopResult

H = LoopConfig.help


def given(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was given explicitly (command line or environment), not left at its default."""
    source = ctx.get_parameter_source(name)  # by name: typer may bring its own copy of click's enum
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def policy_eval_command(db: str | Engine, policy: str, split: str, benchmark: str, best_of: int,
                        workers: int | None = None, selection: str = "logprob", validate_top: int = 0,
                        with_greedy: bool | None = None) -> None:
    """``eval --policy``: the policy writes one workflow per problem of ``split``; print accuracy and cost."""
    from workflow_rl.loop.policy_eval import evaluate_policy

    if split not in ("train", "validation", "test"):
        raise WorkflowRLError(f"--split {split!r}: use train, validation or test")
    if policy.isdigit():  # a checkpoint id names a row of an existing database: never create one
        from workflow_rl.loop.search_run import open_existing

        db = open_existing(db)
    console = log_console()
    with console.status(f"policy {policy} writing and running one workflow per {split} problem"):
        result = evaluate_policy(db, policy, split=split, benchmark=benchmark, best_of=best_of, workers=workers,
                                 selection=selection, validate_top=validate_top, with_greedy=with_greedy)
    cost = "unknown" if result.cost is None else f"${result.cost:.4f}"
    console.print(f"policy {policy} on {split}: accuracy {result.accuracy:.3f} over {result.problems} problems, "
                  f"valid workflows {result.valid_fraction:.2f}, cost {cost} (stored in run {result.run!r})")


def loop_summary(db: str, result: LoopResult) -> Summary:
    """The end of ``loop``: where it is stored, each round, the best workflow, the policy, what next."""
    rounds = [info.search_run for info in result.rounds]
    summary = Summary(db_facts(db) + [f"run: {result.run} (rounds {', '.join(rounds)})"])
    for info in result.rounds:
        summary.facts.append(f"round {info.round}: best validation {info.best_score:.3f} after {info.evaluations} "
                             f"evaluations; checkpoint {info.checkpoint_id}")
    if not result.rounds:  # --rounds 0: nothing was run
        return summary
    best = max(result.rounds, key=lambda info: info.best_score)  # the earliest round on ties
    wid = best.best_workflow_id
    which = f"#{wid}" if wid is not None else "id not recorded (round finished by an older version)"
    summary.facts.append(f"best workflow: {which}, validation {best.best_score:.3f} (round {best.round})")
    final = result.policy
    chosen = ("" if final.policy_validation is None
              else f" (round {final.round}: best greedy validation {final.policy_validation:.3f})")
    summary.facts.append(f"policy: checkpoint {final.checkpoint_id} at {final.checkpoint_path}{chosen}")
    summary.commands.append(("the trained policy on the held-out test split",
                             command(db, "eval", "--policy", str(final.checkpoint_id), "--split", "test")))
    if wid is not None:
        summary.commands.append(("the best workflow on the test split", command(db, "eval", str(wid), "--split", "test")))
    summary.commands += next_for_run(db, result.run)
    return summary


def register(app: typer.Typer) -> None:
    """Add ``loop`` and ``report`` to the app."""

    @app.command("loop")
    def loop_cmd(
        ctx: typer.Context,
        preset: Annotated[str | None, typer.Option(
            help=f"Named set of defaults ({presets_help()}). Options given explicitly win over it; the name and its "
                 "values are stored with the loop, so re-running the command resumes with them.")] = None,
        rounds: Annotated[int, typer.Option(help=H("rounds"))] = LoopConfig.rounds,
        run: Annotated[str, typer.Option(help=H("run"))] = "loop",
        benchmark: Annotated[str, typer.Option(help=H("benchmark"))] = "calc",
        policy: Annotated[str, typer.Option(help=H("policy"))] = "builtin:tiny",
        seed: Annotated[int, typer.Option(help=H("seed"))] = 0,
        warm_start: Annotated[int, typer.Option(help=H("warm_start"))] = LoopConfig.warm_start,
        search_budget: Annotated[int, typer.Option(help=H("search_budget"))] = LoopConfig.search_budget,
        children: Annotated[int, typer.Option(help=H("children"))] = LoopConfig.children,
        selection: Annotated[str, typer.Option(help=H("selection"))] = LoopConfig.selection,
        mutation_fraction: Annotated[float, typer.Option(help=H("mutation_fraction"))] = LoopConfig.mutation_fraction,
        policy_children: Annotated[str, typer.Option(help=H("policy_children"))] = LoopConfig.policy_children,
        graft_samples: Annotated[int, typer.Option(help=H("graft_samples"))] = LoopConfig.graft_samples,
        graft_failures: Annotated[int, typer.Option(help=H("graft_failures"))] = LoopConfig.graft_failures,
        search_branches: Annotated[int, typer.Option(help=H("search_branches"))] = LoopConfig.search_branches,
        search_samples: Annotated[str, typer.Option(help=H("search_samples"))] = LoopConfig.search_samples,
        explore_budget: Annotated[int, typer.Option(help=H("explore_budget"))] = LoopConfig.explore_budget,
        search_per_group: Annotated[int, typer.Option(help=H("search_per_group"))] = LoopConfig.search_per_group,
        batch_by_group: Annotated[bool, typer.Option(help=H("batch_by_group"))] = LoopConfig.batch_by_group,
        train_problems: Annotated[int, typer.Option(help=H("train_problems"))] = LoopConfig.train_problems,
        group_size: Annotated[int, typer.Option(help=H("group_size"))] = LoopConfig.group_size,
        temperature: Annotated[float, typer.Option(help=H("temperature"))] = LoopConfig.temperature,
        max_new_tokens: Annotated[int, typer.Option(help=H("max_new_tokens"))] = LoopConfig.max_new_tokens,
        lr: Annotated[float, typer.Option(help=H("lr"))] = LoopConfig.lr,
        skip_frozen: Annotated[bool, typer.Option(help=H("skip_frozen"))] = LoopConfig.skip_frozen,
        select_policy: Annotated[str, typer.Option(help=H("select_policy"))] = LoopConfig.select_policy,
        beta: Annotated[float, typer.Option(help=H("beta"))] = LoopConfig.beta,
        epochs: Annotated[int, typer.Option(help=H("epochs"))] = LoopConfig.epochs,
        out_dir: Annotated[str | None, typer.Option(help=H("out_dir"))] = None,
        workers: Annotated[int | None, typer.Option(help=H("workers"))] = None,
        db: DbOption = None,
    ) -> None:
        """Search -> train -> policy-steered search -> train ...; re-run the same command to continue.

        `--preset smollm2-cpu` runs it with SmolLM2-135M-Instruct (LoRA) on budgets sized for 2 CPU cores.
        """
        options = dict(
            run=run, benchmark=benchmark, rounds=rounds, policy=policy, seed=seed, warm_start=warm_start,
            search_budget=search_budget,
            children=children, selection=selection, mutation_fraction=mutation_fraction, policy_children=policy_children,
            graft_samples=graft_samples, graft_failures=graft_failures, search_branches=search_branches, search_samples=search_samples,
            explore_budget=explore_budget, search_per_group=search_per_group, batch_by_group=batch_by_group,
            train_problems=train_problems, group_size=group_size, temperature=temperature,
            max_new_tokens=max_new_tokens, lr=lr, skip_frozen=skip_frozen, select_policy=select_policy, beta=beta,
            epochs=epochs, out_dir=out_dir, workers=workers,
        )
        # only what the user typed overrides the preset (a default would silently undo it)
        config = LoopConfig.from_preset(preset, **{k: v for k, v in options.items() if given(ctx, k)})
        from workflow_rl.loop.driver import run_loop

        db = resolve_db(ctx, db)
        console = log_console()
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                   TimeElapsedColumn())
        # transient: the bar is a live view only; the log lines above it are the record (a file
        # would otherwise get the bar's last frame, a copy of the last line, at the end)
        with Progress(*columns, console=console, transient=True) as progress:
            phase = progress.add_task("starting", total=None, info="")

            def message(text: str) -> None:
                progress.update(phase, description=text, total=None, completed=0, info="")
                progress.console.log(text)

            def on_search(r: int, p) -> None:
                progress.update(phase, total=config.search_budget, completed=min(p.evaluations, config.search_budget),
                                info=f"best {p.best_score:.3f}, {p.nodes} nodes")

            def on_step(r: int, step: int, total: int, metrics: dict[str, float]) -> None:
                progress.update(phase, total=total, completed=step,
                                info=f"reward {metrics.get('reward/mean', 0.0):.3f} "
                                     f"mismatch {metrics.get('mismatch/old_behavior_abs_mean', 0.0):.2e}")

            result = run_loop(config, db, message, on_search, on_step)
        print_summary(loop_summary(db, result), Console())

    @app.command("report")
    def report_cmd(
        ctx: typer.Context,
        run: Annotated[str, typer.Option(help="Loop (or search) run to report on.")],
        out: Annotated[str | None, typer.Option(help="Output directory (default ./runs/<run>/report).")] = None,
        wide: Annotated[bool, typer.Option("--wide", help="Print every column of the summary tables in full.")] = False,
        db: DbOption = None,
    ) -> None:
        """Write search/training PNG plots and a markdown summary of a loop or search run, from the database alone.

        Its counts are those of `workflow-rl runs`; a legend says what each column counts.
        """
        from workflow_rl.cli.tables import print_table
        from workflow_rl.loop.report import legend, write_report

        report = write_report(resolve_db(ctx, db), run, out)
        console = Console(soft_wrap=False)
        # The terminal gets the summary as a table that fits it, each column explained below it;
        # summary.md has the same figures in markdown.
        console.print(Text(report.totals))
        for table in report.tables:
            print_table(console, table.headers, table.rows, title=table.title, wide=wide, fold=("run", "eval run"))
        for line in legend(report.tables):
            console.print(Text(f"- {line}"))
        written = [p for p in (report.search_png, report.training_png, report.summary_md) if p is not None]
        console.print(Text(f"wrote {', '.join(str(p) for p in written)}"))
