"""The GRPO learner loop; reads top to bottom like cleanrl's ppo.py.

load samples -> group advantages -> (old logprobs) -> clipped loss + IS weights and masks (+ KL) -> step -> log.
The maths lives in :mod:`workflow_rl.learner.grpo` and :mod:`workflow_rl.learner.grpo_is`; the config in
:mod:`workflow_rl.learner.config`; the options and their defaults are explained in docs/learner.md.
Works on CPU (deterministic, float32) and under ``accelerate launch`` (bf16 autocast on GPU,
samples of a batch split across processes).
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from sqlalchemy import Engine, select

from storage.engine import open_db, session_scope
from storage.models import PolicyCheckpoint, Run
from storage.repo import add_checkpoint, add_train_step
from workflow_rl.errors import WorkflowRLError
from workflow_rl.learner.config import TrainConfig
from workflow_rl.learner.dataset import DatasetFilter, DatasetStats, NoTrainSamples, Sample, load_samples
from workflow_rl.learner.grpo import (
    completion_mask,
    group_advantages,
    kl_penalty,
    policy_loss,
    zero_std_fraction,
)
from workflow_rl.learner.grpo_is import high_entropy_mask, off_policy_mask, sampler_is_weights
from workflow_rl.learner.step_metrics import StepMetrics
from workflow_rl.policy.model import LoraSpec, Policy, is_pretrained


@dataclass
class TrainResult:
    """What a training call produced."""

    checkpoint_path: Path
    checkpoint_id: int
    steps: int  # optimizer steps taken in total (including before a resume)
    history: list[dict[str, float]]  # metrics of the steps taken by this call
    dataset: DatasetStats


# ---------------------------------------------------------------- one optimizer step


def adamw(params: list[torch.nn.Parameter], lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """The learner's AdamW: the fused kernel where torch has one (CPU, CUDA), as TRL's default
    ``adamw_torch_fused``; same update, ~3x cheaper than the per-tensor loop on CPU."""
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def _pad(rows: list[tuple[float, ...] | None], width: int) -> torch.Tensor:
    return torch.tensor([list(r or ()) + [0.0] * (width - len(r or ())) for r in rows], dtype=torch.float32)


def _forward(policy: Policy, accelerator: Accelerator, samples: list[Sample], with_entropy: bool = False):
    with accelerator.autocast():
        return policy.forward_logprobs(
            [list(s.prompt_token_ids) for s in samples], [list(s.completion_token_ids) for s in samples],
            [s.temperature for s in samples], with_entropy=with_entropy,
        )


def _epoch_order(group_ids: list[str], by_group: bool, seed: int) -> list[int]:
    """Sample indices in one epoch's order: a random permutation, or whole groups in a random order."""
    generator = torch.Generator().manual_seed(seed)
    if not by_group:
        return torch.randperm(len(group_ids), generator=generator).tolist()
    members: dict[str, list[int]] = {}
    for i, g in enumerate(group_ids):
        members.setdefault(g, []).append(i)
    groups = list(members.values())  # first-appearance order: the dataset's canonical order
    return [i for k in torch.randperm(len(groups), generator=generator).tolist() for i in groups[k]]


def _micro_batches(batch: list[int], config: TrainConfig, accelerator: Accelerator) -> list[list[int]]:
    chunks = [batch[i : i + config.micro_batch_size] for i in range(0, len(batch), config.micro_batch_size)]
    return chunks[accelerator.process_index :: accelerator.num_processes]


@torch.no_grad()
def old_logprobs(policy, accelerator, samples, batch, config, start_old=None) -> list[torch.Tensor | None]:
    """Logprobs of the batch under the model *before* the update (no grad), per micro-batch.

    A micro-batch of policy samples only gets None: their ``old`` is ``start_old`` (the sampling
    policy's), so a forward pass over them would be thrown away.
    """
    policy.model.eval()
    out: list[torch.Tensor | None] = []
    for mb in _micro_batches(batch, config, accelerator):
        if start_old is not None and all(start_old[i] is not None for i in mb):
            out.append(None)
            continue
        out.append(_forward(policy, accelerator, [samples[i] for i in mb])[0].float())
    return out


@torch.no_grad()
def start_logprobs(policy, accelerator, samples, config) -> list[tuple[float, ...] | None]:
    """Token logprobs of every policy sample under the policy training starts from (no grad).

    That policy produced the data (the version check guarantees it), so these are the ``old``
    logprobs of docs/design.md rule 5 for the whole round: the clipped ratio then bounds how far every
    later optimizer step on the same rollouts may move a sampled token (TRL keeps its generation-time
    old logprobs the same way). Recomputing ``old`` at the current weights before each batch would
    make every ratio 1, turn the clip off after the first step and let many steps on one set of
    rollouts drift without a trust region. Search samples get None: their ratio is always 1 (rule 8).
    """
    policy.model.eval()
    out: list[tuple[float, ...] | None] = [None] * len(samples)
    rows = [i for i, s in enumerate(samples) if s.behavior_logprobs is not None]
    for k in range(0, len(rows), config.micro_batch_size):
        mb = rows[k : k + config.micro_batch_size]
        logp, lengths = _forward(policy, accelerator, [samples[i] for i in mb])
        for r, i in enumerate(mb):
            out[i] = tuple(logp[r, : int(lengths[r])].float().tolist())
    return out


def grpo_step(
    policy: Policy,
    accelerator: Accelerator,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    samples: list[Sample],
    advantages: torch.Tensor,
    batch: list[int],
    config: TrainConfig,
    old: list[torch.Tensor | None] | None,
    ref_model: torch.nn.Module | None = None,
    start_old: list[tuple[float, ...] | None] | None = None,
) -> dict[str, float]:
    """One optimizer step on ``batch`` (indices into ``samples``) with gradient accumulation.

    ``old`` = logprobs before the update (from :func:`old_logprobs`); None means this is the
    only iteration on the batch, so old = the current logprobs detached (exactly equal, the
    extra pass is skipped). ``start_old`` (from :func:`start_logprobs`) replaces it for policy
    samples. A non-finite loss or gradient skips the step (weights untouched).
    """
    policy.model.train()
    params = [p for p in policy.model.parameters() if p.requires_grad]
    micro = _micro_batches(batch, config, accelerator)
    lengths = [len(samples[i].completion_token_ids) for i in batch]
    truncated = [samples[i].truncated for i in batch]
    # Token-level aggregation normalises by the active tokens of the whole step, so gradient
    # accumulation gives the same gradient as one big batch (TRL's num_items_in_batch). Tokens that
    # the IS, off-policy or entropy masks drop still count here, as in TRL.
    token_norm = float(completion_mask(lengths, max(lengths), truncated, config.mask_truncated_completions).sum())
    stats = StepMetrics()
    finite = True
    for k, mb in enumerate(micro):
        rows = [samples[i] for i in mb]
        logp, entropy, lens = _forward(policy, accelerator, rows, with_entropy=True)
        logp = logp.float()
        width = logp.shape[1]
        mask = completion_mask(lens, width, [s.truncated for s in rows],
                               config.mask_truncated_completions).to(logp.device)
        old_mb = logp.detach() if old is None or old[k] is None else old[k].to(logp.device)
        has_behavior = torch.tensor([s.behavior_logprobs is not None for s in rows], device=logp.device)
        if start_old is not None:
            fixed = _pad([start_old[i] for i in mb], width).to(logp.device)
            old_mb = torch.where(has_behavior[:, None], fixed, old_mb)
        behavior = _pad([s.behavior_logprobs for s in rows], width).to(logp.device)
        adv = advantages[mb].to(logp.device)
        is_w = None
        if config.vllm_importance_sampling_correction:
            is_w = sampler_is_weights(old_mb, behavior, mask, config.vllm_importance_sampling_mode,
                                      config.vllm_importance_sampling_clip_max,
                                      config.vllm_importance_sampling_clip_min, has_behavior)
        seq_keep = None
        if config.off_policy_mask_threshold is not None:
            # the sampler's logprobs where there are some (TRL: vLLM's), else old (search samples: ratio 1)
            sampling = torch.where(has_behavior[:, None], behavior, old_mb)
            seq_keep = off_policy_mask(adv, logp, sampling, mask, config.off_policy_mask_threshold)
        tok_keep = high_entropy_mask(entropy.float(), mask, config.top_entropy_quantile) \
            if config.top_entropy_quantile < 1.0 else None
        per_token_kl = None
        if config.beta > 0:
            with torch.no_grad():
                if policy.lora is not None:  # the reference is the base model: same weights, adapter off
                    with policy.model.disable_adapter():
                        ref_logp = _forward(policy, accelerator, rows)[0].float()
                else:
                    ref_logp = _forward(Policy(ref_model, policy.tokenizer, "", ""), accelerator, rows)[0].float()
            per_token_kl = kl_penalty(logp, ref_logp, config.kl_kind)
        out = policy_loss(
            logp, old_mb, adv, mask, config.eps_low, config.eps_high, config.delta, config.agg,
            config.constant_norm, is_w, per_token_kl, config.beta,
            token_norm=token_norm if config.agg == "token" else None, level=config.importance_sampling_level,
            kl_bias_correction=config.use_bias_correction_kl, sequence_keep=seq_keep, token_keep=tok_keep,
        )
        # sequence/constant means are per micro-batch: weight them by its share of the batch.
        scale = 1.0 if config.agg == "token" else len(mb) / len(batch)
        loss = out.loss * scale * accelerator.num_processes  # DDP averages gradients over processes
        if not torch.isfinite(loss):
            finite = False
            break
        accelerator.backward(loss)
        stats.add(out, scale, logp, old_mb, behavior, mask, entropy, has_behavior, is_w, seq_keep, tok_keep)
    grad_norm = float("nan")
    if finite:
        if config.max_grad_norm > 0:
            grad_norm = float(accelerator.clip_grad_norm_(params, config.max_grad_norm))
        else:
            grads = [p.grad.detach().norm() for p in params if p.grad is not None]
            grad_norm = float(torch.stack(grads).norm()) if grads else 0.0
    skipped = not (finite and math.isfinite(grad_norm))
    if not skipped:
        optimizer.step()
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return stats.summary() | {
        "truncated/masked_seq_frac": sum(truncated) / len(batch) if config.mask_truncated_completions else 0.0,
        "grad/norm": grad_norm, "step/skipped": float(skipped), "lr": float(scheduler.get_last_lr()[0]),
    }


# ---------------------------------------------------------------- checkpoints


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _latest_checkpoint(engine: Engine, run_id: int, round_: int) -> PolicyCheckpoint | None:
    with session_scope(engine) as s:
        rows = s.scalars(select(PolicyCheckpoint).where(PolicyCheckpoint.run_id == run_id,
                                                        PolicyCheckpoint.round == round_)
                         .order_by(PolicyCheckpoint.step.desc(), PolicyCheckpoint.id.desc())).all()
        return next((c for c in rows if (Path(c.path) / "trainer_state.pt").exists()), None)


def _version_of(engine: Engine, policy: str) -> int | None:
    """policy_checkpoints.id of a checkpoint path; None for a base model (builtin:tiny, HF id)."""
    path = Path(policy)
    if not path.exists():
        return None
    with session_scope(engine) as s:
        return s.scalar(select(PolicyCheckpoint.id).where(PolicyCheckpoint.path == str(path.resolve()))
                        .order_by(PolicyCheckpoint.id.desc()))


def _save(policy, accelerator, engine, run_id, config, step, state, metrics) -> tuple[Path, int]:
    out_dir = Path(config.out_dir or Path("runs") / config.run / "checkpoints")
    path = (out_dir / f"round-{config.round}-step-{step}").resolve()
    if accelerator.is_main_process:
        unwrapped = Policy(accelerator.unwrap_model(policy.model), policy.tokenizer, policy.base_model,
                           policy.base_path, policy.lora)
        unwrapped.save(path, trainer_state=state)
    accelerator.wait_for_everyone()
    with session_scope(engine) as s:
        ckpt = add_checkpoint(s, str(path), policy.base_model, run_id=run_id, round=config.round, step=step,
                              metrics=metrics)
        return path, ckpt.id


# ---------------------------------------------------------------- the loop


def train(
    config: TrainConfig,
    db: str | Engine,
    on_step: Callable[[int, int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Run one GRPO training round on the stored run ``config.run``; returns the checkpoint.

    ``on_step(step, total_steps, metrics)`` is called after every optimizer step (progress bars).
    """
    engine = open_db(db) if isinstance(db, str) else db
    accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                              mixed_precision="bf16" if torch.cuda.is_available() else "no")
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    with session_scope(engine) as s:
        run_id = s.scalar(select(Run.id).where(Run.name == config.run))
    if run_id is None:
        raise WorkflowRLError(f"run {config.run!r} not found in the database; run `workflow-rl search` first")

    # 1. policy: a fresh start or the newest checkpoint of this round (--resume)
    state = None
    start = config.policy
    if config.resume:
        latest = _latest_checkpoint(engine, run_id, config.round)
        if latest is None:
            raise WorkflowRLError(f"--resume: no checkpoint of run {config.run!r} round {config.round}; drop --resume")
        start, state = latest.path, Policy.trainer_state(latest.path)
    policy = Policy.load(start, cache_dir=config.cache_dir, device=accelerator.device, dtype=torch.float32)
    # LoRA by default for a pretrained base (its base_model survives checkpoints), all weights for
    # builtin:tiny; an explicit --lora/--full wins. A checkpoint with an adapter keeps training it.
    if config.lora if config.lora is not None else is_pretrained(policy.base_model):
        policy.with_lora(LoraSpec(r=config.lora_r, alpha=config.lora_alpha))
    start_version = state["start_version"] if state else _version_of(engine, config.policy)

    # 2. samples (train split only) and the policy-version check (docs/design.md rule 4)
    samples, stats = load_samples(engine, DatasetFilter(
        run=config.run, rounds=config.rounds, min_group_size=config.min_group_size,
        drop_zero_std=config.drop_zero_std, search_temperature=config.search_temperature,
        max_completion_tokens=config.max_completion_tokens, group_by_prompt=config.group_by_prompt,
        search_samples=config.search_samples, search_per_group=config.search_per_group), policy)
    if not samples:
        raise NoTrainSamples(f"run {config.run!r} has no usable train samples ({dict(stats.dropped)} dropped); "
                              "search on the train split first or lower --min-group-size")
    stale = [s for s in samples if s.source == "policy" and s.policy_version != start_version]
    if stale and not config.allow_stale:
        versions = sorted({str(s.policy_version) for s in stale})
        raise WorkflowRLError(f"{len(stale)} policy samples come from policy version(s) {versions}, not from "
                              f"{start_version} being trained; re-sample with the current policy or pass --allow-stale")

    # 3. group-relative advantages over whole groups
    rewards = torch.tensor([s.reward for s in samples])
    group_ids = [s.group_id for s in samples]
    advantages = group_advantages(rewards, group_ids, config.adv_scale, config.adv_eps)
    data_metrics = {"reward/mean": float(rewards.mean()), "reward/std": float(rewards.std()) if len(samples) > 1 else 0.0,
                    "groups/zero_std_frac": zero_std_fraction(rewards, group_ids),
                    "samples/policy": float(stats.policy), "samples/search": float(stats.search),
                    "stale/samples": float(len(stale))}

    # 4. optimizer, warmup schedule, reference
    params = [p for p in policy.model.parameters() if p.requires_grad]
    optimizer = adamw(params, config.lr, config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: min(1.0, (k + 1) / (config.warmup_steps + 1)) if config.warmup_steps else 1.0)
    ref_model = None
    if config.beta > 0 and policy.lora is None:  # full fine-tuning needs a frozen copy as the reference
        ref_model = copy.deepcopy(policy.model).eval().requires_grad_(False)
    # lr = 0 with skip_frozen: the weights cannot move, so no pass runs (total = 0 below) and the start
    # policy is saved as the checkpoint, with the same adapter init a trained lr = 0 run would save.
    frozen = config.skip_frozen and config.lr == 0
    start_old = None if frozen else (state or {}).get("start_old") or start_logprobs(policy, accelerator, samples, config)
    policy.model, optimizer, scheduler = accelerator.prepare(policy.model, optimizer, scheduler)
    step, epoch0, batch0, iter0, old = 0, 0, 0, 0, None
    if state:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        step, epoch0, batch0, iter0, old = state["step"], state["epoch"], state["batch"], state["iteration"], state["old"]

    n_batches = math.ceil(len(samples) / config.batch_size)
    total = config.epochs * n_batches * config.num_iterations
    total = min(total, config.max_steps) if config.max_steps else total
    total = 0 if frozen else total
    history: list[dict[str, float]] = []
    metrics: dict[str, float] = {}

    def snapshot(epoch: int, b: int, it: int, old_state) -> dict[str, Any]:
        return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state(),
                "step": step, "epoch": epoch, "batch": b, "iteration": it, "old": old_state,
                "start_version": start_version, "start_old": start_old}

    position = (config.epochs, 0, 0)
    # 5. loop: epochs -> batches -> PPO iterations
    for epoch in range(epoch0, config.epochs):
        order = _epoch_order(group_ids, config.batch_by_group, config.seed + epoch)
        batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
        for b in range(batch0 if epoch == epoch0 else 0, len(batches)):
            first_it = iter0 if (epoch, b) == (epoch0, batch0) else 0
            if first_it == 0:
                old = (None if config.num_iterations == 1
                       else old_logprobs(policy, accelerator, samples, batches[b], config, start_old))
            for it in range(first_it, config.num_iterations):
                if step >= total:
                    position = (epoch, b, it)
                    break
                metrics = grpo_step(policy, accelerator, optimizer, scheduler, samples, advantages, batches[b],
                                    config, old, ref_model, start_old)
                batch_rewards = rewards[batches[b]]
                metrics |= data_metrics | {"reward/batch_mean": float(batch_rewards.mean())}
                step += 1
                history.append(metrics)
                with session_scope(engine) as s:  # a step repeated after --resume replaces its row
                    add_train_step(s, run_id, step, metrics, round=config.round)
                if on_step is not None:
                    on_step(step, total, metrics)
                nxt = (epoch, b, it + 1) if it + 1 < config.num_iterations else (epoch, b + 1, 0)
                if config.save_every and step % config.save_every == 0 and step < total:
                    _save(policy, accelerator, engine, run_id, config, step, snapshot(*nxt, old), metrics)
                position = nxt
            if step >= total:
                break
        if step >= total:
            break

    # 6. final checkpoint, registered as the next policy version
    epoch, b, it = position
    if epoch < config.epochs and b >= n_batches:
        epoch, b = epoch + 1, 0
    final = metrics | {"dataset/samples": float(stats.samples), "dataset/groups": float(stats.groups)}
    path, ckpt_id = _save(policy, accelerator, engine, run_id, config, step,
                          snapshot(epoch, b, it, old if it else None), final)
    return TrainResult(path, ckpt_id, step, history, stats)
