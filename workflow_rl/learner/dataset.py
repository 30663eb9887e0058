"""Dataset layer: stored evaluations -> GRPO samples ``(prompt, completion, reward, group_id, ...)``.

One sample per (workflow, problem) of the **train** split (rewards of repeats are averaged).
Only a completion the policy itself sampled for that problem's prompt is a *policy* sample: it
keeps its exact stored token ids and behavior logprobs (docs/design.md rules 2, 11). Everything else
(seeds, mutations, LLM-optimizer code, policy code evaluated on another problem or edited after
sampling) is a *search* sample: the per-problem prompt is rendered by the policy's one prompt
function (``Policy.prompt``) and the code is tokenized as the policy would write it
(``Policy.completion_ids``: a chat policy's reply is a fenced block), with no behavior logprobs
(rule 8). A policy completion is matched to its workflow by the program it contains
(``Policy.program``: the completion itself for the plain format, the fenced block for chat). Bad policy records are errors, never
zero-filled (seed 001).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import Engine, select

from storage.engine import session_scope
from storage.models import Evaluation, Generation, Problem, Run, Workflow
from workflow_rl.errors import WorkflowRLError
from workflow_rl.learner.config import SEARCH_SAMPLES
from workflow_rl.policy.prompts import PromptSpec

__all__ = ["DatasetFilter", "DatasetStats", "NoTrainSamples", "PromptSpec", "Sample", "load_samples"]


class NoTrainSamples(WorkflowRLError):
    """A run has no sample left to train on after the filters (e.g. every group had equal rewards)."""


@dataclass(frozen=True)
class Sample:
    """One GRPO training sample (token ids are exactly what the learner scores)."""

    prompt: str
    completion: str  # completion text (policy: as sampled, e.g. a chat reply; search: the workflow code)
    reward: float
    group_id: str
    source: str  # "policy" (sampled by the policy for this prompt) or "search"
    workflow_id: int
    problem_id: int
    prompt_token_ids: tuple[int, ...]
    completion_token_ids: tuple[int, ...]  # ends with EOS unless truncated
    behavior_logprobs: tuple[float, ...] | None  # policy samples only
    policy_version: int | None  # policy_checkpoints.id that sampled it; None = base policy
    temperature: float  # logprobs are computed at this temperature
    truncated: bool = False


@dataclass(frozen=True)
class DatasetFilter:
    """Which stored evaluations become samples."""

    run: str  # run name
    rounds: Sequence[int] | None = None  # workflow rounds to use; None = all
    split: str = "train"  # only "train": validation/test never enter training
    min_group_size: int = 2  # groups smaller than this are dropped (no baseline)
    drop_zero_std: bool = False  # DAPO dynamic sampling: drop groups whose rewards are all equal
    group_by_prompt: bool = True  # policy siblings of one prompt form their own group
    search_temperature: float = 1.0  # temperature search samples are trained at (policy's sampling T)
    max_completion_tokens: int | None = None  # longer completions are dropped (counted), never cut
    search_samples: str = "all"  # "positive" / "contrast": which search samples are kept (see _filter_groups)
    search_per_group: int | None = None  # at most this many search samples above / below a group's mean (_cap_search)

    def __post_init__(self) -> None:
        """Reject an unknown ``search_samples`` mode (a typo would silently train on everything)."""
        if self.search_samples not in SEARCH_SAMPLES:
            raise ValueError(f"search_samples={self.search_samples!r}: use 'all', 'positive' or 'contrast'")


@dataclass
class DatasetStats:
    """Counts of what the expansion produced and dropped (logged by the trainer)."""

    samples: int = 0
    groups: int = 0
    policy: int = 0
    search: int = 0
    zero_std_groups: int = 0
    invalid_policy: int = 0  # policy samples whose program failed validation (reward 0)
    zero_std_frac: float = 0.0
    dropped: Counter = field(default_factory=Counter)


def _policy_sample(gen: Generation, wf: Workflow, problem: Problem, reward: float, tok, filt) -> Sample:
    where = f"generation {gen.id} (workflow {wf.id})"
    if gen.behavior_logprobs is None:
        raise WorkflowRLError(f"{where}: policy sample without behavior logprobs; re-sample it with logprobs")
    if gen.prompt_token_ids is None or gen.completion_token_ids is None:
        raise WorkflowRLError(f"{where}: policy sample without token ids; re-sample it")
    if gen.temperature is None or gen.top_p is None:
        raise WorkflowRLError(f"{where}: sampling temperature/top_p not recorded; re-sample it")
    if gen.temperature <= 0 or gen.top_p < 1.0 or (gen.top_k or 0) > 0:
        raise WorkflowRLError(
            f"{where}: sampled with temperature={gen.temperature} top_p={gen.top_p} top_k={gen.top_k}; "
            "RL sampling needs temperature > 0, top_p = 1, top_k = 0"
        )
    comp = tuple(int(t) for t in gen.completion_token_ids)
    if len(gen.behavior_logprobs) != len(comp):
        raise WorkflowRLError(f"{where}: {len(gen.behavior_logprobs)} behavior logprobs for {len(comp)} tokens")
    if tok.decode_completion(comp) != gen.completion_text:
        raise WorkflowRLError(f"{where}: completion token ids do not decode to the stored completion text")
    prompt_ids = tuple(int(t) for t in gen.prompt_token_ids)
    if tuple(tok.encode(gen.prompt_text)) != prompt_ids:
        raise WorkflowRLError(f"{where}: prompt token ids do not match the stored prompt text")
    group = f"p{problem.id}/{gen.group_key}" if filt.group_by_prompt else f"p{problem.id}"
    return Sample(
        prompt=gen.prompt_text, completion=gen.completion_text, reward=reward, group_id=group,
        source="policy", workflow_id=wf.id, problem_id=problem.id, prompt_token_ids=prompt_ids,
        completion_token_ids=comp, behavior_logprobs=tuple(float(x) for x in gen.behavior_logprobs),
        policy_version=gen.policy_version, temperature=float(gen.temperature), truncated=bool(gen.truncated),
    )


def load_samples(
    engine: Engine, filt: DatasetFilter, tokenizer, prompt_spec: PromptSpec | None = None
) -> tuple[list[Sample], DatasetStats]:
    """Expand the run's stored evaluations into samples; see the module docstring.

    ``tokenizer`` is the :class:`~workflow_rl.policy.model.Policy` (``encode``, ``prompt``,
    ``program``, ``completion_ids``, ``decode_completion``). ``prompt_spec`` defaults to the run's
    benchmark.
    """
    if filt.split != "train":
        raise WorkflowRLError(
            f"split {filt.split!r} cannot be trained on: validation/test problems never enter training; use train"
        )
    stats = DatasetStats()
    with session_scope(engine) as s:
        run = s.scalar(select(Run).where(Run.name == filt.run))
        if run is None:
            raise WorkflowRLError(f"run {filt.run!r} not found; list runs with `workflow-rl sql \"SELECT name FROM runs\"`")
        spec = prompt_spec or PromptSpec.for_benchmark(run.benchmark)
        query = (
            select(Evaluation, Workflow, Problem)
            .join(Workflow, Evaluation.workflow_id == Workflow.id)
            .join(Problem, Evaluation.problem_id == Problem.id)
            .where(Evaluation.run_id == run.id, Problem.split == "train")
            .order_by(Problem.id, Workflow.id, Evaluation.repeat)
        )
        if filt.rounds is not None:
            query = query.where(Workflow.round.in_(list(filt.rounds)))
        rewards: dict[tuple[int, int], list[float]] = defaultdict(list)
        rows: dict[tuple[int, int], tuple[Workflow, Problem]] = {}
        for ev, wf, problem in s.execute(query):
            if not wf.valid:
                stats.dropped["invalid_workflow"] += 1  # no code the policy should imitate or avoid
                continue
            rewards[(wf.id, problem.id)].append(float(ev.reward))
            rows[(wf.id, problem.id)] = (wf, problem)
        # Every generation row is one sample: a program the policy drew twice for one prompt
        # counts twice in its group (its probability is part of the group's statistics).
        gens: dict[tuple[int, int], list[Generation]] = defaultdict(list)
        for g in s.scalars(select(Generation).where(Generation.run_id == run.id).order_by(Generation.id)):
            gens[(g.workflow_id, g.problem_id)].append(g)
        samples: list[Sample] = []
        prompts: dict[int, tuple[str, tuple[int, ...]]] = {}
        for key, (wf, problem) in rows.items():
            reward = sum(rewards[key]) / len(rewards[key])
            sampled = _sampled_by_policy(wf, gens.get(key, ()), tokenizer)
            if sampled:
                batch = [_policy_sample(g, wf, problem, reward, tokenizer, filt) for g in sampled]
            else:
                if problem.id not in prompts:
                    text = tokenizer.prompt(spec, problem.text)
                    prompts[problem.id] = (text, tuple(tokenizer.encode(text)))
                prompt, prompt_ids = prompts[problem.id]
                batch = [Sample(
                    prompt=prompt, completion=wf.code, reward=reward, group_id=f"p{problem.id}",
                    source="search", workflow_id=wf.id, problem_id=problem.id, prompt_token_ids=prompt_ids,
                    completion_token_ids=tuple(tokenizer.completion_ids(wf.code)), behavior_logprobs=None,
                    policy_version=None, temperature=filt.search_temperature,
                )]
            samples += _fitting(batch, filt, stats)
        samples += _invalid_policy_samples(s, run.id, filt, tokenizer, stats)
    return _filter_groups(samples, filt, stats)


def _sampled_by_policy(wf: Workflow, gens, tokenizer) -> list[Generation]:
    """The generations whose program is exactly this policy-written workflow as sampled (rule 11)."""
    if wf.source != "policy":
        return []
    return [g for g in gens if g.sampler != "mutation" and tokenizer.program(g.completion_text) == wf.code]


def _fitting(batch: list[Sample], filt: DatasetFilter, stats: DatasetStats) -> list[Sample]:
    """``batch`` without completions longer than ``filt.max_completion_tokens`` (counted, never cut)."""
    if filt.max_completion_tokens is None:
        return batch
    kept = [x for x in batch if len(x.completion_token_ids) <= filt.max_completion_tokens]
    stats.dropped["too_long"] += len(batch) - len(kept)
    return kept


def _invalid_policy_samples(session, run_id: int, filt: DatasetFilter, tokenizer,
                            stats: DatasetStats) -> list[Sample]:
    """Reward-0 policy samples for programs the policy wrote that failed validation (never run).

    They are what the policy sampled, so they belong to their group with reward 0 (docs/design.md rule 11:
    used as sampled). Leaving them out would never tell the policy that invalid code is bad: the
    push away from valid-but-wrong programs would move probability onto invalid ones.
    """
    query = (
        select(Generation, Workflow, Problem)
        .join(Workflow, Generation.workflow_id == Workflow.id)
        .join(Problem, Generation.problem_id == Problem.id)
        .where(Generation.run_id == run_id, Workflow.valid.is_(False), Problem.split == "train")
        .order_by(Generation.id)
    )
    if filt.rounds is not None:
        query = query.where(Workflow.round.in_(list(filt.rounds)))
    batch = [_policy_sample(gen, wf, problem, 0.0, tokenizer, filt)
             for gen, wf, problem in session.execute(query) if _sampled_by_policy(wf, [gen], tokenizer)]
    kept = _fitting(batch, filt, stats)
    stats.invalid_policy += len(kept)
    return kept


def _mean(members: list[Sample]) -> float:
    return sum(x.reward for x in members) / len(members)


def _canonical_order(sample: Sample) -> tuple:
    # The learner shuffles by position, so the order must not depend on database ids: workflow
    # ids depend on what else was stored first (a search that stored the same program earlier
    # gives a policy sample an older id), which made training results move with unrelated changes.
    return sample.problem_id, sample.source, sample.completion_token_ids


def _cap_search(members: list[Sample], limit: int, mean: float, wins: Counter, stats: DatasetStats) -> list[Sample]:
    # A wide search gives a problem dozens of right variants of one pipeline (extra lower() calls,
    # repeated extractions): each costs a training row and they all teach the same thing. A group
    # keeps at most `limit` search samples above its mean, the best and then the shortest (the
    # plainest form of the recipe), and at most `limit` below it (only "contrast" and "all" keep
    # any): the programs that win in the most other groups first, the ones a policy that learned the
    # frequent recipes would write here.
    search = [x for x in members if x.source == "search"]
    above = sorted((x for x in search if x.reward > mean),
                   key=lambda x: (-x.reward, len(x.completion_token_ids), x.completion_token_ids))
    below = sorted((x for x in search if x.reward <= mean),
                   key=lambda x: (-wins[x.workflow_id], len(x.completion_token_ids), x.completion_token_ids))
    kept = {id(x) for x in above[:limit] + below[:limit]}
    stats.dropped["search_capped"] += len(search) - len(kept)
    return [x for x in members if x.source != "search" or id(x) in kept]


def _filter_groups(samples: list[Sample], filt: DatasetFilter, stats: DatasetStats):
    samples = sorted(samples, key=_canonical_order)  # stable: equal keys keep generation order
    groups: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[sample.group_id].append(sample)
    means = {g: _mean(members) for g, members in groups.items()}  # over every sample, before any filter
    winners = {(x.workflow_id, g) for g, members in groups.items()
               for x in members if x.source == "search" and x.reward > means[g]}
    if filt.search_samples != "all":
        # Search samples are trained at ratio 1 (no trust region, docs/design.md rule 8): pushing down
        # programs the policy never wrote moves its mass onto invalid code. "positive" keeps the
        # search samples that beat their group's mean; "contrast" keeps every sample of a search
        # program that beats its group's mean somewhere, so the same program is also pushed down
        # on the problems it fails (which problem gets which program), and nothing else.
        useful = {wid for wid, _ in winners}
        for g, members in groups.items():
            keep = [x for x in members if x.source != "search"
                    or ((x.workflow_id, g) in winners if filt.search_samples == "positive" else x.workflow_id in useful)]
            stats.dropped["search_filtered"] += len(members) - len(keep)
            groups[g] = keep
    if filt.search_per_group is not None:
        wins = Counter(wid for wid, _ in winners)
        for g, members in groups.items():
            groups[g] = _cap_search(members, filt.search_per_group, means[g], wins, stats)
    kept: list[Sample] = []
    sized = {g: members for g, members in groups.items() if len(members) >= filt.min_group_size}
    stats.dropped["small_group"] += sum(len(m) for g, m in groups.items() if g not in sized)
    zero = {g for g, m in sized.items() if len({x.reward for x in m}) == 1}
    stats.zero_std_groups = len(zero)
    stats.zero_std_frac = len(zero) / len(sized) if sized else 0.0
    for g, members in sized.items():
        if filt.drop_zero_std and g in zero:
            stats.dropped["zero_std"] += len(members)
            continue
        kept.extend(members)
    stats.samples = len(kept)
    stats.groups = len({x.group_id for x in kept})
    stats.policy = sum(x.source == "policy" for x in kept)
    stats.search = stats.samples - stats.policy
    return kept, stats
