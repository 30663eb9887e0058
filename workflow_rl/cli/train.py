"""``workflow-rl train``: one GRPO round on a stored run's evaluations, with a progress bar."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from workflow_rl.cli.options import DbOption, resolve_db
from workflow_rl.cli.output import (
    Summary,
    backend,
    command,
    db_facts,
    log_console,
    next_for_run,
    print_summary,
    sql_command,
    sql_literal,
)
from workflow_rl.learner.config import TrainConfig

if TYPE_CHECKING:
    from workflow_rl.learner.trainer import TrainResult

_H = TrainConfig.help_for


def train_command(
    ctx: typer.Context,
    run: Annotated[str, typer.Option("--run", help=_H("run"))],
    policy: Annotated[str, typer.Option("--policy", help=_H("policy"))] = "builtin:tiny",
    lora: Annotated[bool | None, typer.Option("--lora/--full", help=_H("lora"))] = None,
    lr: Annotated[float, typer.Option("--lr", help=_H("lr"))] = 1e-5,
    epochs: Annotated[int, typer.Option("--epochs", help=_H("epochs"))] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size", help=_H("batch_size"))] = 16,
    micro_batch_size: Annotated[int, typer.Option("--micro-batch-size", help=_H("micro_batch_size"))] = 8,
    num_iterations: Annotated[int, typer.Option("--num-iterations", help=_H("num_iterations"))] = 1,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help=_H("max_steps"))] = None,
    warmup_steps: Annotated[int, typer.Option("--warmup-steps", help=_H("warmup_steps"))] = 0,
    max_grad_norm: Annotated[float, typer.Option("--max-grad-norm", help=_H("max_grad_norm"))] = 1.0,
    agg: Annotated[str, typer.Option("--agg", help=_H("agg"))] = "token",
    adv_scale: Annotated[str, typer.Option("--adv-scale", help=_H("adv_scale"))] = "group",
    eps_low: Annotated[float, typer.Option("--eps-low", help=_H("eps_low"))] = 0.2,
    eps_high: Annotated[float, typer.Option("--eps-high", help=_H("eps_high"))] = 0.28,
    beta: Annotated[float, typer.Option("--beta", help=_H("beta"))] = 0.0,
    kl_kind: Annotated[str, typer.Option("--kl", help=_H("kl_kind"))] = "k3",
    use_bias_correction_kl: Annotated[bool, typer.Option("--kl-bias-correction/--no-kl-bias-correction",
                                                         help=_H("use_bias_correction_kl"))] = True,
    importance_sampling_level: Annotated[str, typer.Option("--importance-sampling-level",
                                                           help=_H("importance_sampling_level"))] = "token",
    is_correction: Annotated[bool, typer.Option("--is-correction/--no-is-correction",
                                                help=_H("vllm_importance_sampling_correction"))] = True,
    is_mode: Annotated[str, typer.Option("--is-mode", help=_H("vllm_importance_sampling_mode"))] = "token_truncate",
    is_clip_max: Annotated[float | None, typer.Option("--is-clip-max", "--tis-cap",
                                                      help=_H("vllm_importance_sampling_clip_max"))] = 2.0,
    is_clip_min: Annotated[float | None, typer.Option("--is-clip-min",
                                                      help=_H("vllm_importance_sampling_clip_min"))] = None,
    off_policy_mask_threshold: Annotated[float | None, typer.Option("--off-policy-mask-threshold",
                                                                    help=_H("off_policy_mask_threshold"))] = None,
    delta: Annotated[float | None, typer.Option("--delta", help=_H("delta"))] = None,
    top_entropy_quantile: Annotated[float, typer.Option("--top-entropy-quantile",
                                                        help=_H("top_entropy_quantile"))] = 1.0,
    mask_truncated_completions: Annotated[bool, typer.Option("--mask-truncated-completions",
                                                             help=_H("mask_truncated_completions"))] = False,
    min_group_size: Annotated[int, typer.Option("--min-group-size", help=_H("min_group_size"))] = 2,
    drop_zero_std: Annotated[bool, typer.Option("--drop-zero-std", help=_H("drop_zero_std"))] = False,
    group_by_prompt: Annotated[bool, typer.Option("--group-by-prompt/--group-by-problem",
                                                  help=_H("group_by_prompt"))] = True,
    search_samples: Annotated[str, typer.Option("--search-samples", help=_H("search_samples"))] = "all",
    search_per_group: Annotated[int | None, typer.Option("--search-per-group", help=_H("search_per_group"))] = None,
    batch_by_group: Annotated[bool, typer.Option("--batch-by-group", help=_H("batch_by_group"))] = False,
    skip_frozen: Annotated[bool, typer.Option("--skip-frozen", help=_H("skip_frozen"))] = False,
    allow_stale: Annotated[bool, typer.Option("--allow-stale", help=_H("allow_stale"))] = False,
    round_: Annotated[int, typer.Option("--round", help=_H("round"))] = 0,
    out_dir: Annotated[str | None, typer.Option("--out", help=_H("out_dir"))] = None,
    cache_dir: Annotated[str | None, typer.Option("--cache-dir", help=_H("cache_dir"))] = None,
    save_every: Annotated[int | None, typer.Option("--save-every", help=_H("save_every"))] = None,
    seed: Annotated[int, typer.Option("--seed", help=_H("seed"))] = 0,
    resume: Annotated[bool, typer.Option("--resume", help=_H("resume"))] = False,
    db: DbOption = None,
) -> None:
    """Train the policy with token-level GRPO on the stored evaluations of --run (train split only).

    Writes per-step metrics to train_steps and registers the checkpoint in policy_checkpoints;
    the next search round can load it as its proposer.
    """
    from workflow_rl.learner.trainer import train

    config = TrainConfig(
        run=run, policy=policy, lora=lora, lr=lr, epochs=epochs, batch_size=batch_size,
        micro_batch_size=micro_batch_size, num_iterations=num_iterations, max_steps=max_steps,
        warmup_steps=warmup_steps, max_grad_norm=max_grad_norm, agg=agg, adv_scale=adv_scale,
        eps_low=eps_low, eps_high=eps_high, beta=beta, kl_kind=kl_kind,
        use_bias_correction_kl=use_bias_correction_kl, importance_sampling_level=importance_sampling_level,
        vllm_importance_sampling_correction=is_correction, vllm_importance_sampling_mode=is_mode,
        vllm_importance_sampling_clip_max=is_clip_max, vllm_importance_sampling_clip_min=is_clip_min,
        off_policy_mask_threshold=off_policy_mask_threshold, delta=delta, top_entropy_quantile=top_entropy_quantile,
        mask_truncated_completions=mask_truncated_completions,
        min_group_size=min_group_size, drop_zero_std=drop_zero_std, allow_stale=allow_stale,
        group_by_prompt=group_by_prompt, search_samples=search_samples, search_per_group=search_per_group,
        batch_by_group=batch_by_group, skip_frozen=skip_frozen,
        round=round_, out_dir=out_dir, cache_dir=cache_dir, save_every=save_every, seed=seed, resume=resume,
    )
    db = resolve_db(ctx, db)
    console = log_console(stderr=True)
    columns = (TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn())
    # transient: a refused run (missing checkpoint, unknown run) leaves only its one error line
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("train", total=None, info="")

        def on_step(step: int, total: int, m: dict[str, float]) -> None:
            info = (f"loss {m['loss/policy']:+.4f}  reward {m['reward/batch_mean']:.3f}  kl {m['loss/kl']:.4f}  "
                    f"clip {m['clip/low']:.3f}/{m['clip/high']:.3f}" + ("  SKIPPED" if m["step/skipped"] else ""))
            progress.update(task, completed=step, total=total, info=info)

        result = train(config, db, on_step=on_step)
    print_summary(train_summary(db, config, result))


def train_summary(db: str, config: TrainConfig, result: TrainResult) -> Summary:
    """The end of ``train``: what was trained, where it is stored, the checkpoint and what next."""
    last = result.history[-1] if result.history else {}
    summary = Summary([
        f"trained {len(result.history)} steps (total {result.steps}) on {result.dataset.samples} samples "
        f"({result.dataset.groups} groups, {result.dataset.policy} policy / {result.dataset.search} search); "
        f"final loss {last.get('loss/policy', float('nan')):+.4f}",
        *db_facts(db),
        f"run: {config.run} (round {config.round})",
        f"checkpoint: {result.checkpoint_id} at {result.checkpoint_path}",
    ])
    if backend(db) == "postgresql":
        loss, reward = "metrics->>'loss/policy'", "metrics->>'reward/batch_mean'"
    else:  # SQLite's JSON functions
        loss, reward = """json_extract(metrics, '$."loss/policy"')""", """json_extract(metrics, '$."reward/batch_mean"')"""
    query = (f"SELECT step, {loss} AS loss, {reward} AS reward FROM train_steps "
             f"WHERE run_id = (SELECT id FROM runs WHERE name = {sql_literal(config.run)}) "
             f"AND round = {config.round} ORDER BY step")
    summary.commands = [
        ("the trained policy on the held-out test split",
         command(db, "eval", "--policy", str(result.checkpoint_id), "--split", "test")),
        ("the loss and reward of each step", sql_command(db, query)),
        *next_for_run(db, config.run),
    ]
    return summary


def register(app: typer.Typer) -> None:
    """Add ``train`` to the app."""
    app.command("train")(train_command)
