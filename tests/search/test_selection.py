"""Selection maths and back-propagation on hand-computed trees."""

import math
import random

import pytest

from search.selection import (
    backpropagate,
    expand_score,
    normalize_priors,
    puct_value,
    sample_index,
    select_aflow,
    select_child,
    select_leaf,
    soft_mixed_probabilities,
    uct_value,
)
from search.tree import ROOT_INDEX, Tree


def _tree() -> Tree:
    """Seeds A (3 visits, value 1.5) and B (1 visit, 0.8); A has children A1 (0.9) and A2 (0.1)."""
    t = Tree()
    a = t.add_node(ROOT_INDEX, 1, "a", 0.5, round=0)
    b = t.add_node(ROOT_INDEX, 2, "b", 0.8, round=0)
    a1 = t.add_node(a, 3, "a1", 0.9, round=1, prior=3.0)
    a2 = t.add_node(a, 4, "a2", 0.1, round=1, prior=1.0)
    t.visits[a], t.value_sum[a], t.expansions[a] = 3, 1.5, 1
    return t, a, b, a1, a2


def test_uct_value_hand_computed():
    # 0.5 + sqrt(ln(10) / 2) = 0.5 + sqrt(1.1512925) = 1.5729830
    assert uct_value(0.5, 2, 10, 1.0) == pytest.approx(1.5729830, abs=1e-6)
    assert uct_value(0.2, 0, 10, 1.0) == math.inf


def test_puct_value_hand_computed():
    # 0.5 + 2 * 0.25 * sqrt(16) / (1 + 3) = 1.0
    assert puct_value(0.5, 0.25, 3, 16, 2.0) == pytest.approx(1.0)
    assert normalize_priors([3.0, 1.0]) == [0.75, 0.25]
    assert normalize_priors([None, 1.0]) == [0.5, 0.5]


def test_soft_mixed_probabilities_percent_scale():
    # scores 50 % and 40 %: softmax(0.2 * [0, -10]) = [0.880797, 0.119203]
    p = soft_mixed_probabilities([0.5, 0.4], alpha=0.2, lam=0.3)
    assert p == pytest.approx([0.15 + 0.7 * 0.880797, 0.15 + 0.7 * 0.119203], abs=1e-6)
    assert sum(p) == pytest.approx(1.0)
    # equal scores -> uniform
    assert soft_mixed_probabilities([0.3, 0.3, 0.3]) == pytest.approx([1 / 3] * 3)


def test_select_child_uct_prefers_less_visited_seed():
    t, a, b, a1, a2 = _tree()
    # root visits 4; A: 0.5 + sqrt(ln4/3) = 1.179778, B: 0.8 + sqrt(ln4/1) = 1.977410
    assert select_child(t, ROOT_INDEX, "uct", 1.0) == b
    # with c = 0 the greedy value decides: A's Q = 0.5 < B's 0.8 still B; in A, A1 (0.9) > A2 (0.1)
    assert select_child(t, a, "uct", 0.0) == a1


def test_select_child_puct_uses_priors():
    t, a, b, a1, a2 = _tree()
    t.value_sum[a1] = 0.1  # make A1 and A2 equal in value: then the prior 0.75 vs 0.25 decides
    assert select_child(t, a, "puct", 1.0) == a1
    t.prior[a1], t.prior[a2] = 1.0, 3.0
    assert select_child(t, a, "puct", 1.0) == a2


def test_select_leaf_expand_action_competes_with_children():
    t, a, b, a1, a2 = _tree()
    # B was never expanded (its expand action scores +inf) and wins at the root: expand B
    assert expand_score(t, b, "uct", 1.0) == math.inf
    assert select_leaf(t, "uct", 1.0) == b
    t.value_sum[b] = 0.0  # Q(B) = 0 < Q(A) = 0.5: with c = 0 the root picks A
    # at A: children A1 0.9, A2 0.1 vs expanding A again (own score 0.5): descend to A1
    assert select_leaf(t, "uct", 0.0) == a1
    t.value_sum[a1] = 0.2  # now expanding A (0.5) beats its best child (0.2)
    assert select_leaf(t, "uct", 0.0) == a
    # c = 1: expand(A) = 0.5 + sqrt(ln 3 / 1) = 1.548147; A1 = 0.2 + sqrt(ln 3 / 1) = 1.248147
    assert expand_score(t, a, "uct", 1.0) == pytest.approx(1.548147, abs=1e-6)
    assert select_leaf(t, "uct", 1.0) == a


def test_backpropagate_max_keeps_best_value():
    t, a, b, a1, a2 = _tree()
    backpropagate(t, a1, 0.95, mode="max")
    assert (t.visits[a1], t.value_sum[a1]) == (2, pytest.approx(1.9))  # Q = max(0.9, 0.95)
    assert (t.visits[a], t.value_sum[a]) == (4, pytest.approx(3.8))  # Q = max(0.5, 0.95)
    backpropagate(t, a1, 0.1, mode="max")
    assert t.q(a1) == pytest.approx(0.95) and t.q(a) == pytest.approx(0.95) and t.visits[a] == 5


def test_backpropagate_updates_path_only():
    t, a, b, a1, a2 = _tree()
    backpropagate(t, a1, 0.6)
    assert (t.visits[a1], t.value_sum[a1]) == (2, pytest.approx(1.5))
    assert (t.visits[a], t.value_sum[a]) == (4, pytest.approx(2.1))
    assert (t.visits[b], t.value_sum[b]) == (1, pytest.approx(0.8))
    assert t.node_visits(ROOT_INDEX) == 5
    assert t.q(a) == pytest.approx(2.1 / 4)


def test_sample_index_and_aflow_selection_are_seeded():
    assert sample_index([0.0, 1.0, 0.0], random.Random(0)) == 1
    t, a, b, a1, a2 = _tree()
    draws = [select_aflow(t, random.Random(s), top_k=2) for s in range(200)]
    assert draws == [select_aflow(t, random.Random(s), top_k=2) for s in range(200)]
    # candidates: top-2 by own score (A1 0.9, B 0.8) plus seeds (A, B) -> {A, B, A1}; A2 never
    assert set(draws) == {a, b, a1}
    counts = {i: draws.count(i) / 200 for i in (a, b, a1)}
    # percent scores 50, 80, 90: P = 0.1 + 0.7 * softmax(0.2 * [-40, -10, 0])
    #   softmax = [e^-8, e^-2, 1] / 1.135671 = [0.000295, 0.119166, 0.880539]
    assert soft_mixed_probabilities([0.5, 0.8, 0.9]) == pytest.approx([0.100207, 0.183416, 0.716377], abs=1e-5)
    assert counts[a1] > counts[b] > counts[a]
