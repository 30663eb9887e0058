"""Pure selection and back-propagation functions (mctx's ``action_selection.py`` + backward).

Scales: rewards and node values ``Q = value_sum / visits`` are in ``[0, 1]``. AFlow's soft-mixed
selection was published with scores in *percent* (0-100) and ``alpha = 0.2``; to keep its published
behaviour :func:`soft_mixed_probabilities` takes a ``score_scale`` (default 100) that converts our
``[0, 1]`` scores to percent before applying ``alpha``.

Every function here consumes plain numbers or a :class:`search.tree.Tree` and returns numbers or
indices; nothing touches the database or a random source except through an explicit ``rng``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from search.tree import ROOT_INDEX, Tree

UCT = "uct"
PUCT = "puct"
AFLOW = "aflow"
SELECTION_METHODS = (UCT, PUCT, AFLOW)
"""Names accepted by ``SearchConfig.selection``."""


def uct_value(q: float, visits: int, parent_visits: int, c: float) -> float:
    """UCB1 for trees: ``q + c * sqrt(ln(parent_visits) / visits)``; an unvisited child is +inf."""
    if visits <= 0:
        return math.inf
    return q + c * math.sqrt(math.log(max(parent_visits, 1)) / visits)


def puct_value(q: float, prior: float, visits: int, parent_visits: int, c: float) -> float:
    """AlphaZero's PUCT: ``q + c * prior * sqrt(parent_visits) / (1 + visits)``."""
    return q + c * prior * math.sqrt(parent_visits) / (1 + visits)


def normalize_priors(priors: Sequence[float | None]) -> list[float]:
    """Priors of siblings as probabilities; missing or all-zero priors become uniform."""
    n = len(priors)
    if n == 0:
        return []
    if any(p is None for p in priors) or sum(priors) <= 0:  # type: ignore[arg-type]
        return [1.0 / n] * n
    total = float(sum(priors))  # type: ignore[arg-type]
    return [float(p) / total for p in priors]  # type: ignore[arg-type]


def soft_mixed_probabilities(
    scores: Sequence[float], alpha: float = 0.2, lam: float = 0.3, score_scale: float = 100.0
) -> list[float]:
    """AFlow's selection distribution ``P(i) = lam / n + (1 - lam) * softmax(alpha * (s_i - s_max))``.

    ``scores`` are in ``[0, 1]`` and multiplied by ``score_scale`` (100 = AFlow's percent scale)
    before the softmax; ``lam`` mixes in a uniform distribution so every node keeps some chance.
    """
    n = len(scores)
    if n == 0:
        return []
    scaled = [s * score_scale for s in scores]
    top = max(scaled)
    weights = [math.exp(alpha * (s - top)) for s in scaled]
    total = sum(weights)
    return [lam / n + (1.0 - lam) * w / total for w in weights]


def sample_index(probabilities: Sequence[float], rng: random.Random) -> int:
    """Draw one index from ``probabilities`` with ``rng`` (inverse CDF, deterministic per rng state)."""
    u = rng.random() * sum(probabilities)
    acc = 0.0
    for i, p in enumerate(probabilities):
        acc += p
        if u < acc:
            return i
    return len(probabilities) - 1


def allowed_expansions(visits: int, pw_c: float, pw_alpha: float) -> int:
    """Progressive widening: a node with ``visits`` may be expanded ``floor(pw_c * visits**pw_alpha)`` times.

    At least once, so every new leaf can be expanded; a good node is re-expanded as its visits grow.
    """
    return max(1, int(math.floor(pw_c * visits**pw_alpha)))


def child_scores(tree: Tree, node: int, method: str, c: float) -> list[float]:
    """Selection scores of ``node``'s children under ``method`` (``uct`` or ``puct``)."""
    children = tree.children[node]
    parent_visits = tree.node_visits(node)
    if method == PUCT:
        priors = normalize_priors([tree.prior[ch] for ch in children])
        return [
            puct_value(tree.q(ch), p, tree.visits[ch], parent_visits, c)
            for ch, p in zip(children, priors, strict=True)
        ]
    return [uct_value(tree.q(ch), tree.visits[ch], parent_visits, c) for ch in children]


def select_child(tree: Tree, node: int, method: str, c: float) -> int:
    """The child of ``node`` with the highest score; ties go to the earliest-created child."""
    scores = child_scores(tree, node, method, c)
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    return tree.children[node][best]


def select_leaf(tree: Tree, method: str, c: float, pw_c: float = 1.0, pw_alpha: float = 0.5) -> int:
    """Descend from the virtual root to the node to expand next (``uct``/``puct`` methods).

    At each node, stop and expand it while progressive widening allows another expansion;
    otherwise move to the best child. The virtual root is never returned.
    """
    node = ROOT_INDEX
    while True:
        if node != ROOT_INDEX and tree.expansions[node] < allowed_expansions(
            tree.visits[node], pw_c, pw_alpha
        ):
            return node
        if not tree.children[node]:
            return node
        node = select_child(tree, node, method, c)


def select_aflow(
    tree: Tree, rng: random.Random, top_k: int = 3, alpha: float = 0.2, lam: float = 0.3
) -> int:
    """AFlow's selection: the top-``k`` nodes by own score plus every seed, drawn soft-mixed.

    Candidates are ordered by node index so that the draw is deterministic for a given ``rng``.
    """
    nodes = [i for i in range(1, len(tree)) if tree.own_score[i] is not None]
    ranked = sorted(nodes, key=lambda i: (-tree.own_score[i], i))[:top_k]  # type: ignore[operator]
    seeds = [i for i in nodes if tree.parent[i] == ROOT_INDEX]
    candidates = sorted(set(ranked) | set(seeds))
    probs = soft_mixed_probabilities([tree.own_score[i] for i in candidates], alpha, lam)  # type: ignore[misc]
    return candidates[sample_index(probs, rng)]


def backpropagate(tree: Tree, node: int, value: float, visits: int = 1) -> None:
    """Add ``visits`` and ``visits * value`` to ``node`` and every ancestor (not the virtual root)."""
    while node != ROOT_INDEX:
        tree.visits[node] += visits
        tree.value_sum[node] += value * visits
        node = tree.parent[node]
