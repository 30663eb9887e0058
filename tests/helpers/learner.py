"""Learner test data: a stored calc "search" (real workflows run in the real sandbox and scored).

Imported by the learner tests (test_dataset, test_trainer, test_policy); not a conftest so it
cannot clash with other helpers' fixtures.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from operators.base import OpContext
from operators.registry import get_operators
from operators.runtime import Sandbox
from storage.engine import open_db, session_scope
from storage.repo import add_generation, add_workflow, bulk_insert_evaluations, get_or_create_run, problem_ids
from workflow_rl.policy.model import Policy, PolicySample
from workflow_rl.policy.prompts import PromptSpec
from workflow_rl.tasks import get_benchmark, persist_problems

RUN = "calc-search"


def calc_bench(n_train: int = 8, n_val: int = 6):
    """A small calc benchmark (seed 0: stored as ``calc``)."""
    return get_benchmark("calc", train_size=n_train, validation_size=n_val, test_size=0)


def evaluate_pairs(bench, pairs: list[tuple[str, object]]) -> list[float]:
    """Reward of each ``(code, problem)`` pair, run in one sandbox and scored by the benchmark."""

    async def go():
        async with Sandbox(get_operators(bench.operator_names), workers=2) as box:
            results = await box.run_many([(c, p.text) for c, p in pairs])
            return [(await bench.score(p, r.output, OpContext())).reward
                    for r, (_, p) in zip(results, pairs, strict=True)]

    return asyncio.run(go()) if pairs else []


def evaluate(bench, codes: list[str], problems) -> list[list[float]]:
    """Rewards ``[code][problem]`` of running each workflow on each problem in the sandbox."""
    flat = evaluate_pairs(bench, [(c, p) for c in codes for p in problems])
    return [flat[i * len(problems) : (i + 1) * len(problems)] for i in range(len(codes))]


def calc_search_db(tmp_path: Path, n_train: int = 8, n_val: int = 6, others: int | None = None) -> tuple[str, object]:
    """A database holding run ``calc-search``: calc seeds (source seed) and per-recipe workflows
    (source mutation, as a search would find them) evaluated on train and validation problems.

    ``others=None`` evaluates every workflow on every problem; ``others=k`` evaluates, on each
    problem, the seeds, its own recipe's workflow and ``k`` other recipes' workflows (as a search
    that evaluates each child on a batch of problems), giving smaller, less lopsided groups."""
    bench = calc_bench(n_train, n_val)
    url = f"sqlite:///{tmp_path / 'learner.db'}"
    engine = open_db(url)
    codes = {**{f"seed:{k}": v for k, v in bench.seed_workflows().items()},
             **{f"oracle:{k}": v for k, v in bench.oracle_workflows().items()}}
    unique = list(dict.fromkeys(codes.values()))
    problems = bench.problems("train") + bench.problems("validation")
    if others is None:
        pairs = [(c, p) for c in unique for p in problems]
    else:
        oracles = list(dict.fromkeys(bench.oracle_workflows().values()))
        pairs = []
        for i, p in enumerate(problems):
            own = bench.oracle_for(p)
            rest = [c for c in oracles if c != own]
            chosen = {*bench.seed_workflows().values(), own, *(rest[(i + j) % len(rest)] for j in range(others))}
            pairs += [(c, p) for c in unique if c in chosen]
    flat = evaluate_pairs(bench, pairs)
    with session_scope(engine) as s:
        persist_problems(s, bench)
        ids = problem_ids(s, bench.name)
        run = get_or_create_run(s, RUN, bench.name)
        seeds = set(bench.seed_workflows().values())
        wf_ids = {code: add_workflow(s, run.id, code, "seed" if code in seeds else "mutation").id for code in unique}
        rows = [{"run_id": run.id, "workflow_id": wf_ids[c], "problem_id": ids[p.key], "reward": r}
                for (c, p), r in zip(pairs, flat, strict=True)]
        bulk_insert_evaluations(s, rows)
    engine.dispose()
    return url, bench


def add_policy_samples(url: str, bench, policy: Policy, n: int = 4, temperature: float = 0.7,
                       seed: int = 0, score_temperature: float | None = None, policy_version=None,
                       n_problems: int = 3) -> int:
    """Sample ``n`` workflows per train problem from ``policy``, evaluate and store them with their
    generation records (group_key per prompt). ``score_temperature`` replaces the behavior
    logprobs by teacher-forced ones at that temperature (to simulate a sampler/learner mismatch).
    Returns the number of stored policy generations."""
    engine = open_db(url)
    problems = bench.problems("train")[:n_problems]
    spec = PromptSpec.of(bench)
    prompts = [policy.prompt(spec, p.text) for p in problems]
    samples = policy.sample(prompts, n=n, temperature=temperature, max_new_tokens=64, seed=seed)
    behavior = [s.behavior_logprobs for s in samples]
    if score_temperature is not None:
        behavior = policy.score([list(s.prompt_token_ids) for s in samples],
                                [list(s.completion_token_ids) for s in samples], score_temperature)
    rewards = evaluate_pairs(bench, [(x.program, problems[x.prompt_index]) for x in samples])
    stored, seen = 0, set()
    with session_scope(engine) as s:
        run = get_or_create_run(s, RUN, bench.name)
        ids = problem_ids(s, bench.name)
        for k, sample in enumerate(samples):
            problem = problems[sample.prompt_index]
            reward = rewards[k]
            wf = add_workflow(s, run.id, sample.program, "policy", round=1)
            if wf.source != "policy" or wf.id in seen:
                continue  # the same code already exists (search data, or a sibling sampled it first)
            seen.add(wf.id)
            add_generation(
                s, run_id=run.id, workflow_id=wf.id, problem_id=ids[problem.key], group_key=f"g{seed}-{sample.prompt_index}",
                prompt_text=prompts[sample.prompt_index], prompt_token_ids=list(sample.prompt_token_ids),
                completion_text=sample.text, completion_token_ids=list(sample.completion_token_ids),
                behavior_logprobs=list(behavior[k]), temperature=sample.temperature, top_p=sample.top_p,
                top_k=0, sampler="transformers", policy_version=policy_version, truncated=sample.truncated,
            )
            bulk_insert_evaluations(s, [{"run_id": run.id, "workflow_id": wf.id, "problem_id": ids[problem.key],
                                         "reward": reward}])
            stored += 1
    engine.dispose()
    return stored


def scripted_sample(policy: Policy, prompts: list[str], index: int, text: str, temperature: float,
                    logprob: float = -1.0) -> PolicySample:
    """What :meth:`Policy.sample` returns for completion ``text`` of ``prompts[index]``: the real
    tokenizer's prompt and completion ids (EOS included, finish reason ``stop``) and behavior
    logprob ``logprob`` on every token (so ``logprob`` is also the sample's mean token logprob)."""
    ids = (*policy.encode(text), policy.eos_token_id)
    return PolicySample(
        prompt_index=index, prompt_token_ids=tuple(policy.encode(prompts[index])), completion_token_ids=ids,
        behavior_logprobs=(float(logprob),) * len(ids), text=text, program=policy.program(text), finish_reason="stop",
        temperature=float(temperature), top_p=1.0,
    )


def scripted_sampler(policy: Policy, script, calls: list | None = None):
    """A stand-in for ``policy.sample`` (the model call, and nothing else) with the same signature.

    ``script(prompt, n, temperature)`` returns the ``n`` completions of one prompt as ``(text,
    logprob)`` pairs, in sampling order; the result is prompt-major, as the real sampler's.
    ``calls`` (when given) records ``(prompts, n, temperature)`` of every call."""

    def sample(prompts, n=1, temperature=1.0, top_p=1.0, max_new_tokens=256, seed=0):
        if calls is not None:
            calls.append((list(prompts), n, temperature))
        out = []
        for i, prompt in enumerate(prompts):
            drawn = list(script(prompt, n, temperature))
            assert len(drawn) == n, f"the script gave {len(drawn)} completions for a prompt, not n={n}"
            out += [scripted_sample(policy, prompts, i, text, temperature, lp) for text, lp in drawn]
        return out

    return sample


def fresh_copy(src: Path, tmp_path: Path) -> str:
    """A private copy of the SQLite file ``src`` in ``tmp_path`` (tests may modify it), as a URL."""
    shutil.copy(src, tmp_path / "learner.db")
    return f"sqlite:///{tmp_path / 'learner.db'}"
