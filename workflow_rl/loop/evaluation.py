"""Evaluate workflows on stored benchmark problems: Benchmark + Sandbox + storage.

:class:`BenchmarkEvaluator` implements :class:`search.base.Evaluator` (search never imports
``workflow_rl``): it runs a workflow on problems in the sandbox, scores each output with the
benchmark's own scorer, and bulk-inserts one ``evaluations`` row per (workflow, problem, repeat).
Rows already stored are never run again (resume after a crash, duplicates, ``eval`` twice), and
the insert itself is idempotent, so a crash between executing and storing loses only time.
An outage of the LLM endpoint (:class:`~operators.base.InfrastructureError`, after the client's
own retries) aborts the whole batch with one :class:`WorkflowRLError` line and stores none of it,
so a resume runs it again instead of keeping rewards of 0 that were never the workflow's.
Each execution's ``OpContext.extras`` carries its problem's ``meta`` (entry point, public tests),
minus :data:`PRIVATE_META` (reference solutions never reach the operators), and its repeat index as
``llm_repeat`` (LLM operators derive their sampling seeds from it: repeat r of a workflow draws other
samples than repeat 0, while two workflows sending the same requests get the same replies).
It is used by ``workflow-rl search``, ``workflow-rl eval`` and (later) the loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine

from operators.base import ExecutionResult, InfrastructureError, LLMClient, OpContext
from operators.registry import get_operators
from operators.runtime import Limits, Sandbox
from search.base import EvalBatch, EvalRecord, ProblemRef
from storage.engine import session_scope
from storage.repo import bulk_insert_evaluations, stored_evaluations
from workflow_rl.errors import WorkflowRLError
from workflow_rl.tasks import Benchmark, BenchProblem, persist_problems

OUTPUT_CHARS = 2000
"""Longest raw output kept in ``evaluations.output`` (the scored answer is kept whole)."""
PRIVATE_META = frozenset({"solution", "canonical_solution"})
"""``BenchProblem.meta`` keys withheld from operators: a reference solution would leak the answer."""


def _stored_record(row: Any) -> EvalRecord:
    return EvalRecord(row.problem_id, row.repeat, row.reward, row.answer if row.answer is not None else row.output,
                      row.error_kind, row.cost)


class BenchmarkEvaluator:
    """Runs workflows of one benchmark in a sandbox and stores every execution.

    Use as an async context manager (it owns the sandbox's worker processes). ``llm`` is the
    executor client LLM operators call (None for tool-only benchmarks such as calc).
    """

    def __init__(
        self,
        engine: Engine,
        benchmark: Benchmark,
        llm: LLMClient | None = None,
        workers: int | None = None,
        limits: Limits | None = None,
    ):
        """Persist the benchmark's problems (idempotent) and prepare a sandbox with its operators."""
        self.engine = engine
        self.benchmark = benchmark
        self.llm = llm
        try:  # before any database write: a refused benchmark leaves the database unchanged
            operators = get_operators(benchmark.operator_names)
        except KeyError as exc:
            raise WorkflowRLError(f"benchmark {benchmark.name!r}: {exc.args[0]}; fix its operator_names or "
                                  "register the operator (operators.registry.register)") from None
        with session_scope(engine) as session:
            ids = persist_problems(session, benchmark)
        self._problems: dict[int, BenchProblem] = {}
        for split in ("train", "validation", "test"):
            for problem in benchmark.problems(split):
                self._problems[ids[(split, problem.key)]] = problem
        self.sandbox = Sandbox(operators, self._context, workers,
                               limits or Limits())

    def _context(self, problem_id: int | None = None, repeat: int = 0) -> OpContext:
        """A fresh context; with ``problem_id`` its extras hold that problem's public meta and ``repeat``."""
        if problem_id is None:
            return OpContext(llm=self.llm)
        meta = self._problems[problem_id].meta
        extras = {k: v for k, v in meta.items() if k not in PRIVATE_META}
        if repeat:
            extras["llm_repeat"] = repeat
        return OpContext(llm=self.llm, extras=extras)

    async def __aenter__(self) -> BenchmarkEvaluator:
        await self.sandbox.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.sandbox.close()

    def close(self) -> None:
        """Kill the sandbox workers."""
        self.sandbox.close()

    # ------------------------------------------------------------------ problems

    def problem_ids(self, split: str) -> list[int]:
        """Stored ids of one split, in the benchmark's order."""
        return [pid for pid, p in self._problems.items() if p.split == split]

    def validation_problems(self) -> list[ProblemRef]:
        """The validation split as search sees it (id, text, expected answer)."""
        return [ProblemRef(pid, self._problems[pid].text, str(self._problems[pid].reference))
                for pid in self.problem_ids("validation")]

    # ------------------------------------------------------------------ evaluation

    async def execute(self, items: Sequence[tuple[str, int]]) -> list[ExecutionResult]:
        """Run ``(code, problem id)`` pairs in the sandbox: no scoring, nothing stored.

        The reference answer is never looked at, so callers may use the results to *choose*
        among candidate workflows (e.g. keep one that runs without an error).
        """
        try:
            return list(await self.sandbox.run_many((code, self._problems[pid].text, self._context(pid))
                                                    for code, pid in items))
        except InfrastructureError as exc:
            reason = " ".join(str(exc).split())
            raise WorkflowRLError(f"LLM endpoint unavailable: {reason}; fix the endpoint and rerun") from None

    async def evaluate(
        self, run_id: int, workflow_id: int, code: str, problem_ids: Sequence[int], repeats: int = 1
    ) -> EvalBatch:
        """Evaluate ``code`` on ``problem_ids`` x ``range(repeats)``; stored rows are reused."""
        unknown = [pid for pid in problem_ids if pid not in self._problems]
        if unknown:
            raise WorkflowRLError(f"problems {unknown[:5]} are not problems of {self.benchmark.name!r}")
        with session_scope(self.engine) as session:
            stored = stored_evaluations(session, workflow_id, problem_ids)
            records = {key: _stored_record(row) for key, row in stored.items()}
        todo = [(pid, r) for pid in problem_ids for r in range(repeats) if (pid, r) not in records]
        if todo:
            contexts = [self._context(pid, repeat) for pid, repeat in todo]
            try:
                results = await self.sandbox.run_many(
                    (code, self._problems[pid].text, ctx) for (pid, _), ctx in zip(todo, contexts, strict=True)
                )
            except InfrastructureError as exc:
                reason = " ".join(str(exc).split())  # one line, whatever the client wrote
                raise WorkflowRLError(
                    f"LLM endpoint unavailable: {reason}; evaluation of workflow #{workflow_id} aborted and "
                    "none of its batch stored: fix the endpoint and rerun the same command to resume"
                ) from None
            rows = []
            for (pid, repeat), result in zip(todo, results, strict=True):
                row = await self._score(run_id, workflow_id, pid, repeat, result)
                rows.append(row)
                records[(pid, repeat)] = EvalRecord(pid, repeat, row["reward"], row["answer"] or row["output"],
                                                    row["error_kind"], row["cost"])
            with session_scope(self.engine) as session:
                bulk_insert_evaluations(session, rows)
        ordered = tuple(records[(pid, r)] for pid in problem_ids for r in range(repeats))
        return EvalBatch(records=ordered, executed=len(todo))

    async def _score(self, run_id: int, workflow_id: int, pid: int, repeat: int,
                     result: ExecutionResult) -> dict[str, Any]:
        problem = self._problems[pid]
        reward, answer, kind = 0.0, None, result.error_kind
        if result.ok:
            score = await self.benchmark.score(problem, result.output, OpContext(run_code=self.sandbox.run_code))
            reward, answer = float(score.reward), score.answer
            kind = None if reward > 0 else "wrong_answer"
        output = None if result.output is None else result.output[:OUTPUT_CHARS]
        return {
            "run_id": run_id, "workflow_id": workflow_id, "problem_id": pid, "repeat": repeat,
            "reward": reward, "answer": answer, "output": output, "error_kind": kind,
            "error_message": result.error_message, "cost": result.usage.cost, "latency_s": result.latency_s,
            "prompt_tokens": result.usage.prompt_tokens, "completion_tokens": result.usage.completion_tokens,
        }

    async def evaluate_split(self, run_id: int, workflow_id: int, code: str, split: str,
                             repeats: int = 1) -> EvalBatch:
        """Evaluate a workflow on a whole split (``eval --split test``)."""
        ids = self.problem_ids(split)
        if not ids:
            raise WorkflowRLError(f"benchmark {self.benchmark.name!r} has no {split!r} problems")
        return await self.evaluate(run_id, workflow_id, code, ids, repeats)

