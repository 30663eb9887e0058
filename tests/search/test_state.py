"""A search run's stored counters read back into SearchState and write out unchanged."""

from __future__ import annotations

from search.state import SearchState


def test_stored_counters_round_trip_and_unknown_keys_are_kept():
    stored = {"next_simulation": 7, "evaluations": 420, "cost": None, "stale": 2, "topk_mean": 0.65,
              "stop_reason": "budget", "later_version_key": [1, 2]}
    state = SearchState.from_json(stored)
    assert (state.next_simulation, state.evaluations, state.cost, state.stale) == (7, 420, None, 2)
    assert state.to_json() == stored


def test_a_new_run_starts_at_the_seeds():
    assert SearchState.from_json(None) == SearchState()
    assert SearchState().to_json() == {"next_simulation": 0, "evaluations": 0, "cost": 0.0, "stale": 0,
                                       "topk_mean": None, "stop_reason": None}
