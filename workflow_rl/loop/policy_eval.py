"""``eval --policy``: the policy writes one workflow per problem; each runs on its own problem.

Greedy decoding by default; ``best_of = k > 1`` samples ``k`` workflows per problem at the given
temperature and ranks them valid first, then by the policy's own mean token logprob. ``selection``
picks from that ranking: ``"logprob"`` keeps the first; ``"runs"`` runs them in rank order and
keeps the first that finishes without an error and with a non-empty output (execution
filtering, as code generators filter samples that crash); ``"validated"`` runs them all and,
among those that ran, keeps the program whose runs on the *validation* split were most often right
when they ran (Laplace-smoothed precision; rank breaks ties), the same split search selects
task-level workflows on; ``validate_top = N`` scores only each problem's N likeliest programs that
ran (each scored program is one validation pass: LLM calls on LLM benchmarks). None looks at the
evaluated problem's answer: choosing by reward would peek at it (``validated`` is refused on the
validation split itself for that reason). By default (``with_greedy``) the greedy program is one of
the ``k`` candidates (with ``k - 1`` samples): a sampled candidate then replaces it only where the
selection prefers it, e.g. a better validation precision. Without it best-of-4 at T = 1 on SmolLM2
was below greedy (the 4 samples often held neither the greedy program nor anything that ran): 0.461
against greedy 0.594 on two trained checkpoints, and 0.633 with it (docs/benchmarks.md);
``with_greedy=False`` keeps the plain k samples. Every workflow, its generation and every
execution are stored in an ``eval`` run, and the accuracy and cost are stored in its state, so
``workflow-rl sql`` can compare policies later. Also: :func:`evaluate_code` runs one task-level
workflow on a whole split (the baseline the per-query policy is compared with).
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy import Engine, select

from operators.validate import code_hash, validation_error
from storage.engine import open_db, session_scope
from storage.models import PolicyCheckpoint, Problem, Run
from storage.repo import add_generation, add_workflow, get_or_create_run
from workflow_rl.errors import WorkflowRLError
from workflow_rl.loop.evaluation import BenchmarkEvaluator
from workflow_rl.policy.model import Policy, PolicySample
from workflow_rl.policy.prompts import PromptSpec
from workflow_rl.policy.proposer import SAMPLER
from workflow_rl.tasks import Benchmark, get_benchmark


@dataclass(frozen=True)
class PolicyEvalResult:
    """Accuracy and cost of a policy (or of one workflow) on a split."""

    run: str
    split: str
    problems: int
    accuracy: float
    cost: float | None  # USD; None when some operator call had an unknown price
    valid_fraction: float  # share of problems whose written workflow passed the validator
    checkpoint_id: int | None


def resolve_checkpoint(engine: Engine, checkpoint: str) -> tuple[str, int | None]:
    """``(path, checkpoint id)`` of a checkpoint id, a checkpoint path or a base policy name."""
    with session_scope(engine) as s:
        if checkpoint.isdigit():
            row = s.get(PolicyCheckpoint, int(checkpoint))
            if row is None:
                raise WorkflowRLError(f"no policy checkpoint with id {checkpoint}; list them with "
                                      "`workflow-rl sql \"SELECT id, path FROM policy_checkpoints\"`")
            return row.path, row.id
        path = Path(checkpoint)
        if path.exists():
            found = s.scalar(select(PolicyCheckpoint.id).where(PolicyCheckpoint.path == str(path.resolve()))
                             .order_by(PolicyCheckpoint.id.desc()))
            return str(path.resolve()), found
    return checkpoint, None  # a base model (builtin:tiny, a model directory, an HF id)


SELECTIONS = ("logprob", "runs", "validated")
"""How best-of-k chooses among its samples (see the module docstring)."""


def _ranked(samples: list[PolicySample], operator_names) -> list[PolicySample]:
    """Valid programs first, then by mean token logprob (stable: sampling order breaks ties)."""
    def mean_logprob(sample: PolicySample) -> float:
        return sum(sample.behavior_logprobs) / max(len(sample.behavior_logprobs), 1)

    return sorted(samples, key=lambda x: (_is_valid(x.program, operator_names), mean_logprob(x)), reverse=True)


def _ran(result) -> bool:
    """A selection run finished without an error and with an output (right or wrong is not known)."""
    return result.ok and bool((result.output or "").strip())


async def _first_that_runs(
    evaluator: BenchmarkEvaluator, ranked: list[list[PolicySample]], pids: list[int], operator_names,
) -> tuple[list[PolicySample], list[float | None]]:
    """Per problem, the first valid candidate whose run returns a non-empty output without an error
    (the top-ranked one where none does), and the cost of every selection run.

    Runs go in waves: all problems' next candidate at once, so the sandbox stays busy.
    """
    chosen = [r[0] for r in ranked]
    todo = {i: [c for c in r if _is_valid(c.program, operator_names)] for i, r in enumerate(ranked)}
    todo = {i: c for i, c in todo.items() if c}
    costs: list[float | None] = []
    while todo:
        wave = [(i, todo[i].pop(0)) for i in sorted(todo)]
        results = await evaluator.execute([(c.program, pids[i]) for i, c in wave])
        for (i, candidate), result in zip(wave, results, strict=True):
            costs.append(result.usage.cost)
            if _ran(result):
                chosen[i] = candidate
                del todo[i]
            elif not todo[i]:
                del todo[i]
    return chosen, costs


def _is_valid(code: str, operator_names) -> bool:
    return _valid(code, tuple(operator_names))


@functools.lru_cache(maxsize=8192)
def _valid(code: str, operator_names: tuple[str, ...]) -> bool:
    # Cached: ranking, selection and storing each ask about the same samples (best-of-32 on 100
    # problems would otherwise parse and check up to 9,600 programs three times).
    return validation_error(code, operator_names) is None


async def _validated(
    evaluator: BenchmarkEvaluator, engine: Engine, run_name: str, ranked: list[list[PolicySample]], pids: list[int],
    operator_names, top: int = 0,
) -> tuple[list[PolicySample], list[float | None]]:
    """Per problem, among the valid candidates that run on it (the ``top`` likeliest of them when
    ``top > 0``), the one with the best validation precision ``(right + 1) / (ran + 2)``; validation
    runs are stored in the run ``<run>/validation``."""
    chosen = [r[0] for r in ranked]
    candidates = [[c for c in r if _is_valid(c.program, operator_names)] for r in ranked]
    items = [(i, c) for i, cands in enumerate(candidates) for c in cands]
    results = await evaluator.execute([(c.program, pids[i]) for i, c in items])
    costs: list[float | None] = [r.usage.cost for r in results]
    ran: dict[int, list[PolicySample]] = {}
    for (i, c), result in zip(items, results, strict=True):
        # items are in rank order, so the cap keeps each problem's likeliest programs that ran: with
        # LLM operators every validation pass costs calls, and the cap bounds how many there are
        if _ran(result) and not (top and len(ran.get(i, ())) >= top):
            ran.setdefault(i, []).append(c)
    precision: dict[str, float] = {}
    validation = evaluator.problem_ids("validation")
    with session_scope(engine) as s:
        run_id = get_or_create_run(s, f"{run_name}/validation", evaluator.benchmark.name, kind="eval").id
    for code in sorted({c.program for cands in ran.values() for c in cands}):
        with session_scope(engine) as s:
            wid = add_workflow(s, run_id, code, "policy", code_hash=code_hash(code), valid=True).id
        batch = await evaluator.evaluate(run_id, wid, code, validation, 1)
        costs += [r.cost for r in batch.records]
        finished = [r for r in batch.records if r.error in (None, "wrong_answer")]
        precision[code] = (sum(r.reward for r in finished) + 1.0) / (len(finished) + 2.0)
    for i, cands in ran.items():
        chosen[i] = max(enumerate(cands), key=lambda jc: (precision[jc[1].program], -jc[0]))[1]
    # every program that ran has its validation pass stored: the run is complete (runs said "running")
    _finish(engine, run_id, {"programs": len(precision)})
    return chosen, costs


async def _evaluate_policy(
    engine: Engine, bench, policy: Policy, checkpoint_id: int | None, split: str, run_name: str,
    best_of: int, temperature: float, max_new_tokens: int, seed: int, workers: int | None, selection: str = "logprob",
    validate_top: int = 0, with_greedy: bool = False,
) -> PolicyEvalResult:
    async with BenchmarkEvaluator(engine, bench, None, workers) as evaluator:
        pids = evaluator.problem_ids(split)
        if not pids:
            raise WorkflowRLError(f"benchmark {bench.name!r} has no {split!r} problems")
        with session_scope(engine) as s:
            texts = dict(s.execute(select(Problem.id, Problem.text).where(Problem.id.in_(pids))).all())
            run_id = get_or_create_run(s, run_name, bench.name, kind="eval").id
        spec = PromptSpec.of(bench)
        prompts = [policy.prompt(spec, texts[pid]) for pid in pids]
        greedy = best_of == 1
        # One call: the sampler bounds the rows a decode pass holds (workflow_rl.policy.decode).
        drawn = best_of - 1 if with_greedy else best_of
        samples = await asyncio.to_thread(policy.sample, prompts, drawn, 0.0 if greedy else temperature, 1.0,
                                          max_new_tokens, seed)
        if with_greedy:
            argmax = await asyncio.to_thread(policy.sample, prompts, 1, 0.0, 1.0, max_new_tokens, seed)
            # each problem's greedy program first: the ranking's ties keep it
            samples = [x for i, top in enumerate(argmax) for x in (top, *samples[i * drawn:(i + 1) * drawn])]
        ranked = [_ranked(samples[i * best_of:(i + 1) * best_of], bench.operator_names) for i in range(len(pids))]
        chosen, costs = [r[0] for r in ranked], []
        if selection == "runs" and not greedy:
            chosen, costs = await _first_that_runs(evaluator, ranked, pids, bench.operator_names)
        elif selection == "validated" and not greedy:
            chosen, costs = await _validated(evaluator, engine, run_name, ranked, pids, bench.operator_names,
                                             validate_top)
        by_code: dict[int, tuple[str, list[int]]] = {}
        valid = 0
        with session_scope(engine) as s:
            for pid, sample, prompt in zip(pids, chosen, prompts, strict=True):
                ok = _is_valid(sample.program, bench.operator_names)
                valid += ok
                wf = add_workflow(s, run_id, sample.program, "policy", code_hash=code_hash(sample.program),
                                  checkpoint_id=checkpoint_id, valid=ok)
                group = f"{run_name}:p{pid}"
                if not _has_generation(s, wf.id, pid, group):
                    add_generation(
                        s, run_id=run_id, workflow_id=wf.id, problem_id=pid, parent_workflow_id=None, group_key=group,
                        prompt_text=prompt, prompt_token_ids=list(sample.prompt_token_ids),
                        completion_text=sample.text, completion_token_ids=list(sample.completion_token_ids),
                        behavior_logprobs=list(sample.behavior_logprobs), temperature=sample.temperature,
                        top_p=sample.top_p, top_k=0, sampler=SAMPLER, policy_version=checkpoint_id,
                        truncated=sample.truncated,
                    )
                by_code.setdefault(wf.id, (wf.code, []))[1].append(pid)
        rewards: list[float] = []
        for wid, (code, problems) in sorted(by_code.items()):
            batch = await evaluator.evaluate(run_id, wid, code, problems, 1)
            rewards += [r.reward for r in batch.records]
            costs += [r.cost for r in batch.records]
    result = PolicyEvalResult(
        run=run_name, split=split, problems=len(pids), accuracy=sum(rewards) / len(rewards),
        cost=None if any(c is None for c in costs) else float(sum(costs)), valid_fraction=valid / len(pids),
        checkpoint_id=checkpoint_id,
    )
    _finish(engine, run_id, {**asdict(result), "best_of": best_of, "temperature": 0.0 if greedy else temperature,
                             "selection": selection, "validate_top": validate_top, "with_greedy": with_greedy})
    return result


def _has_generation(session, workflow_id: int, problem_id: int, group: str) -> bool:
    from storage.models import Generation

    return session.scalar(select(Generation.id).where(
        Generation.workflow_id == workflow_id, Generation.problem_id == problem_id, Generation.group_key == group,
    )) is not None


def _finish(engine: Engine, run_id: int, summary: dict) -> None:
    with session_scope(engine) as s:
        run = s.get(Run, run_id)
        run.state = summary
        run.status = "done"


def evaluate_policy(
    db: str | Engine,
    checkpoint: str,
    split: str = "test",
    benchmark: str | Benchmark = "calc",
    best_of: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int = 128,
    run: str | None = None,
    seed: int = 0,
    cache_dir: str | None = None,
    workers: int | None = None,
    selection: str = "logprob",
    validate_top: int = 0,
    with_greedy: bool | None = None,
) -> PolicyEvalResult:
    """Let the policy ``checkpoint`` (id, path or base name) write and run one workflow per problem.

    ``benchmark`` is a registered name or a benchmark object (e.g. a smaller ``CalcBenchmark``);
    ``selection`` is how best-of-k chooses (``"logprob"``, ``"runs"`` or ``"validated"``, see the module
    docstring); ``validate_top`` > 0 lets ``validated`` score only each problem's likeliest programs
    that ran (0 = all of them; 1 chooses as ``runs`` does); ``with_greedy`` makes the greedy program one
    of the ``best_of`` candidates (``best_of - 1`` are sampled); None (the default) is ``best_of > 1``.
    """
    if validate_top < 0:
        raise WorkflowRLError(f"validate_top (--validate-top) {validate_top}: use 0 (every program that ran) or more")
    if validate_top and selection != "validated":
        raise WorkflowRLError(f"validate_top (--validate-top) only applies to selection 'validated', not {selection!r}")
    if best_of < 1:
        raise WorkflowRLError(f"best_of={best_of} must be >= 1 (1 = greedy)")
    if with_greedy is None:
        with_greedy = best_of > 1
    if with_greedy and best_of < 2:
        raise WorkflowRLError(f"with_greedy (--with-greedy) adds the greedy program to best-of-k's candidates: give "
                              f"--best-of 2 or more, not {best_of} (1 is greedy alone)")
    if selection not in SELECTIONS:
        raise WorkflowRLError(f"selection (--select) {selection!r}: use {', '.join(SELECTIONS)}")
    if selection == "validated" and split == "validation":
        raise WorkflowRLError("selection (--select) 'validated' ranks programs by their validation runs, so it would "
                              "read the answers of the problems it is scored on: use it on test (or train)")
    engine = open_db(db) if isinstance(db, str) else db
    path, checkpoint_id = resolve_checkpoint(engine, checkpoint)
    bench = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    policy = Policy.load(path, cache_dir=cache_dir)
    suffix = f"k{best_of}" + (f"-{selection}" if selection != "logprob" and best_of > 1 else "")
    suffix += f"-top{validate_top}" if validate_top else ""  # a capped selection may choose otherwise
    suffix += "-greedy" if with_greedy else ""
    name = run or f"eval/policy-{checkpoint_id if checkpoint_id is not None else Path(path).name}/{split}/{suffix}"
    return asyncio.run(_evaluate_policy(engine, bench, policy, checkpoint_id, split, name, best_of,
                                        temperature, max_new_tokens, seed, workers, selection, validate_top,
                                        with_greedy))


def evaluate_code(
    db: str | Engine, code: str, split: str = "test", benchmark: str | Benchmark = "calc", run: str = "eval/workflow",
    workers: int | None = None,
) -> PolicyEvalResult:
    """Run one task-level workflow on every problem of ``split`` (stored in the ``eval`` run ``run``);
    ``benchmark`` is a registered name or a benchmark object (e.g. a smaller ``CalcBenchmark``)."""
    engine = open_db(db) if isinstance(db, str) else db
    bench = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark

    async def go() -> PolicyEvalResult:
        async with BenchmarkEvaluator(engine, bench, None, workers) as evaluator:
            with session_scope(engine) as s:
                run_id = get_or_create_run(s, run, bench.name, kind="eval").id
                ok = _is_valid(code, bench.operator_names)
                wid = add_workflow(s, run_id, code, "seed", code_hash=code_hash(code), valid=ok).id
            batch = await evaluator.evaluate_split(run_id, wid, code, split)
        costs = [r.cost for r in batch.records]
        result = PolicyEvalResult(run, split, len(batch.records), batch.mean_reward,
                                  None if any(c is None for c in costs) else float(sum(costs)), float(ok), None)
        _finish(engine, run_id, asdict(result))
        return result

    return asyncio.run(go())
