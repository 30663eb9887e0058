"""Crash safety of training: SIGKILL during steps and during checkpoint saves, then ``--resume``.

One training run (a checkpoint after every step) is killed again and again; each restart resumes
from the newest registered checkpoint. Three kills land inside ``Policy.save`` on purpose (the
process SIGKILLs itself while fsyncing the temporary directory, just before the rename into
place, and after the rename but before the database registers it), each in the 2nd save of its
process (checked); the others at a seeded-random time after a save, but before the save after it
(kills are placed by progress, not by time alone, so a fast machine cannot finish the run first).
After every kill, every registered checkpoint must be complete and loadable; at the end the
resumed run must equal an uninterrupted one bit for bit (weights and per-step losses).

Checkpoint writing is verified in the code too: ``Policy.save`` writes a temporary sibling
directory, fsyncs every file, writes ``policy.json`` last and renames the directory into place,
and the trainer registers the checkpoint in the database only after that.
"""

from __future__ import annotations

import inspect
import random
from pathlib import Path

import pytest
import torch
from sqlalchemy import func, select

from storage.engine import open_db, read_session_scope, session_scope
from storage.models import PolicyCheckpoint, TrainStep
from tests.helpers.learner import RUN
from tests.helpers.reliability import kill_group, spawn, stderr_of, train_command, wait_until
from workflow_rl.learner import trainer
from workflow_rl.policy.model import POLICY_META, Policy

STEPS = 24
KILLS = 10

# SIGKILL this process from inside Policy.save, at one chosen point (fault injection prelude).
_SELF_KILL = "import os, signal\n_kill = lambda: os.kill(os.getpid(), signal.SIGKILL)\n"
SAVE_FAULTS = {
    # while fsyncing the temporary directory's files: the 3rd fsync of the 2nd Policy.save (saves
    # are counted, not fsyncs overall: how many files save_pretrained writes changes with versions)
    "during fsync": _SELF_KILL + (
        "import workflow_rl.policy.model as _p\n_save, _saves = _p.Policy.save, [0]\n"
        "def _s(*a, **k):\n    _saves[0] += 1\n    return _save(*a, **k)\n"
        "_p.Policy.save = _s\n"
        "_fsync, _n = os.fsync, [0]\n"
        "def _f(fd):\n    _n[0] += _saves[0] == 2\n    _kill() if _n[0] == 3 else _fsync(fd)\n"
        "os.fsync = _f\n"),
    # complete temporary directory, killed just before it is renamed into place
    "before rename": _SELF_KILL + (
        "_rename, _n = os.rename, [0]\n"
        "def _r(a, b):\n    _n[0] += ('.tmp-' in str(a))\n    _kill() if _n[0] == 2 else _rename(a, b)\n"
        "os.rename = _r\n"),
    # renamed into place, killed before the database registers it
    "before registration": _SELF_KILL + (
        "import workflow_rl.learner.trainer as _t\n_add, _n = _t.add_checkpoint, [0]\n"
        "def _a(*a, **k):\n    _n[0] += 1\n    return _kill() if _n[0] == 2 else _add(*a, **k)\n"
        "_t.add_checkpoint = _a\n"),
}


def _options(out: Path, cache: str, resume: bool) -> dict:
    return {"run": RUN, "out_dir": str(out), "cache_dir": cache, "batch_size": 8, "micro_batch_size": 8,
            "max_steps": STEPS, "epochs": 8, "lr": 1e-2, "save_every": 1, "seed": 3, "resume": resume}


def _weights(path: str, cache: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in Policy.load(path, cache_dir=cache).model.state_dict().items()}


def _registered(engine) -> list[PolicyCheckpoint]:
    """Checkpoints of the killed run (round 0; the uninterrupted reference is round 7)."""
    with session_scope(engine) as s:
        return list(s.scalars(select(PolicyCheckpoint).where(PolicyCheckpoint.round == 0)
                              .order_by(PolicyCheckpoint.id)))


def _saves(engine) -> int:
    """Registered saves of round 0 (every step saves, redone steps too: a progress counter)."""
    with read_session_scope(engine) as s:
        return s.scalar(select(func.count(PolicyCheckpoint.id)).where(PolicyCheckpoint.round == 0)) or 0


def _assert_registered_complete(engine, cache: str) -> None:
    """Every checkpoint the database names is whole: metadata, trainer state and loadable weights."""
    for ckpt in _registered(engine):
        path = Path(ckpt.path)
        assert (path / POLICY_META).exists() and (path / "trainer_state.pt").exists(), ckpt.path
        assert Policy.trainer_state(path)["step"] == ckpt.step
        Policy.load(str(path), cache_dir=cache)


def test_checkpoints_are_written_atomically_in_the_code():
    source = inspect.getsource(Policy.save)
    assert "mkdtemp" in source and "os.fsync" in source and "os.rename(tmp, path)" in source
    assert source.index("POLICY_META") < source.index("os.fsync") < source.index("os.rename(tmp, path)")
    save = inspect.getsource(trainer._save)
    assert save.index(".save(path") < save.index("add_checkpoint")  # registered only once on disk
    # a directory without policy.json (never finished) is refused, never loaded
    assert "is incomplete" in inspect.getsource(Policy.load)


@pytest.mark.slow
def test_training_survives_sigkills_and_resumes_bit_for_bit(train_db, tiny_cache, tmp_path):
    engine = open_db(train_db)
    # The uninterrupted reference runs as a process of its own too (round 7 of the same run): the
    # same environment as the killed processes, so their floating-point results can be equal.
    # It runs beside the kill chain (it only touches round 7's rows and its own directory).
    ref_proc = spawn(train_command(train_db, _options(tmp_path / "reference", tiny_cache, False) | {"round": 7}),
                     raw=True)

    out = tmp_path / "killed"
    rng = random.Random(7)
    faults = list(SAVE_FAULTS.items())
    kills, save_kills = 0, 0
    for trial in range(KILLS * 3):
        if kills == KILLS:
            break
        resume = bool(_registered(engine))
        prelude = ""
        if trial < len(faults):
            prelude = faults[trial][1]
        before = _saves(engine)
        tmp_before = {p.name for p in out.iterdir() if ".tmp-" in p.name} if out.exists() else set()
        proc = spawn(train_command(train_db, _options(out, tiny_cache, resume), prelude), raw=True)
        try:
            if prelude:
                proc.wait(timeout=300)  # it kills itself inside the save
            elif wait_until(lambda b=before: _saves(engine) > b, proc, 300):
                # mid-step or mid-save at a random time, by progress: never past the next save, so
                # each kill costs at most 2 steps and all KILLS land before STEPS on any machine
                wait_until(lambda b=before: _saves(engine) > b + 1, proc, rng.uniform(0.0, 0.5), poll=0.01)
        finally:
            if proc.poll() is None:
                kill_group(proc)
        err = stderr_of(proc)
        if proc.returncode == -9:
            kills += 1
            save_kills += bool(prelude)
        else:
            assert proc.returncode == 0, err[-3000:]
            break  # the run finished before the kill
        assert "Traceback" not in err, err[-3000:]
        if prelude:  # the premise: the fault fired inside the process's 2nd save, not elsewhere
            assert _saves(engine) == before + 1, (faults[trial][0], before, _saves(engine))
            new_tmp = {p.name for p in out.iterdir() if ".tmp-" in p.name} - tmp_before
            assert bool(new_tmp) == (faults[trial][0] != "before registration"), (faults[trial][0], new_tmp)
        _assert_registered_complete(engine, tiny_cache)

    assert kills >= KILLS and save_kills == len(SAVE_FAULTS), (
        f"{kills} kills ({save_kills} inside saves) before the run finished its {STEPS} steps")
    proc = spawn(train_command(train_db, _options(out, tiny_cache, True)), raw=True)
    assert proc.wait(timeout=600) == 0, stderr_of(proc)[-3000:]
    _assert_registered_complete(engine, tiny_cache)
    assert ref_proc.wait(timeout=600) == 0, stderr_of(ref_proc)[-3000:]

    with session_scope(engine) as s:
        reference = s.scalars(select(PolicyCheckpoint).where(PolicyCheckpoint.round == 7,
                                                             PolicyCheckpoint.step == STEPS)).one()
        reference_losses = [r.metrics["loss/policy"] for r in s.scalars(
            select(TrainStep).where(TrainStep.round == 7).order_by(TrainStep.step))]
        rows = s.scalars(select(TrainStep).where(TrainStep.round == 0).order_by(TrainStep.step)).all()
        losses = [r.metrics["loss/policy"] for r in rows]
        assert [r.step for r in rows] == list(range(1, STEPS + 1))  # every step once, none lost
        final = s.scalars(select(PolicyCheckpoint).where(PolicyCheckpoint.round == 0, PolicyCheckpoint.step == STEPS)
                          .order_by(PolicyCheckpoint.id.desc())).first()
    assert losses == reference_losses
    a, b = _weights(reference.path, tiny_cache), _weights(final.path, tiny_cache)
    assert all(torch.equal(a[k], b[k]) for k in a)
    leftovers = [p.name for p in out.iterdir() if ".tmp-" in p.name]
    assert not any(c.path.endswith(n) for c in _registered(engine) for n in leftovers)
    print(f"RELIABILITY train kills={kills} save_kills={save_kills} rows_checked={len(rows)}")
