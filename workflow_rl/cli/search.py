"""``workflow-rl search`` (resumable MCTS over workflow programs) and ``workflow-rl eval`` (score a
stored workflow on a split, e.g. the held-out test split that selection never sees).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.syntax import Syntax
from rich.table import Table

from search.config import SearchConfig, SearchConfigError
from search.search import BenchmarkInfo, Search, SearchProgress, SearchResult
from storage.engine import create_db_engine, normalize_url, open_db, read_session_scope, session_scope
from storage.models import Run, Workflow
from storage.repo import find_run
from workflow_rl.cli.options import DbOption, resolve_db
from workflow_rl.cli.output import Summary, command, db_facts, next_for_run, print_summary
from workflow_rl.errors import WorkflowRLError

_H = SearchConfig.help

BENCHMARK_OPTION_HELP = ("Benchmark option KEY=VALUE (repeatable), e.g. path=gsm8k.jsonl, fractions=0.5,0.2,0.3, "
                         "seed=3 (calc); stored with the run (eval and resumes reuse it).")
PRICE_HELP = ("Price of the --executor model in USD per million input,output tokens, e.g. 0.15,0.60 (overrides "
              "WORKFLOW_RL_LLM_PRICE and the price file; without one an endpoint on a loopback address costs 0 "
              "and any other endpoint's cost is unknown).")
DATA_HELP = "JSONL file of a gsm8k/math/mbpp/hotpotqa/drop/jsonl benchmark (same as --benchmark-option path=FILE)."


def make_proposer(name: str, optimizer: str | None, executor: str | None):
    """The proposer called ``name`` (``llm`` uses ``--optimizer``, else ``--executor``)."""
    if name == "mutation":
        from search.mutations import MutationProposer

        return MutationProposer()
    if name == "llm":
        spec = optimizer or executor
        if not spec:
            raise WorkflowRLError("--proposer llm needs a chat endpoint: pass --optimizer URL#MODEL")
        from search.llm_proposer import LLMProposer
        from workflow_rl.llm import make_executor

        return LLMProposer(make_executor(spec))
    raise WorkflowRLError(
        f"--proposer {name}: the trained-policy proposer runs inside `workflow-rl loop` (it needs the "
        "round's checkpoint); here use --proposer mutation (no model) or --proposer llm --optimizer URL#MODEL"
    )


def require_reachable(spec: str, option: str, timeout_s: float = 5.0) -> None:
    """Refuse an endpoint nothing listens on (one TCP connect), before any database work.

    Without this, a wrong ``--executor`` ran the whole search with every LLM call failing and
    every reward 0. Skipped when an HTTP proxy is configured (httpx would go through it).
    """
    from urllib.parse import urlsplit

    from workflow_rl.llm import parse_executor_spec

    if any(os.environ.get(v) for v in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                                       "all_proxy")):
        return
    url = parse_executor_spec(spec).url
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
    except OSError as exc:
        raise WorkflowRLError(f"cannot reach the {option} endpoint {url} ({exc.strerror or exc}); start the "
                              f"server there or pass the right {option} URL#MODEL") from None


def _executor(spec: str | None, price: str | None = None):
    if not spec:
        return None
    from workflow_rl.llm import make_executor

    return make_executor(spec, price=price)


def stored_run_config(db: str, run: str) -> dict | None:
    """The stored config of run ``run`` if the database and the run exist, else None.

    Read-only and without migrating or creating anything (a database that does not exist yet stays
    absent); a database that cannot be read gives None and ``open_db`` reports it afterwards.
    """
    from sqlalchemy import make_url
    from sqlalchemy.exc import SQLAlchemyError

    url = make_url(normalize_url(db))
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") \
            and not os.path.exists(url.database):
        return None
    engine = create_db_engine(db)
    try:
        with read_session_scope(engine) as session:
            existing = find_run(session, run)
            return None if existing is None else dict(existing.config or {})
    except SQLAlchemyError:
        return None
    finally:
        engine.dispose()


async def run_search(db: str, run: str, config: SearchConfig, *, executor: str | None = None,
                     optimizer: str | None = None, workers: int | None = None,
                     on_progress=None, price: str | None = None) -> SearchResult:
    """Open the database, wire benchmark + sandbox + proposer, and run (or resume) ``run``.

    A resumed run rebuilds its benchmark from its stored ``benchmark_options`` (the options given
    now are only used when the run is new). ``price`` (``IN,OUT``) is the executor model's price.
    """
    from workflow_rl.loop.evaluation import BenchmarkEvaluator
    from workflow_rl.tasks import SPLITS
    from workflow_rl.tasks.options import build_benchmark

    # Every check that can fail on user input runs before the database is opened (or created), so
    # a refused command leaves it unchanged.
    stored = stored_run_config(db, run) or {}
    options = config.benchmark_options
    if stored.get("benchmark") == config.benchmark and "benchmark_options" in stored:
        options = dict(stored["benchmark_options"])
        if not config.benchmark_options:  # nothing asked: reuse silently (no "kept from the run" note)
            config = dataclasses.replace(config, benchmark_options=options)
    benchmark = build_benchmark(config.benchmark, options)
    for split in SPLITS:  # load (and validate) the problems now: a bad data file is refused here
        benchmark.problems(split)
    info = BenchmarkInfo(benchmark.name, benchmark.description, tuple(benchmark.operator_names),
                         benchmark.seed_workflows())
    proposer = make_proposer(config.proposer, optimizer, executor)
    if config.proposer == "llm":
        require_reachable(optimizer or executor, "--optimizer" if optimizer else "--executor")
    if executor:
        require_reachable(executor, "--executor")
    if price is not None and not executor:
        raise WorkflowRLError("--price is the price of the --executor model: give --executor URL#MODEL too")
    llm = _executor(executor, price)
    if config.cost_budget and llm is not None and llm.prices.price(llm.model) is None:
        raise WorkflowRLError(f"--cost-budget needs the price of {llm.model!r} at {llm.url}, which is unknown: "
                              "state it with --price IN,OUT (USD per million tokens) or the price file")
    engine = open_db(db)
    with read_session_scope(engine) as session:
        existing = find_run(session, run)
        if existing is not None and existing.benchmark != benchmark.name:
            raise WorkflowRLError(f"run {run!r} searches {existing.benchmark!r}, not {benchmark.name!r}: "
                                  "pick another --run name or the same --benchmark")
    async with BenchmarkEvaluator(engine, benchmark, llm=llm, workers=workers) as evaluator:
        try:
            return await Search(engine, config, info, evaluator, proposer).run(run, on_progress)
        except SearchConfigError as exc:
            raise WorkflowRLError(str(exc)) from None


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
        benchmark_option: Annotated[list[str] | None, typer.Option(
            "--benchmark-option", help=BENCHMARK_OPTION_HELP)] = None,
        data: Annotated[str | None, typer.Option("--data", help=DATA_HELP)] = None,
        executor: Annotated[str | None, typer.Option(
            help="URL#MODEL of the endpoint LLM operators call (not needed for calc).")] = None,
        optimizer: Annotated[str | None, typer.Option(
            help="URL#MODEL of the chat model the llm proposer asks (defaults to --executor).")] = None,
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
                seed=seed, exploration=exploration, backup=backup, patience=patience,
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
        best_of: Annotated[int, typer.Option(help="--policy: 1 = greedy, k > 1 = sample k workflows per problem.")] = 1,
        select: Annotated[str, typer.Option(
            help="--policy with --best-of k: 'logprob' keeps the most likely valid sample; 'runs' runs them in that "
                 "order and keeps the first that finishes without an error; 'validated' keeps, of those that run, the "
                 "program most often right on the validation split (not with --split validation). None reads the "
                 "answer of the problem being scored.")] = "logprob",
        validate_top: Annotated[int, typer.Option(
            help="--select validated: score only each problem's N likeliest programs that ran on the validation "
                 "split (0 = all; each is one validation pass, which costs LLM calls on LLM benchmarks).")] = 0,
        repeats: Annotated[int, typer.Option(help="Executions per problem.")] = 1,
        executor: Annotated[str | None, typer.Option(help="URL#MODEL for LLM operators.")] = None,
        workers: Annotated[int | None, typer.Option(help="Sandbox worker processes.")] = None,
        db: DbOption = None,
    ) -> None:
        """Score a stored workflow (or, with --policy, a policy's per-problem workflows) on a split; stores the rows."""
        db = resolve_db(ctx, db)
        if policy is not None:
            from workflow_rl.cli.loop import policy_eval_command

            return policy_eval_command(db, policy, split, benchmark, best_of, workers, select,
                                       validate_top)
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


async def evaluate_stored(db: str, workflow_id: int, split: str, repeats: int = 1, executor: str | None = None,
                          workers: int | None = None):
    """Evaluate stored workflow ``workflow_id`` on ``split`` of its run's benchmark (stores the rows)."""
    from workflow_rl.cli.db import open_existing
    from workflow_rl.loop.evaluation import BenchmarkEvaluator
    from workflow_rl.tasks.options import build_benchmark

    engine = open_existing(db)  # a workflow id names a row of an existing database: never create one
    with session_scope(engine) as session:
        workflow = session.get(Workflow, workflow_id)
        if workflow is None:
            raise WorkflowRLError(f"no workflow #{workflow_id} in {db}; list them with workflow-rl sql "
                                  "\"SELECT id, run_id, source FROM workflows\"")
        run = session.get(Run, workflow.run_id)
        code, run_id, bench_name, valid, error = workflow.code, run.id, run.benchmark, workflow.valid, workflow.error
        options = dict((run.config or {}).get("benchmark_options") or {})
    if not valid:
        raise WorkflowRLError(f"workflow #{workflow_id} is invalid ({error}); pick a valid one")
    benchmark = build_benchmark(bench_name, options)  # the run's own options (e.g. its JSONL file)
    async with BenchmarkEvaluator(engine, benchmark, llm=_executor(executor), workers=workers) as evaluator:
        return await evaluator.evaluate_split(run_id, workflow_id, code, split, repeats)
