"""Loss/gradient parity of our GRPO learner with TRL's ``GRPOTrainer`` on fixed completions, per objective mode.

Used by ``benchmarks/bench_vs_trl.py`` and ``tests/workflow_rl/learner/test_trl_parity.py``. A *mode* is a dict of
TRL ``GRPOConfig`` objective options (``loss_type``, ``beta``, ``epsilon``, ``use_bias_correction_kl``,
``vllm_importance_sampling_mode``, ...) on top of TRL's own defaults; our ``TrainConfig`` takes the same
names (:func:`our_options`). TRL's side is its own code end to end after sampling: ``GRPOTrainer.
_generate_and_score_completions`` with only ``_generate`` replaced by the fixed completions and sampler
logprobs (so TRL itself computes the old logprobs of the pre-update policy, the reference logprobs, the
advantages, the truncation mask and its importance-sampling ratio), then ``compute_loss`` and backward.
Ours is the maths (``Policy.forward_logprobs`` + ``workflow_rl.learner.grpo`` / ``grpo_is``) and the trainer's
real optimizer step (``workflow_rl.learner.trainer.grpo_step``, reference pass and all), fed TRL's old logprobs
so that both sides share one old policy.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # loaded by path from a script or a test
    sys.path.insert(0, str(ROOT))

from workflow_rl.learner import grpo, grpo_is  # noqa: E402
from workflow_rl.policy.model import Policy  # noqa: E402

TRL_LOSS = {"token": "dapo", "sequence": "grpo", "constant": "dr_grpo"}
"""Our loss aggregation name -> TRL's ``loss_type`` with the same normalisation."""

OBJECTIVE = ("loss_type", "beta", "epsilon", "epsilon_high", "delta", "importance_sampling_level",
             "use_bias_correction_kl", "vllm_importance_sampling_correction", "vllm_importance_sampling_mode",
             "vllm_importance_sampling_clip_max", "vllm_importance_sampling_clip_min", "off_policy_mask_threshold",
             "top_entropy_quantile", "mask_truncated_completions", "scale_rewards")
"""The ``GRPOConfig`` fields that define the objective (the rest is numerics, logging and generation)."""

def trl_defaults() -> dict[str, Any]:
    """TRL's installed ``GRPOConfig`` defaults of the objective fields (read from the dataclass)."""
    from trl import GRPOConfig

    return {f.name: f.default for f in dataclasses.fields(GRPOConfig) if f.name in OBJECTIVE}


def our_default_mode() -> dict[str, Any]:
    """Our ``TrainConfig`` defaults expressed as TRL options (read from the dataclass, checked by a test)."""
    from workflow_rl.learner.config import TrainConfig

    c = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    return {"loss_type": TRL_LOSS[c["agg"]], "beta": c["beta"], "epsilon": c["eps_low"], "epsilon_high": c["eps_high"],
            "scale_rewards": c["adv_scale"]} | {k: c[k] for k in OBJECTIVE if k in c}


def our_options(mode: dict[str, Any]) -> dict[str, Any]:
    """``TrainConfig`` keyword arguments equal to the TRL objective ``mode`` (TRL defaults filled in)."""
    full = trl_defaults() | mode
    out = {k: full[k] for k in OBJECTIVE if k not in ("loss_type", "epsilon", "epsilon_high", "scale_rewards")}
    scale = {True: "group", False: "none"}.get(full["scale_rewards"], full["scale_rewards"])
    return out | {"agg": {v: k for k, v in TRL_LOSS.items()}[full["loss_type"]], "eps_low": full["epsilon"],
                  "eps_high": full["epsilon"] if full["epsilon_high"] is None else full["epsilon_high"],
                  "adv_scale": scale, "kl_kind": "k3"}


@dataclass(frozen=True)
class ParityCase:
    """Sizes of one parity check; both learners get exactly these."""

    n_prompts: int = 2
    group_size: int = 4
    prompt_len: int = 6  # longest prompt; others are shorter (left-padded for TRL)
    completion_len: int = 8  # longest completion; others are shorter (right-padded)
    temperature: float = 0.7
    beta: float = 0.04  # the KL coefficient of every mode unless the mode sets beta (TRL's default is 0)
    old_noise: float = 0.005  # std of the weight perturbation giving the pre-update ("old") policy
    ref_noise: float = 0.01  # std of the weight perturbation giving the reference policy
    behavior_noise: float = 0.35  # std of the sampler's logprob error per token (engine mismatch)
    seed: int = 0


def _perturbed(model: torch.nn.Module, std: float, seed: int) -> torch.nn.Module:
    out = copy.deepcopy(model).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(std * torch.randn(p.shape, generator=gen))
    return out


def fixed_batch(policy: Policy, case: ParityCase) -> dict[str, Any]:
    """Deterministic prompts, completions, rewards, an old and a reference model, and sampler logprobs.

    Lengths vary; row 0 takes the maxima and does not end with EOS (truncated), the others end with EOS.
    The old policy (the weights that sampled) and the reference are perturbed copies of ``policy``, so
    ratios leave ``[1 - eps_low, 1 + eps_high]`` on both sides; the sampler's logprobs are the old
    policy's plus Gaussian noise (engine mismatch), so some IS weights are truncated or masked.
    """
    gen = torch.Generator().manual_seed(case.seed)
    n = case.n_prompts * case.group_size
    vocab, eos = policy.model.config.vocab_size, policy.eos_token_id
    prompt_lens = torch.randint(2, case.prompt_len + 1, (n,), generator=gen)
    prompt_lens[0] = case.prompt_len
    lengths = torch.randint(1, case.completion_len + 1, (n,), generator=gen)
    lengths[0] = case.completion_len
    prompts, completions = [], []
    for i in range(n):
        prompts.append(torch.randint(0, vocab, (int(prompt_lens[i]),), generator=gen).tolist())
        ids = torch.randint(0, vocab, (int(lengths[i]),), generator=gen).tolist()
        ids = [t if t != eos else (t + 1) % vocab for t in ids]  # EOS only where we put it
        if i > 0:
            ids[-1] = eos
        completions.append(ids)
    rewards = torch.randint(0, 3, (n,), generator=gen).float()
    old_model = _perturbed(policy.model, case.old_noise, case.seed + 1)
    ref_model = _perturbed(policy.model, case.ref_noise, case.seed + 2)
    with torch.no_grad():
        old, _ = Policy(old_model, policy.tokenizer, "", "").forward_logprobs(prompts, completions, case.temperature)
    behavior = [[v + case.behavior_noise * float(torch.randn((), generator=gen)) for v in old[i, : len(c)].tolist()]
                for i, c in enumerate(completions)]
    return {"prompts": prompts, "completions": completions, "rewards": rewards, "behavior": behavior,
            "old_model": old_model, "ref_model": ref_model, "truncated": [c[-1] != eos for c in completions]}


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}


def trl_grpo_config(out_dir: str, case: ParityCase, mode: dict[str, Any], **overrides):
    """A ``GRPOConfig`` with TRL's defaults, the objective ``mode`` and our numerics: fp32 (TRL defaults to
    bf16 autocast), no activation checkpointing, no dropout, T and lengths of ``case``."""
    from trl import GRPOConfig

    kwargs = dict(
        output_dir=out_dir, per_device_train_batch_size=case.n_prompts * case.group_size,
        num_generations=case.group_size, max_completion_length=case.completion_len,
        temperature=case.temperature, top_p=1.0, top_k=0, beta=case.beta, use_cpu=True, bf16=False,
        gradient_checkpointing=False, disable_dropout=True, report_to=[], save_strategy="no", disable_tqdm=True,
    )
    return GRPOConfig(**(kwargs | mode | overrides))


def trl_side(policy: Policy, batch: dict[str, Any], case: ParityCase, mode: dict[str, Any], sampler_logprobs: bool):
    """``(loss, {param: grad}, generation outputs)`` of TRL on ``batch``: its scoring of the fixed completions
    (old logprobs under the batch's old model, reference, advantages, IS ratio), then ``compute_loss``."""
    from datasets import Dataset
    from trl import GRPOTrainer

    model = copy.deepcopy(policy.model)  # TRL patches its model (fused LM head)
    n = len(batch["completions"])
    rewards = batch["rewards"].tolist()
    with tempfile.TemporaryDirectory() as out_dir:
        batch["ref_model"].save_pretrained(f"{out_dir}/ref")  # beta > 0: TRL loads its reference from this path
        model.config._name_or_path = f"{out_dir}/ref"
        trainer = GRPOTrainer(
            model=model, reward_funcs=lambda completions, **_: [rewards[int(c)] for c in completions],
            # num_iterations=2: TRL then scores old logprobs at generation time even without vLLM
            args=trl_grpo_config(out_dir, case, mode, num_iterations=2),
            train_dataset=Dataset.from_dict({"prompt": ["unused"]}), processing_class=policy.tokenizer,
        )
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop; one micro-batch, as ours
    # TRL's sampler logprobs come from vLLM: say it was used, and hand back the fixed completions
    trainer.use_vllm = sampler_logprobs
    trainer._generate = lambda prompts: (batch["prompts"], batch["completions"], None, [str(i) for i in range(n)],
                                         batch["behavior"] if sampler_logprobs else None, {}, None, None)
    current = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    old_state = {k: v for k, v in batch["old_model"].state_dict().items()}
    with torch.no_grad():  # the data was sampled by the old weights: TRL scores its old logprobs with them
        trainer.model.load_state_dict(old_state)
    out = trainer._generate_and_score_completions([{"prompt": "unused"}] * n)
    with torch.no_grad():
        trainer.model.load_state_dict(current)
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, out)
    loss.backward()
    return loss.detach(), _grads(trainer.model), out


def ours_maths(policy: Policy, batch: dict[str, Any], case: ParityCase, options: dict[str, Any],
               old: torch.Tensor, ref: torch.Tensor, sampler_logprobs: bool):
    """``(loss, {param: grad}, advantages)`` of our pure functions composed as the trainer composes them."""
    model = copy.deepcopy(policy.model).train()
    ours = Policy(model, policy.tokenizer, "", "")
    logp, entropy, lengths = ours.forward_logprobs(batch["prompts"], batch["completions"], case.temperature,
                                                   with_entropy=True)
    mask = grpo.completion_mask(lengths, logp.shape[1], batch["truncated"], options["mask_truncated_completions"])
    group_ids = torch.arange(case.n_prompts).repeat_interleave(case.group_size)
    adv = grpo.group_advantages(batch["rewards"], group_ids, options["adv_scale"])
    behavior = _pad(batch["behavior"], logp.shape[1]) if sampler_logprobs else old
    weights = None
    if sampler_logprobs and options["vllm_importance_sampling_correction"]:
        weights = grpo_is.sampler_is_weights(old, behavior, mask, options["vllm_importance_sampling_mode"],
                                             options["vllm_importance_sampling_clip_max"],
                                             options["vllm_importance_sampling_clip_min"])
    seq_keep = None
    if options["off_policy_mask_threshold"] is not None:
        seq_keep = grpo_is.off_policy_mask(adv, logp, behavior, mask, options["off_policy_mask_threshold"])
    tok_keep = None
    if options["top_entropy_quantile"] < 1.0:
        tok_keep = grpo_is.high_entropy_mask(entropy, mask, options["top_entropy_quantile"])
    out = grpo.policy_loss(
        logp, old, adv, mask, options["eps_low"], options["eps_high"], options["delta"], options["agg"],
        constant_norm=case.completion_len, is_weights=weights, beta=options["beta"],
        per_token_kl=grpo.kl_penalty(logp, ref, "k3") if options["beta"] else None,
        level=options["importance_sampling_level"], kl_bias_correction=options["use_bias_correction_kl"],
        sequence_keep=seq_keep, token_keep=tok_keep)
    out.loss.backward()
    return out.loss.detach(), _grads(model), adv


def _pad(rows: list[list[float]], width: int) -> torch.Tensor:
    return torch.tensor([r + [0.0] * (width - len(r)) for r in rows])


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


def ours_trainer(policy: Policy, batch: dict[str, Any], case: ParityCase, options: dict[str, Any],
                 old: torch.Tensor, sampler_logprobs: bool):
    """``({param: grad}, metrics)`` of one real ``workflow_rl.learner.trainer.grpo_step`` on ``batch``: policy samples
    (behavior logprobs) or search samples, the reference pass through the batch's reference model, and
    ``old`` given (as for a later PPO iteration, so clipping is exercised)."""
    from accelerate import Accelerator

    from workflow_rl.learner.config import TrainConfig
    from workflow_rl.learner.dataset import Sample
    from workflow_rl.learner.trainer import grpo_step

    ours = Policy(copy.deepcopy(policy.model), policy.tokenizer, "", "")
    group_ids = torch.arange(case.n_prompts).repeat_interleave(case.group_size)
    samples = [
        Sample(prompt="", completion="", reward=float(batch["rewards"][i]), group_id=str(int(group_ids[i])),
               source="policy" if sampler_logprobs else "search", workflow_id=0, problem_id=0,
               prompt_token_ids=tuple(p), completion_token_ids=tuple(c),
               behavior_logprobs=tuple(batch["behavior"][i]) if sampler_logprobs else None,
               policy_version=None, temperature=case.temperature, truncated=batch["truncated"][i])
        for i, (p, c) in enumerate(zip(batch["prompts"], batch["completions"], strict=True))
    ]
    n = len(samples)
    config = TrainConfig(run="parity", batch_size=n, micro_batch_size=n, max_grad_norm=0.0, lr=0.0,
                         constant_norm=case.completion_len, **options)
    advantages = grpo.group_advantages(batch["rewards"], group_ids, config.adv_scale, config.adv_eps)
    optimizer = GradCapture(list(ours.model.named_parameters()))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    metrics = grpo_step(ours, Accelerator(cpu=True), optimizer, scheduler, samples, advantages, list(range(n)),
                        config, [old], batch["ref_model"])
    return optimizer.captured, metrics


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    if set(a) != set(b):
        raise AssertionError(f"parameter sets differ: {sorted(set(a) ^ set(b))}")
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def parity(policy: Policy, case: ParityCase, mode: dict[str, Any], sampler_logprobs: bool = True,
           trainer: bool = True, ours_mode: dict[str, Any] | None = None) -> dict[str, float]:
    """Max |ours - TRL| of loss, gradients (maths and, with ``trainer``, the trainer's step) and advantages
    for the objective ``mode`` (TRL option names; TRL's defaults fill the rest, beta defaults to
    ``case.beta``), plus figures that show the check is not vacuous: the largest gradient entry, the
    fractions of ratios outside the clip range and what the IS/off-policy/entropy masks did (trainer metrics,
    and TRL's own count of the sequences its IS ratio zeroed). ``ours_mode`` (TRL names) changes our side
    only, to show that the check can fail.
    """
    mode = {"beta": case.beta} | mode
    options = our_options(mode | (ours_mode or {}))
    batch = fixed_batch(policy, case)
    loss_t, grads_t, out = trl_side(policy, batch, case, mode, sampler_logprobs)
    mask = out["completion_mask"].float()
    old = out["old_per_token_logps"] * mask
    ref = out["ref_per_token_logps"] if "ref_per_token_logps" in out else old
    loss_o, grads_o, adv_o = ours_maths(policy, batch, case, options, old, ref, sampler_logprobs)
    with torch.no_grad():
        logp, _ = policy.forward_logprobs(batch["prompts"], batch["completions"], case.temperature)
        ratio = torch.exp(logp - old)[mask.bool()]
    result = {
        "loss": float(loss_o), "loss_abs": abs(float(loss_o - loss_t)), "grad_abs": _max_diff(grads_o, grads_t),
        "grad_max": max(float(g.abs().max()) for g in grads_o.values()),
        "adv_abs": float((adv_o - out["advantages"]).abs().max()),
        # TRL's truncation mask (last token not EOS) against ours (the samples' truncated flags)
        "mask_abs": float((mask - grpo.completion_mask([len(c) for c in batch["completions"]], mask.shape[1],
                                                       batch["truncated"], options["mask_truncated_completions"]))
                          .abs().max()),
        "ratio_below": float((ratio < 1 - options["eps_low"]).float().mean()),
        "ratio_above": float((ratio > 1 + options["eps_high"]).float().mean()),
    }
    if "importance_sampling_ratio" in out:  # TRL's own: sequences whose every active token got weight 0
        w = out["importance_sampling_ratio"].expand_as(mask)
        rows = mask.bool().any(-1)
        result["trl_is_masked_seq_frac"] = float((((w == 0) | (mask == 0)).all(-1) & rows).sum() / rows.sum())
    if trainer:
        grads_s, metrics = ours_trainer(policy, batch, case, options, old, sampler_logprobs)
        result |= {"trainer_grad_abs": _max_diff(grads_s, grads_t)} | {
            k: metrics[k] for k in ("is/masked_seq_frac", "is/masked_token_frac", "is/weight_mean",
                                    "off_policy/masked_seq_frac", "entropy/kept_token_frac",
                                    "truncated/masked_seq_frac", "ratio/seq_mean", "clip/low", "clip/high")}
    return result


MODES: dict[str, dict[str, Any]] = {
    "grpo, plain k3, token_truncate 2": {"loss_type": "grpo", "epsilon_high": 0.28, "use_bias_correction_kl": False,
                                         "vllm_importance_sampling_mode": "token_truncate",
                                         "vllm_importance_sampling_clip_max": 2.0},
    "dr_grpo, plain k3, token_truncate 2": {"loss_type": "dr_grpo", "epsilon_high": 0.28,
                                            "use_bias_correction_kl": False,
                                            "vllm_importance_sampling_mode": "token_truncate",
                                            "vllm_importance_sampling_clip_max": 2.0},
    "token_mask [0.8, 1.2]": {"vllm_importance_sampling_mode": "token_mask", "vllm_importance_sampling_clip_max": 1.2,
                              "vllm_importance_sampling_clip_min": 0.8},
    "sequence_truncate [0.5, 1.5]": {"vllm_importance_sampling_mode": "sequence_truncate",
                                     "vllm_importance_sampling_clip_max": 1.5,
                                     "vllm_importance_sampling_clip_min": 0.5},
    "gspo (sequence ratio), grpo": {"importance_sampling_level": "sequence", "loss_type": "grpo"},
    "off_policy_mask 0.05": {"off_policy_mask_threshold": 0.05},
    "delta 1.06, eps_high 0.05": {"delta": 1.06, "epsilon_high": 0.05},
    "top_entropy_quantile 0.2": {"top_entropy_quantile": 0.2},
    "mask_truncated_completions": {"mask_truncated_completions": True},
    "no IS correction": {"vllm_importance_sampling_correction": False},
}
"""Further parity modes on top of TRL's defaults (TRL names): every loss type, IS mode and masking option."""


def modes() -> dict[str, dict[str, Any]]:
    """The parity matrix: TRL 1.16's defaults (dapo, eps 0.2/0.2, bias-corrected k3, sequence_mask IS at 3.0),
    ours (read from ``TrainConfig``), then :data:`MODES`. beta comes from the case unless a mode sets it."""
    ours = {k: v for k, v in our_default_mode().items() if k != "beta"}
    return {"trl defaults": {}, "ours defaults": ours} | MODES
