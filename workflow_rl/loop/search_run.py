"""The search and evaluation runs behind ``workflow-rl search`` and ``eval`` (and the loop's rounds).

Library functions, not CLI: they take plain arguments, raise :class:`WorkflowRLError` on bad input
before the database is touched, and print nothing. The CLI (:mod:`workflow_rl.cli.search`) adds
options, a progress bar and the summary.
"""

from __future__ import annotations

import dataclasses
import os
import socket

from sqlalchemy import Engine

from search.config import SearchConfig, SearchConfigError
from search.search import BenchmarkInfo, Search, SearchResult
from storage.engine import create_db_engine, open_db, read_session_scope, session_scope, sqlite_file
from storage.models import Run, Workflow
from storage.repo import find_run
from workflow_rl.errors import WorkflowRLError


def open_existing(db: str) -> Engine:
    """Open a database that must already exist (a typo in --db must not create a stray empty file)."""
    path = sqlite_file(db)
    if path is not None and not path.exists():
        raise WorkflowRLError(f"no database at {path}; pass --db (or set WORKFLOW_RL_DB) to an existing one, "
                              "or create it with: workflow-rl db upgrade")
    return open_db(db)  # other backends: open_db reports a bad URL or an unreachable server


def make_proposer(name: str, optimizer: str | None, executor: str | None, same_answer=None):
    """The proposer called ``name`` (``llm`` uses ``--optimizer``, else ``--executor``).

    ``same_answer``: the benchmark's answer check (:func:`workflow_rl.tasks.base.answer_check`),
    which the mutation proposer's routing edit uses on failing examples.
    """
    if name == "mutation":
        from search.proposers.mutations import MutationProposer

        return MutationProposer() if same_answer is None else MutationProposer(same_answer=same_answer)
    if name == "llm":
        spec = optimizer or executor
        if not spec:
            raise WorkflowRLError("--proposer llm needs a chat endpoint: pass --optimizer URL#MODEL")
        from search.proposers.llm import LLMProposer
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
    from workflow_rl.llm.local_server import is_local_spec

    if is_local_spec(spec):  # started by this command (make_executor), which says why if it cannot
        return
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


def executor_client(spec: str | None, price: str | None = None):
    """The client of ``--executor`` (None without one), with the persistent response cache."""
    if not spec:
        return None
    from workflow_rl.llm import make_executor

    return make_executor(spec, price=price)


def stored_run_config(db: str, run: str) -> dict | None:
    """The stored config of run ``run`` if the database and the run exist, else None.

    Read-only and without migrating or creating anything (a database that does not exist yet stays
    absent); a database that cannot be read gives None and ``open_db`` reports it afterwards.
    """
    from sqlalchemy.exc import SQLAlchemyError

    path = sqlite_file(db)
    if path is not None and not path.exists():
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
    from workflow_rl.tasks.base import answer_check
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
    proposer = make_proposer(config.proposer, optimizer, executor, answer_check(benchmark))
    if config.proposer == "llm":
        require_reachable(optimizer or executor, "--optimizer" if optimizer else "--executor")
    if executor:
        require_reachable(executor, "--executor")
    if price is not None and not executor:
        raise WorkflowRLError("--price is the price of the --executor model: give --executor URL#MODEL too")
    llm = executor_client(executor, price)
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


async def evaluate_stored(db: str, workflow_id: int, split: str, repeats: int = 1, executor: str | None = None,
                          workers: int | None = None):
    """Evaluate stored workflow ``workflow_id`` on ``split`` of its run's benchmark (stores the rows)."""
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
    async with BenchmarkEvaluator(engine, benchmark, llm=executor_client(executor), workers=workers) as evaluator:
        return await evaluator.evaluate_split(run_id, workflow_id, code, split, repeats)
