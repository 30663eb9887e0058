"""The loop's typed state reads and writes the JSON that ``runs.state`` holds, old loops' included."""

from __future__ import annotations

from workflow_rl.loop.state import LoopState, RoundState

# As a loop wrote it: round 0 finished, round 1 stopped after its search, one key this code ignores.
STORED = {
    "rounds": {
        "0": {"phase": "done", "search_run": "loop/r0", "best_score": 0.35, "best_workflow_id": 7, "evaluations": 320,
              "search_run_id": 2, "samples": {"policy_samples": 64}, "checkpoint_id": 1,
              "checkpoint_path": "runs/loop/r0/ckpt", "train_steps": 4},
        "1": {"phase": "data", "search_run": "loop/r1", "best_score": 0.9, "best_workflow_id": 12, "evaluations": 320,
              "search_run_id": 3},
    },
    "note": "kept",
}


def test_stored_state_round_trips_unchanged():
    state = LoopState.from_json(STORED)
    assert state.rounds[1] == RoundState("loop/r1", "data", 0.9, 12, 320, 3)
    assert [r for r, _ in state.done()] == [0]
    assert state.to_json() == STORED


def test_a_new_round_stores_only_what_it_has():
    state = LoopState.from_json(None)
    state.rounds[0] = RoundState("loop/r0")
    assert state.to_json() == {"rounds": {"0": {"phase": "search", "search_run": "loop/r0"}}}
    assert RoundState.from_json({"search_run": "x", "phase": "train", "unknown": 1}) == RoundState("x", "train")
