"""The closed loop: search -> train -> policy-steered search -> train -> ...

Round ``r`` (0-based) has three phases, each recorded in the loop run's ``runs.state`` as soon as
it is finished, so re-running the same command continues where it stopped:

1. **search** (run ``<loop>/r<r>``, which records the loop as its ``runs.parent_id`` and ``r`` as
   its ``loop_round``, so listings and SQL views show the rounds as the loop): round 0 uses
   mutations; round ``r >= 1`` draws children from round ``r-1``'s checkpoint plus a fraction of mutations
   (:class:`~workflow_rl.policy.proposer.MixedProposer`). ``policy_children="graft"`` (the
   ``auto`` default on benchmarks whose operators are all tools, such as calc):
   the policy writes per-problem programs for the parent's failures and verified ones become
   routing branches of the parent (:mod:`workflow_rl.policy.graft`, search data);
   ``"rewrite"`` (``auto`` with LLM operators): the policy rewrites the parent from the expansion
   prompt, each child an exact policy sample with its generation. Search resumes by itself.
2. **data**: on ``train_problems`` train problems drawn for this round, the same policy samples
   ``group_size`` workflows per problem from the per-problem prompt (one GRPO group per problem,
   exact token ids and behavior logprobs), and optionally the best and a few random search
   workflows (``top_workflows``, ``extra_workflows``) and the straight-line branches of the
   search workflows in canonical form (``search_branches``: per-problem programs the search found,
   which join the policy's group of their problem; ``explore_budget`` adds the branches of a wide
   mutation-only search, :mod:`workflow_rl.loop.branches`) are run on the same problems (search data:
   trained with ratio 1, docs/design.md rule 8; ``search_samples`` picks which are kept). Validation and test
   problems never enter training. Idempotent: workflows are unique per code hash, generations per
   (workflow, problem, group) and evaluations are reused.
3. **train**: :func:`workflow_rl.learner.trainer.train` on the round run, starting from the previous
   checkpoint; the new checkpoint is the next round's policy version. An interrupted training is
   redone from its start (its partial steps and checkpoints are removed first).
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete, select

from operators.graph import graph_hash
from operators.validate import code_hash, validation_error
from search.config import SearchConfig, SearchConfigError
from search.proposers.mutations import MutationProposer
from search.search import BenchmarkInfo, Search, SearchProgress
from storage.engine import open_db, session_scope
from storage.models import Generation, PolicyCheckpoint, Problem, Run, TrainStep, Workflow
from storage.repo import add_generation, add_workflow, find_run, get_or_create_run
from workflow_rl.errors import WorkflowRLError
from workflow_rl.learner.dataset import NoTrainSamples
from workflow_rl.loop.branches import explore_run_name, ranked_nodes, store_branches
from workflow_rl.loop.config import LoopConfig
from workflow_rl.loop.evaluation import BenchmarkEvaluator
from workflow_rl.loop.policy_eval import evaluate_policy
from workflow_rl.loop.state import LoopState, RoundState
from workflow_rl.policy.graft import GraftProposer
from workflow_rl.policy.model import Policy, is_pretrained
from workflow_rl.policy.prompts import PromptSpec
from workflow_rl.policy.proposer import SAMPLER, MixedProposer, PolicyProposer
from workflow_rl.tasks import get_benchmark
from workflow_rl.tasks.base import answer_check

RESUME_FREE = ("rounds", "workers", "cache_dir")
"""Config fields a resumed loop may change; every other field keeps the stored value."""

Message = Callable[[str], None]


@dataclass(frozen=True)
class RoundInfo:
    """What one finished round left in the database."""

    round: int
    search_run: str
    best_score: float
    evaluations: int
    checkpoint_id: int
    checkpoint_path: str
    best_workflow_id: int | None = None  # None for a round finished before this was recorded
    policy_validation: float | None = None  # greedy validation accuracy of the checkpoint (select_policy)


@dataclass(frozen=True)
class LoopResult:
    """All finished rounds; :attr:`policy` is the loop's policy."""

    run: str
    rounds: tuple[RoundInfo, ...]

    @property
    def final_checkpoint(self) -> RoundInfo:
        """The last round (its checkpoint is the one training continues from)."""
        return self.rounds[-1]

    @property
    def policy(self) -> RoundInfo:
        """The round whose checkpoint is the loop's policy: the best greedy validation score among the
        rounds that were scored (``select_policy="validation"``), the later round on ties; else the last."""
        scored = [info for info in self.rounds if info.policy_validation is not None]
        if not scored:
            return self.final_checkpoint
        return max(scored, key=lambda info: (info.policy_validation, info.round))


def round_run_name(loop_run: str, round_: int) -> str:
    """Name of round ``round_``'s search run."""
    return f"{loop_run}/r{round_}"


def _open_loop(engine: Engine, config: LoopConfig, benchmark: str, say: Message | None = None,
               ) -> tuple[int, LoopConfig, LoopState]:
    with session_scope(engine) as s:
        existing = find_run(s, config.run)
        if existing is not None:
            if existing.kind != "loop":
                raise WorkflowRLError(f"run {config.run!r} is a {existing.kind} run, not a loop; pick another --run")
            stored = {k: v for k, v in (existing.config or {}).items() if k not in RESUME_FREE}
            given = config.to_dict()
            # A resumed loop keeps its stored settings; say which of this call's differ, so a changed
            # option is never dropped silently (a new --run name is how to use them).
            ignored = [f"{k}={given[k]!r} (stored {v!r})" for k, v in stored.items() if k in given and given[k] != v]
            if ignored and say is not None:
                say(f"run {config.run!r} exists: resuming it with its stored settings, not this call's "
                    f"{', '.join(ignored)}; pass another --run to start a loop with them")
            config = LoopConfig(**{**given, **stored})
        run = get_or_create_run(s, config.run, benchmark, kind="loop", config=config.to_dict())
        run.status = "running"
        return run.id, config, LoopState.from_json(run.state)


def _save_state(engine: Engine, run_id: int, state: LoopState, status: str | None = None) -> None:
    with session_scope(engine) as s:
        run = s.get(Run, run_id)
        run.state = state.to_json()
        if status:
            run.status = status


def run_loop(
    config: LoopConfig,
    db: str | Engine,
    message: Message | None = None,
    on_search: Callable[[int, SearchProgress], None] | None = None,
    on_step: Callable[[int, int, int, dict[str, float]], None] | None = None,
) -> LoopResult:
    """Run (or continue) the loop ``config.run``; returns every finished round.

    ``message(text)`` reports phase changes, ``on_search(round, progress)`` each simulation and
    ``on_step(round, step, total, metrics)`` each optimizer step (for progress displays).
    """
    engine = open_db(db) if isinstance(db, str) else db
    bench = get_benchmark(config.benchmark)
    say = message or (lambda _text: None)
    loop_id, config, state = _open_loop(engine, config, bench.name, say)
    try:
        asyncio.run(_rounds(engine, config, bench, loop_id, state, say, on_search, on_step))
    except BaseException:
        _save_state(engine, loop_id, state, "failed")
        raise
    _save_state(engine, loop_id, state, "done")
    return LoopResult(config.run, tuple(_round_info(r, rs) for r, rs in state.done()))


def base_policy(config: LoopConfig, bench, say=None) -> str:
    """Round 0's policy: ``config.policy``, format-warm-started first when ``config.warm_start`` asks.

    The warm start's own seed stays 0 whatever the loop's seed, so loops of every seed (and their
    lr = 0 controls) start from one cached base.
    """
    if not config.warm_start or not is_pretrained(config.policy):
        return config.policy
    from workflow_rl.policy.warm_start import WarmStartConfig, warm_started

    return str(warm_started(config.policy, bench, WarmStartConfig(steps=config.warm_start), config.cache_dir, say))


def _round_info(r: int, rs: RoundState) -> RoundInfo:
    return RoundInfo(r, rs.search_run, rs.best_score, rs.evaluations, rs.checkpoint_id, rs.checkpoint_path,
                     rs.best_workflow_id, rs.policy_validation)


async def _rounds(engine, config: LoopConfig, bench, loop_id, state: LoopState, say, on_search, on_step) -> None:
    out_dir = Path(config.out_dir or Path("runs") / config.run)
    info = bench_info(bench)
    async with BenchmarkEvaluator(engine, bench, None, config.workers) as evaluator:
        for r in range(config.rounds):
            rs = state.rounds.setdefault(r, RoundState(round_run_name(config.run, r)))
            if rs.phase == "done":
                continue
            prev = state.rounds.get(r - 1) if r else None
            version = prev.checkpoint_id if prev else None
            start = prev.checkpoint_path if prev else base_policy(config, bench, say)
            if rs.phase in ("search", "data"):  # a round resumed at train or select needs no sampler
                say(f"round {r}: loading policy {'base ' + start if version is None else f'checkpoint {version}'}")
                policy = Policy.load(start, cache_dir=config.cache_dir)
            if rs.phase == "search":
                mode = children_mode(config, info.operator_names)
                say(f"round {r}: search ({'mutation' if r == 0 else f'policy {mode} + mutation'})")
                callback = None if on_search is None else functools.partial(on_search, r)
                result = await round_search(engine, config, info, evaluator, policy, version, r, mode,
                                            answer_check(bench), callback=callback, parent=(loop_id, r))
                rs.phase, rs.best_score = "data", result.progress.best_score
                rs.best_workflow_id, rs.evaluations = result.progress.best_workflow_id, result.progress.evaluations
                rs.search_run_id = result.run_id
                _save_state(engine, loop_id, state)
            if rs.phase == "data":
                say(f"round {r}: sampling the policy and running search workflows on train problems")
                rs.samples = await collect_train_data(
                    engine, evaluator, bench, policy, version, rs.search_run_id, r, config)
                rs.phase = "train"
                _save_state(engine, loop_id, state)
                del policy  # the learner loads its own copy
            if rs.phase == "train":
                say(f"round {r}: training from {'base' if version is None else f'checkpoint {version}'}")
                ckpt_id, ckpt_path, steps = _train(engine, config, rs, r, start, out_dir, on_step)
                rs.checkpoint_id, rs.checkpoint_path, rs.train_steps = ckpt_id, ckpt_path, steps
                rs.phase = "select" if config.select_policy == "validation" else "done"
                _save_state(engine, loop_id, state)
            if rs.phase == "select":
                say(f"round {r}: checkpoint {rs.checkpoint_id} writes one greedy program per validation problem")
                rs.policy_validation = await asyncio.to_thread(_policy_validation, engine, config, bench, rs)
                rs.phase = "done"
                _save_state(engine, loop_id, state)
            scored = "" if rs.policy_validation is None else f" (greedy validation {rs.policy_validation:.3f})"
            say(f"round {r}: done, best validation {rs.best_score:.3f}, checkpoint {rs.checkpoint_id}{scored}")


async def round_search(engine, config: LoopConfig, info: BenchmarkInfo, evaluator, policy, version: int | None, r: int,
                       mode: str, same_answer, run_name: str | None = None, callback=None,
                       parent: tuple[int, int] | None = None):
    """Run (or resume) round ``r``'s search: mutations in round 0, then ``mode`` (graft or rewrite)
    children of ``policy`` (checkpoint ``version``) mixed with mutations. ``same_answer`` is the
    benchmark's answer check (routing and graft checks on failing examples); ``run_name`` defaults to
    the round's own (``<loop>/r<r>``); ``parent`` is ``(loop run id, round)`` when it is a loop's round."""
    if r == 0:
        proposer: Any = MutationProposer(same_answer=same_answer)
    else:
        if mode == "graft":
            # Past the search's own sample of failures (SearchConfig.max_failures, which mutations keep
            # seeing), the policy writes programs for up to graft_failures of the node's failures.
            wide = config.graft_failures > SearchConfig.max_failures
            writer: Any = GraftProposer(policy, version, config.temperature, config.max_new_tokens,
                                        config.graft_samples, config.graft_failures, same_answer=same_answer,
                                        wide=wide)
        else:
            writer = PolicyProposer(policy, version, config.temperature, config.max_new_tokens)
        proposer = MixedProposer(writer, MutationProposer(same_answer=same_answer), config.mutation_fraction)
    return await _run_search(engine, config, info, evaluator, proposer, "mutation" if r == 0 else "policy",
                             config.search_budget, config.seed, run_name or round_run_name(config.run, r), callback,
                             parent)


async def _run_search(engine, config: LoopConfig, info: BenchmarkInfo, evaluator, proposer, kind: str, budget: int,
                      seed: int, run_name: str, callback=None, parent: tuple[int, int] | None = None):
    """Run (or resume) one search of the loop with its selection, children and batch settings."""
    try:
        search_config = SearchConfig(benchmark=info.name, proposer=kind, selection=config.selection, budget=budget,
                                     children=config.children, batch_size=config.search_batch, seed=seed)
    except SearchConfigError as exc:
        raise WorkflowRLError(str(exc)) from exc
    return await Search(engine, search_config, info, evaluator, proposer).run(run_name, callback, parent=parent)


async def _explore(engine, evaluator, bench, config: LoopConfig, round_: int) -> list[tuple[int, str]]:
    """Run (or resume) round ``round_``'s mutation-only exploration search (``explore_budget``); its
    ranked nodes. Not a round of the loop (no parent), and its seed differs per round."""
    result = await _run_search(engine, config, bench_info(bench), evaluator,
                               MutationProposer(same_answer=answer_check(bench)), "mutation", config.explore_budget,
                               config.seed + 1000 * (round_ + 1), explore_run_name(config.run, round_))
    with session_scope(engine) as s:
        return ranked_nodes(s, result.run_id)


def bench_info(bench) -> BenchmarkInfo:
    """What a search sees of ``bench``: name, description, operators, seed workflows."""
    return BenchmarkInfo(bench.name, bench.description, tuple(bench.operator_names), bench.seed_workflows())


def children_mode(config: LoopConfig, operator_names) -> str:
    """``graft`` or ``rewrite``: ``auto`` grafts when every operator is a tool (branches are checked
    on the host without LLM calls; a program calling an LLM operator could never be verified)."""
    if config.policy_children != "auto":
        return config.policy_children
    from operators.registry import get_operators

    tools_only = all(op.kind == "tool" for op in get_operators(list(operator_names)).values())
    return "graft" if tools_only else "rewrite"


def _problem_texts(engine: Engine, ids: list[int]) -> dict[int, str]:
    with session_scope(engine) as s:
        return dict(s.execute(select(Problem.id, Problem.text).where(Problem.id.in_(ids))).all())


def _store_workflow(session, run_id: int, code: str, operator_names, round_: int, version: int | None) -> Workflow:
    error = validation_error(code, operator_names)
    return add_workflow(
        session, run_id, code, "policy", code_hash=code_hash(code), round=round_, checkpoint_id=version,
        valid=error is None, error=error, graph_hash=graph_hash(code) if error is None else None,
    )


async def collect_train_data(
    engine: Engine, evaluator: BenchmarkEvaluator, bench, policy: Policy, version: int | None,
    run_id: int, round_: int, config: LoopConfig,
) -> dict[str, int]:
    """Policy groups and search workflows on this round's train problems, all stored in ``run_id``.

    Returns counts: ``policy_samples``, ``policy_valid``, ``search_workflows``, ``evaluations``.
    """
    rng = random.Random(f"{config.seed}:{round_}:train")
    train_ids = evaluator.problem_ids("train")
    pids = sorted(rng.sample(train_ids, min(config.train_problems, len(train_ids))))
    texts = _problem_texts(engine, pids)
    spec = PromptSpec.of(bench)
    prompts = [policy.prompt(spec, texts[pid]) for pid in pids]
    samples = await asyncio.to_thread(
        policy.sample, prompts, config.group_size, config.temperature, 1.0, config.max_new_tokens,
        rng.randrange(2**31))
    todo: dict[int, tuple[str, set[int]]] = {}  # workflow id -> (code, problems to run it on)
    valid = 0
    groups = [f"{round_run_name(config.run, round_)}:p{pid}" for pid in pids]
    with session_scope(engine) as s:
        # One row per sample, duplicates included (a program drawn twice counts twice in its GRPO
        # group); a re-run of this phase (same seed, same samples) replaces the rows it wrote.
        s.execute(delete(Generation).where(Generation.run_id == run_id, Generation.group_key.in_(groups)))
        for sample in samples:
            pid = pids[sample.prompt_index]
            wf = _store_workflow(s, run_id, sample.program, bench.operator_names, round_, version)
            group = groups[sample.prompt_index]
            add_generation(
                s, run_id=run_id, workflow_id=wf.id, problem_id=pid, parent_workflow_id=None, group_key=group,
                prompt_text=prompts[sample.prompt_index], prompt_token_ids=list(sample.prompt_token_ids),
                completion_text=sample.text, completion_token_ids=list(sample.completion_token_ids),
                behavior_logprobs=list(sample.behavior_logprobs), temperature=sample.temperature,
                top_p=sample.top_p, top_k=0, sampler=SAMPLER, policy_version=version,
                truncated=sample.truncated,
            )
            if wf.valid:  # invalid programs are stored with their error, never run (as in search)
                valid += 1
                todo.setdefault(wf.id, (wf.code, set()))[1].add(pid)
        # Search workflows: the best by validation score plus random others, shortest first on ties.
        ranked = ranked_nodes(s, run_id)
    chosen = ranked[: config.top_workflows]
    rest = ranked[config.top_workflows:]
    chosen += rng.sample(rest, min(config.extra_workflows, len(rest)))
    for wid, code in chosen:
        todo.setdefault(wid, (code, set()))[1].update(pids)
    if config.search_branches:
        candidates = ranked
        if config.explore_budget:  # a wide mutation search's branches come after the round's own
            candidates = ranked + await _explore(engine, evaluator, bench, config, round_)
        for wid, code in store_branches(engine, run_id, candidates, bench.operator_names, round_, config.search_branches):
            todo.setdefault(wid, (code, set()))[1].update(pids)
    evaluations = 0
    for wid, (code, problems) in sorted(todo.items()):
        batch = await evaluator.evaluate(run_id, wid, code, sorted(problems), 1)
        evaluations += len(batch.records)
    return {"policy_samples": len(samples), "policy_valid": valid, "search_workflows": len(chosen),
            "evaluations": evaluations}


def _policy_validation(engine, config: LoopConfig, bench, rs: RoundState) -> float:
    """Greedy accuracy of the round's checkpoint on the validation split, the split search scores
    workflows on (so choosing a checkpoint by it reads no test answer)."""
    return evaluate_policy(engine, str(rs.checkpoint_id), "validation", bench, max_new_tokens=config.max_new_tokens,
                           run=f"{rs.search_run}/policy-validation", cache_dir=config.cache_dir,
                           workers=config.workers).accuracy


def _train(engine, config: LoopConfig, rs: RoundState, r: int, start: str, out_dir: Path, on_step):
    from workflow_rl.learner.trainer import train

    run_id = rs.search_run_id
    with session_scope(engine) as s:  # an interrupted training restarts from its beginning
        s.execute(delete(TrainStep).where(TrainStep.run_id == run_id, TrainStep.round == r))
        s.execute(delete(PolicyCheckpoint).where(PolicyCheckpoint.run_id == run_id, PolicyCheckpoint.round == r))
    train_config = config.train_config(rs.search_run, start, str(out_dir / f"r{r}"), r)
    callback = None if on_step is None else (lambda step, total, metrics: on_step(r, step, total, metrics))
    try:
        result = train(train_config, engine, on_step=callback)
    except NoTrainSamples:
        if not config.drop_zero_std:
            raise
        # Every group had equal rewards: nothing to learn, but the round still needs its checkpoint
        # (the next round's policy version), so train on the zero-advantage groups (a no-op step).
        result = train(replace(train_config, drop_zero_std=False), engine, on_step=callback)
    return result.checkpoint_id, str(result.checkpoint_path), result.steps
