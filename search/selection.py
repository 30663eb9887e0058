"""Pure selection and back-propagation functions (mctx's ``action_selection.py`` + backward).

Scales: rewards and node values ``Q = value_sum / visits`` are in ``[0, 1]``. AFlow's soft-mixed
selection was published with scores in *percent* (0-100) and ``alpha = 0.2``; to keep its published
behaviour :func:`soft_mixed_probabilities` takes a ``score_scale`` (default 100) that converts our
``[0, 1]`` scores to percent before applying ``alpha``.

Tree policy (``uct``/``puct``): descend from the virtual root; at every node, *expanding the node
again* is an action that competes with its children (:func:`expand_score`: the node's own score
plus an exploration bonus over how often it was expanded). Workflow search differs from games in
that a good program is usually improved by several successive edits of itself, and most edits make
it worse; with one-shot expansion (or progressive widening) the search walked away from its best
node after a few bad children. Back-up (:func:`backpropagate`) is ``mean`` (classic MCTS) or ``max``
(the best reward found below a node, the default of ``SearchConfig``): under ``mean`` a strong node's
value sinks with every failed mutation below it, and on calc the search stalled at the first
plateau (see ``benchmarks/bench_search.py`` and docs/search.md).

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


def expand_score(tree: Tree, node: int, method: str, c: float) -> float:
    """Score of the *expand-again* action at ``node``, competing with its children.

    Expansion is an action: its value is the node's own score (how good a starting point it is)
    and its visit count is how often the node was expanded, so a strong node keeps being
    re-expanded until one of its children looks better, while never-expanded nodes score +inf.
    Under PUCT the action gets the mean prior of the siblings-to-be (uniform over children + 1).
    """
    own = tree.own_score[node] or 0.0
    if method == PUCT:
        prior = 1.0 / (len(tree.children[node]) + 1)
        if tree.expansions[node] == 0:
            return math.inf
        return puct_value(own, prior, tree.expansions[node], tree.visits[node], c)
    return uct_value(own, tree.expansions[node], tree.visits[node], c)


def select_leaf(tree: Tree, method: str, c: float) -> int:
    """Descend from the virtual root to the node to expand next (``uct``/``puct`` methods).

    At each node the best of its children competes with :func:`expand_score`; the descent stops
    at the node whose expand action wins. Ties prefer expanding. The virtual root is never returned.
    """
    node = select_child(tree, ROOT_INDEX, method, c)
    while tree.children[node]:
        scores = child_scores(tree, node, method, c)
        best = max(range(len(scores)), key=lambda i: (scores[i], -i))
        if expand_score(tree, node, method, c) >= scores[best]:
            return node
        node = tree.children[node][best]
    return node


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


BACKUPS = ("mean", "max")
"""Back-propagation modes: ``mean`` (classic MCTS average) or ``max`` (best value found below)."""


def backpropagate(tree: Tree, node: int, value: float, visits: int = 1, mode: str = "mean") -> None:
    """Add ``visits`` with ``value`` to ``node`` and every ancestor (not the virtual root).

    ``mean``: ``value_sum += visits * value`` (Q = running mean). ``max``: Q becomes
    ``max(Q, value)`` and ``value_sum`` is kept equal to ``Q * visits`` so ``Q = value_sum / visits``
    holds in both modes (the stored columns mean the same thing).
    """
    while node != ROOT_INDEX:
        if mode == "max":
            best = max(tree.q(node), value)
            tree.visits[node] += visits
            tree.value_sum[node] = best * tree.visits[node]
        else:
            tree.visits[node] += visits
            tree.value_sum[node] += value * visits
        node = tree.parent[node]
