"""Loss/gradient parity of our GRPO learner with TRL's ``GRPOTrainer`` on fixed completions.

Used by ``benchmarks/bench_vs_trl.py`` and ``tests/workflow_rl/test_trl_parity.py``. TRL's side
is its own ``GRPOTrainer.compute_loss`` (fused LM head, clipping, k3 KL, aggregation,
token-truncated IS ratio); ours is either the maths (``Policy.forward_logprobs`` +
``workflow_rl.grpo``: :func:`parity`) or the trainer's real optimizer step
(``workflow_rl.trainer.grpo_step``, reference model and all: :func:`trainer_parity`).
"""

from __future__ import annotations

import copy
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # loaded by path from a script or a test
    sys.path.insert(0, str(ROOT))

from workflow_rl import grpo  # noqa: E402
from workflow_rl.policy import Policy  # noqa: E402

TRL_LOSS = {"token": "dapo", "sequence": "grpo", "constant": "dr_grpo"}
"""Our loss aggregation name -> TRL's ``loss_type`` with the same normalisation."""



@dataclass(frozen=True)
class ParityCase:
    """Sizes and hyper-parameters of one parity check; both learners get exactly these."""

    n_prompts: int = 2
    group_size: int = 4
    prompt_len: int = 6  # longest prompt; others are shorter (left-padded for TRL)
    completion_len: int = 8  # longest completion; others are shorter (right-padded)
    temperature: float = 0.7
    beta: float = 0.04
    eps_low: float = 0.2
    eps_high: float = 0.28
    tis_cap: float = 2.0
    seed: int = 0


def fixed_batch(policy: Policy, case: ParityCase) -> dict[str, torch.Tensor]:
    """Deterministic prompts, completions, rewards and old/ref/behavior logprobs for ``case``.

    Prompt and completion lengths vary (row 0 takes the maxima, so one completion is truncated).
    TRL scores left-padded prompts with positions counted from the padding, ours from each row's
    first real token; RoPE makes that equal in exact arithmetic, and in float32 it accounts for
    the ~1e-6 of the gradient differences (equal prompt lengths give ~2e-7).
    Old, reference and behavior logprobs are the current ones plus Gaussian noise, large enough
    that ratios leave ``[1 - eps_low, 1 + eps_high]`` on both sides and some IS weights hit the cap.
    """
    gen = torch.Generator().manual_seed(case.seed)
    n = case.n_prompts * case.group_size
    vocab, pad = policy.model.config.vocab_size, policy.eos_token_id
    prompt_lens = torch.randint(2, case.prompt_len + 1, (n,), generator=gen)
    prompt_lens[0] = case.prompt_len
    prompt_ids = torch.full((n, case.prompt_len), pad, dtype=torch.long)
    prompt_mask = torch.zeros((n, case.prompt_len), dtype=torch.long)
    for i, plen in enumerate(prompt_lens.tolist()):
        prompt_ids[i, case.prompt_len - plen :] = torch.randint(0, vocab, (plen,), generator=gen)
        prompt_mask[i, case.prompt_len - plen :] = 1
    lengths = torch.randint(1, case.completion_len + 1, (n,), generator=gen)
    lengths[0] = case.completion_len
    mask = grpo.completion_mask(lengths, case.completion_len)
    completion_ids = torch.randint(0, vocab, (n, case.completion_len), generator=gen)
    completion_ids = torch.where(mask.bool(), completion_ids, torch.full_like(completion_ids, pad))
    batch = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
             "completion_mask": mask, "rewards": torch.randint(0, 3, (n,), generator=gen).float()}
    with torch.no_grad():
        current = _our_logprobs(policy, batch, case.temperature) * mask
    old = current + 0.3 * torch.randn(current.shape, generator=gen)
    batch["old_logp"] = old
    batch["ref_logp"] = current + 0.3 * torch.randn(current.shape, generator=gen)
    batch["behavior_logp"] = old + 0.5 * torch.randn(current.shape, generator=gen)
    return batch


def _unpadded(batch: dict[str, torch.Tensor]) -> tuple[list[list[int]], list[list[int]]]:
    prompts = [ids[m.bool()].tolist() for ids, m in zip(batch["prompt_ids"], batch["prompt_mask"], strict=True)]
    comps = [ids[m.bool()].tolist() for ids, m in zip(batch["completion_ids"], batch["completion_mask"], strict=True)]
    return prompts, comps


def _our_logprobs(policy: Policy, batch: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
    prompts, comps = _unpadded(batch)
    logp, _ = policy.forward_logprobs(prompts, comps, temperature)
    width = batch["completion_ids"].shape[1]
    return torch.nn.functional.pad(logp, (0, width - logp.shape[1]))


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}


def ours_loss_and_grads(policy: Policy, batch: dict[str, torch.Tensor], case: ParityCase, agg: str, tis: bool):
    """``(loss, {param: grad}, advantages)`` from our learner's maths on ``batch``."""
    policy.model.train()
    policy.model.zero_grad(set_to_none=True)
    group_ids = torch.arange(case.n_prompts).repeat_interleave(case.group_size)
    adv = grpo.group_advantages(batch["rewards"], group_ids, scale="group")
    mask = batch["completion_mask"]
    logp = _our_logprobs(policy, batch, case.temperature)
    weights = grpo.tis_weights(batch["old_logp"], batch["behavior_logp"], cap=case.tis_cap) if tis else None
    out = grpo.policy_loss(logp, batch["old_logp"], adv, mask, case.eps_low, case.eps_high, agg=agg,
                           is_weights=weights, per_token_kl=grpo.kl_penalty(logp, batch["ref_logp"], "k3"),
                           beta=case.beta, constant_norm=case.completion_len)
    out.loss.backward()
    return out.loss.detach(), _grads(policy.model), adv


def trl_grpo_config(out_dir: str, case: ParityCase, agg: str, **overrides):
    """A ``GRPOConfig`` equal to our settings: fp32 (TRL defaults to bf16 autocast), no activation
    checkpointing, no dropout, and the plain k3 KL (TRL's default multiplies it by the ratio)."""
    from trl import GRPOConfig

    kwargs = dict(
        output_dir=out_dir, per_device_train_batch_size=case.n_prompts * case.group_size,
        num_generations=case.group_size, max_completion_length=case.completion_len,
        temperature=case.temperature, top_p=1.0, top_k=0, loss_type=TRL_LOSS[agg], beta=case.beta,
        epsilon=case.eps_low, epsilon_high=case.eps_high, use_bias_correction_kl=False,
        scale_rewards="group", use_cpu=True, bf16=False, gradient_checkpointing=False,
        disable_dropout=True, report_to=[], save_strategy="no", disable_tqdm=True,
        vllm_importance_sampling_mode="token_truncate", vllm_importance_sampling_clip_max=case.tis_cap,
    )
    kwargs.update(overrides)
    return GRPOConfig(**kwargs)


def trl_loss_and_grads(policy: Policy, batch: dict[str, torch.Tensor], case: ParityCase, agg: str, tis: bool,
                       **config_overrides):
    """``(loss, {param: grad}, advantages)`` from TRL's ``GRPOTrainer.compute_loss`` on ``batch``.

    ``policy.model`` is patched by TRL (fused LM head): pass a copy. TRL's advantages are its
    formula (``scale_rewards="group"``: ``(r - mean) / (nanstd + 1e-4)``) with its ``nanstd``.
    """
    from datasets import Dataset
    from trl import GRPOTrainer
    from trl.trainer.utils import nanstd

    model = policy.model
    with tempfile.TemporaryDirectory() as out_dir:
        model.save_pretrained(f"{out_dir}/policy")  # beta > 0: TRL loads its reference from the model's path
        model.config._name_or_path = f"{out_dir}/policy"
        trainer = GRPOTrainer(
            model=model, reward_funcs=lambda completions, **_: [0.0] * len(completions),
            args=trl_grpo_config(out_dir, case, agg, **config_overrides),
            train_dataset=Dataset.from_dict({"prompt": ["unused"]}), processing_class=policy.tokenizer,
        )
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop; one micro-batch, as ours
    rewards, mask = batch["rewards"], batch["completion_mask"]
    grouped = rewards.view(-1, case.group_size)
    mean = grouped.mean(dim=1).repeat_interleave(case.group_size)
    adv = (rewards - mean) / (nanstd(grouped, dim=1).repeat_interleave(case.group_size) + 1e-4)
    inputs = {
        "prompt_ids": batch["prompt_ids"], "prompt_mask": batch["prompt_mask"],
        "completion_ids": batch["completion_ids"], "completion_mask": mask.long(), "advantages": adv,
        "old_per_token_logps": batch["old_logp"], "ref_per_token_logps": batch["ref_logp"],
        "num_items_in_batch": mask.sum(),
    }
    if tis:
        # TRL multiplies this ratio in only on its vLLM path; the formula is its token_truncate mode.
        trainer.use_vllm = trainer.vllm_importance_sampling_correction = True
        inputs["importance_sampling_ratio"] = torch.exp((batch["old_logp"] - batch["behavior_logp"]) * mask).clamp(
            max=case.tis_cap)
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    return loss.detach(), _grads(trainer.model), adv


def parity(policy: Policy, case: ParityCase, agg: str, tis: bool, **config_overrides) -> dict[str, float]:
    """Max |difference| of loss, gradients and advantages between ours and TRL on one fixed batch.

    Also returns the largest gradient entry and the clip fractions, to show the check is not
    vacuous (non-zero gradients, clipped tokens on both sides).
    """
    batch = fixed_batch(policy, case)
    ours, theirs = copy.deepcopy(policy), copy.deepcopy(policy)
    loss_o, grads_o, adv_o = ours_loss_and_grads(ours, batch, case, agg, tis)
    loss_t, grads_t, adv_t = trl_loss_and_grads(theirs, batch, case, agg, tis, **config_overrides)
    if set(grads_o) != set(grads_t):
        raise AssertionError(f"parameter sets differ: {sorted(set(grads_o) ^ set(grads_t))}")
    with torch.no_grad():
        ratio = torch.exp(_our_logprobs(policy, batch, case.temperature) - batch["old_logp"])
    active = batch["completion_mask"].bool()
    return {
        "loss": float(loss_o), "loss_abs": abs(float(loss_o - loss_t)),
        "grad_abs": max(float((grads_o[k] - grads_t[k]).abs().max()) for k in grads_o),
        "grad_max": max(float(g.abs().max()) for g in grads_o.values()),
        "adv_abs": float((adv_o - adv_t).abs().max()),
        "ratio_below": float((ratio[active] < 1 - case.eps_low).float().mean()),
        "ratio_above": float((ratio[active] > 1 + case.eps_high).float().mean()),
    }



class GradCapture(torch.optim.Optimizer):
    """An optimizer whose ``step`` records the gradients it is given and leaves weights alone,
    so the trainer's own ``grpo_step`` can be run and its gradients read back."""

    def __init__(self, named_params: list[tuple[str, torch.nn.Parameter]]):
        self.names = {id(p): n for n, p in named_params}
        self.captured: dict[str, torch.Tensor] = {}
        super().__init__([p for _, p in named_params], {"lr": 0.0})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - documented on the class
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.captured[self.names[id(p)]] = p.grad.detach().clone()


def trainer_parity(policy: Policy, case: ParityCase, agg: str, tis: bool) -> dict[str, float]:
    """Gradients of one real ``workflow_rl.trainer.grpo_step`` against TRL's on the same batch.

    The reference is a perturbed copy of the policy run by the trainer itself (its KL pass);
    ``old`` is given (as for a second PPO iteration) so clipping is exercised; with ``tis`` the
    samples carry behavior logprobs (policy samples, TIS on), without they are search samples.
    """
    from accelerate import Accelerator

    from workflow_rl.dataset import Sample
    from workflow_rl.trainer import grpo_step
    from workflow_rl.trainer_config import TrainConfig

    batch = fixed_batch(policy, case)
    mask = batch["completion_mask"]
    ours, theirs = copy.deepcopy(policy), copy.deepcopy(policy)
    ref_model = copy.deepcopy(policy.model).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(case.seed + 1)
    with torch.no_grad():
        for p in ref_model.parameters():
            p.add_(0.003 * torch.randn(p.shape, generator=gen))
        batch["ref_logp"] = _our_logprobs(Policy(ref_model, policy.tokenizer, "", ""), batch, case.temperature) * mask
    prompts, comps = _unpadded(batch)
    group_ids = torch.arange(case.n_prompts).repeat_interleave(case.group_size)
    samples = [
        Sample(prompt="", completion="", reward=float(batch["rewards"][i]), group_id=str(int(group_ids[i])),
               source="policy" if tis else "search", workflow_id=0, problem_id=0,
               prompt_token_ids=tuple(prompts[i]), completion_token_ids=tuple(comps[i]),
               behavior_logprobs=tuple(batch["behavior_logp"][i, : len(comps[i])].tolist()) if tis else None,
               policy_version=None, temperature=case.temperature, truncated=len(comps[i]) == case.completion_len)
        for i in range(len(comps))
    ]
    n = len(samples)
    config = TrainConfig(run="parity", agg=agg, beta=case.beta, kl_kind="k3", eps_low=case.eps_low,
                         eps_high=case.eps_high, tis_cap=case.tis_cap, batch_size=n, micro_batch_size=n,
                         max_grad_norm=0.0, lr=0.0)
    advantages = grpo.group_advantages(batch["rewards"], group_ids, config.adv_scale, config.adv_eps)
    optimizer = GradCapture(list(ours.model.named_parameters()))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    grpo_step(ours, Accelerator(cpu=True), optimizer, scheduler, samples, advantages, list(range(n)), config,
              [batch["old_logp"]], ref_model)
    if not tis:  # search samples: TRL without its IS ratio
        batch = {**batch, "behavior_logp": batch["old_logp"]}
    _, grads_t, adv_t = trl_loss_and_grads(theirs, batch, case, agg, tis)
    grads_o = optimizer.captured
    if set(grads_o) != set(grads_t):
        raise AssertionError(f"parameter sets differ: {sorted(set(grads_o) ^ set(grads_t))}")
    return {
        "grad_abs": max(float((grads_o[k] - grads_t[k]).abs().max()) for k in grads_o),
        "grad_max": max(float(g.abs().max()) for g in grads_o.values()),
        "adv_abs": float((advantages - adv_t).abs().max()),
    }
