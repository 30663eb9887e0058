"""Training faults: a NaN/inf loss or gradient skips the step, is logged, and never reaches the weights.

Faults are injected for real: a NaN reward stored in the database (it flows through the dataset
layer into the advantages and the loss), a backward hook that poisons one parameter's gradient
with NaN/inf on chosen steps, and a forward hook that makes the logits infinite on chosen steps.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from sqlalchemy import select

from storage.engine import open_db, session_scope
from storage.models import TrainStep
from tests.helpers.learner import RUN
from workflow_rl.learner.config import TrainConfig
from workflow_rl.learner.trainer import train
from workflow_rl.policy.model import Policy


def _cfg(tmp_path, cache, **kw) -> TrainConfig:
    base = dict(run=RUN, out_dir=str(tmp_path / "ckpt"), cache_dir=cache, batch_size=8, micro_batch_size=8,
                max_steps=3, lr=1e-2)
    return TrainConfig(**(base | kw))


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().float() for k, v in model.state_dict().items()}


def _finite(weights: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(v).all() for v in weights.values())


def _stored_skips(url: str) -> list[float]:
    with session_scope(open_db(url)) as s:
        rows = s.scalars(select(TrainStep).order_by(TrainStep.step)).all()
        return [r.metrics["step/skipped"] for r in rows]


class Poison:
    """Patches ``Policy.load`` so the loaded model gets a fault on the given optimizer steps.

    ``kind`` is ``grad-nan``/``grad-inf`` (a backward hook on one weight) or ``logits-inf`` (a
    forward hook on the model output). ``step`` is the optimizer step under way, counted from the
    trainer's own ``on_step`` callback (pass :meth:`after_step`), not from forwards: how many forwards
    make a step is the sampler's and trainer's business (a pass per distinct prompt, then its rows'
    completions) and changed twice already.
    """

    def __init__(self, monkeypatch, kind: str, steps: set[int]):
        self.kind, self.steps, self.step, self.fired = kind, steps, 1, 0
        self.initial: dict[str, torch.Tensor] | None = None
        original = Policy.load

        def load(*args, **kwargs):
            policy = original(*args, **kwargs)
            if self.initial is None:  # the trainer's load (later loads read back checkpoints)
                self.initial = _weights(policy.model)
                self._install(policy.model)
            return policy

        monkeypatch.setattr(Policy, "load", load)

    def after_step(self, step: int, _total: int, _metrics: dict) -> None:
        """The trainer's ``on_step``: optimizer step ``step`` is done, the next is under way."""
        self.step = step + 1

    def _install(self, model: torch.nn.Module) -> None:
        if self.kind.startswith("grad"):
            weight = next(p for p in model.parameters() if p.requires_grad and p.dim() == 2)
            bad = math.nan if self.kind == "grad-nan" else math.inf

            def poison_grad(grad):
                if self.step in self.steps:
                    self.fired += 1
                    return torch.full_like(grad, bad)
                return grad

            weight.register_hook(poison_grad)
        else:
            def poison_logits(module, _inputs, output):
                if module.training and self.step in self.steps:
                    self.fired += 1
                    output.logits = output.logits + math.inf
                return output

            model.register_forward_hook(poison_logits)


@pytest.mark.parametrize("kind", ["grad-nan", "grad-inf", "logits-inf"])
def test_poisoned_step_is_skipped_and_logged(kind, train_db, tiny_cache, tmp_path, monkeypatch):
    poison = Poison(monkeypatch, kind, steps={2})
    seen = []
    result = train(_cfg(tmp_path, tiny_cache), train_db,
                   on_step=lambda k, n, m: (seen.append(m["step/skipped"]), poison.after_step(k, n, m)))
    assert poison.fired >= 1
    skipped = [m["step/skipped"] for m in result.history]
    assert skipped == [0.0, 1.0, 0.0] == seen  # only the poisoned step is skipped; training goes on
    assert _stored_skips(train_db) == skipped  # logged in train_steps
    saved = _weights(Policy.load(str(result.checkpoint_path), cache_dir=tiny_cache).model)
    assert _finite(saved)
    assert any(not torch.equal(saved[k], poison.initial[k]) for k in saved)  # the good steps did update


def test_every_step_poisoned_leaves_weights_bit_identical(train_db, tiny_cache, tmp_path, monkeypatch):
    poison = Poison(monkeypatch, "grad-nan", steps={1, 2, 3})
    result = train(_cfg(tmp_path, tiny_cache), train_db, on_step=poison.after_step)
    assert [m["step/skipped"] for m in result.history] == [1.0, 1.0, 1.0]
    saved = _weights(Policy.load(str(result.checkpoint_path), cache_dir=tiny_cache).model)
    assert all(torch.equal(saved[k], poison.initial[k]) for k in saved)  # no NaN (no change) ever written


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_reward_skips_its_steps(bad, train_db, tiny_cache, tmp_path, monkeypatch):
    """A NaN/inf reward reaching the learner (a broken scorer) poisons the advantages of its group:
    every step whose batch holds it is skipped and logged; the weights never change."""
    import workflow_rl.learner.trainer as trainer

    original = trainer.load_samples

    def load_samples(*args, **kwargs):
        samples, stats = original(*args, **kwargs)
        return [dataclasses.replace(samples[0], reward=bad), *samples[1:]], stats

    monkeypatch.setattr(trainer, "load_samples", load_samples)
    initial = _weights(Policy.load("builtin:tiny", cache_dir=tiny_cache).model)
    # one batch holding every sample: each step sees the poisoned group
    result = train(_cfg(tmp_path, tiny_cache, max_steps=2, epochs=2, batch_size=256, micro_batch_size=128),
                   train_db)
    assert [m["step/skipped"] for m in result.history] == [1.0, 1.0]
    assert _stored_skips(train_db) == [1.0, 1.0]
    saved = _weights(Policy.load(str(result.checkpoint_path), cache_dir=tiny_cache).model)
    assert all(torch.equal(saved[k], initial[k]) for k in saved)


def test_skipped_step_metrics_store_on_every_backend(db_url):
    """A skipped step's metrics hold NaN (grad/norm); PostgreSQL's json rejects the NaN token, so
    they must be stored as valid JSON (null) or the run dies on its first skipped step."""
    from storage.repo import add_train_step, get_or_create_run

    engine = open_db(db_url)
    with session_scope(engine) as s:
        run = get_or_create_run(s, "faults", "calc", kind="train")
        add_train_step(s, run.id, 1, {"grad/norm": math.nan, "loss/policy": -math.inf, "step/skipped": 1.0,
                                      "nested": [math.inf, 2.0]})
    with session_scope(engine) as s:
        metrics = s.scalars(select(TrainStep.metrics)).one()
    assert metrics == {"grad/norm": None, "loss/policy": None, "step/skipped": 1.0, "nested": [None, 2.0]}
    engine.dispose()
