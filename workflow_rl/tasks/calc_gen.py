"""Procedural generation of the built-in ``calc`` problems: families, recipes and phrasings.

A *family* is a kind of problem (arith, linear, stats, strings, units). A *recipe* is the operator
composition that solves a problem (``stats_median``, ``units_rev``, ...); each family has one or
more. Each recipe has *train phrasings* (used by train and validation) and *held-out phrasings*
(used only by test). Surface cues deliberately overlap across families ("What is", "How many",
"Find the", "total", "=", "number of") so that a keyword router learned on train/validation
phrasings mis-routes some test problems, while every problem stays solvable by its recipe.

Disjoint numbers across splits: every problem has an *operand key* (its numbers or word, without
the operation), and a stable hash of that key assigns it to exactly one split (60% train, 20%
validation, 20% test). A split only keeps problems whose key hashes to it, so no operand tuple is
shared between splits, whatever the seed or split sizes.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from fractions import Fraction

from operators.tools_numbers import evaluate_expression, format_number
from operators.tools_text import UNITS, convert_exact

FAMILIES = ("arith", "linear", "stats", "strings", "units")
"""Problem families, assigned round-robin inside each split."""

RECIPES: dict[str, tuple[str, ...]] = {
    "arith": ("arith",),
    "linear": ("linear",),
    "stats": ("stats_mean", "stats_median", "stats_max", "stats_min", "stats_sum"),
    "strings": ("str_reverse", "str_upper", "str_count"),
    "units": ("units", "units_rev"),
}
"""Recipes of each family (a recipe = one operator composition)."""

# Each phrasing is (train templates, held-out test templates).
PHRASINGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "arith": (
        ("What is {expr}?", "Compute {expr}.", "Calculate {words}.", "Evaluate {expr}."),
        ("{expr} = ?", "What is the total of {expr}?", "Find the value of {words}."),
    ),
    "linear": (
        ("Solve for x: {eq}.", "If {eq}, what is x?", "Find x when {eq}."),
        ("What value of x makes {eq} true?", "Given {eq}, find the number x."),
    ),
    "stats": (
        ("Find the {stat} of {list}.", "What is the {stat} of these numbers: {list}?", "Numbers: {list}. Give their {stat}."),
        ("Here are {n} numbers: {list}. What is their {stat}?", "Take {list} and report the {stat}."),
    ),
    "str_reverse": (
        ("Reverse the text '{word}'.", "Write '{word}' backwards."),
        ("What is '{word}' spelled from the last letter to the first?",),
    ),
    "str_upper": (
        ("Convert '{word}' to uppercase.", "Write '{word}' in capital letters."),
        ("What is '{word}' in upper case?",),
    ),
    "str_count": (
        ("How many times does '{char}' occur in '{word}'?", "Count the letter '{char}' in '{word}'."),
        ("What is the number of '{char}' letters in '{word}'?",),
    ),
    "units": (
        ("Convert {value} {src} to {dst}.", "{value} {src} is how many {dst}?", "Express {value} {src} in {dst}."),
        ("What is {value} {src} in {dst}?", "Change {value} {src} into {dst}."),
    ),
    "units_rev": (
        ("How many {dst} are in {value} {src}?",),
        ("Find the number of {dst} in {value} {src}.",),
    ),
}  # fmt: skip
"""Train and held-out phrasings per recipe (stats recipes share the ``stats`` phrasings)."""

STAT_WORDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "stats_mean": (("mean", "average"), ("average", "mean")),
    "stats_median": (("median",), ("median", "middle value")),
    "stats_max": (("largest", "maximum"), ("greatest", "highest")),
    "stats_min": (("smallest", "minimum"), ("least", "lowest")),
    "stats_sum": (("sum", "total"), ("total", "sum")),
}
"""Words naming each statistic: (train/validation words, test words, partly held out)."""

_ARITH_FORMS = (
    "{a} + {b} * {c}",
    "({a} + {b}) * {c}",
    "{a} * {b} - {c}",
    "{a} - {b} + {c}",
    "({a} - {b}) * {c}",
    "{a} * {b} + {c}",
    "{a} * {c} / {b} - {c}",
)
_SPOKEN = {"+": "plus", "-": "minus", "*": "times", "/": "divided by"}
_UNIT_PAIRS = (
    ("km", "m"),
    ("m", "cm"),
    ("cm", "mm"),
    ("kg", "g"),
    ("g", "mg"),
    ("h", "min"),
    ("min", "s"),
    ("l", "ml"),
)
_UNIT_NAMES = {
    "km": "kilometres", "m": "metres", "cm": "centimetres", "mm": "millimetres", "kg": "kilograms",
    "g": "grams", "mg": "milligrams", "h": "hours", "min": "minutes", "s": "seconds", "l": "litres",
    "ml": "millilitres",
}  # fmt: skip
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_SPLIT_BUCKETS = {"train": range(0, 6), "validation": range(6, 8), "test": range(8, 10)}


@dataclass(frozen=True)
class CalcItem:
    """One generated problem before it becomes a BenchProblem."""

    text: str
    answer: str
    family: str
    recipe: str
    phrasing: int  # index into the split's phrasing list (train or held-out)
    held_out: bool  # phrasing only used by the test split
    operand_key: str  # the numbers/word of the problem; decides its split


def split_of(operand_key: str) -> str:
    """The one split an operand key belongs to (stable hash, independent of seed and sizes)."""
    bucket = int(hashlib.sha1(operand_key.encode()).hexdigest(), 16) % 10
    return next(split for split, buckets in _SPLIT_BUCKETS.items() if bucket in buckets)


def _spoken(expr: str) -> str:
    return " ".join(_SPOKEN.get(tok, tok) for tok in expr.split())


def _number_list(rng: random.Random, values: list[int]) -> str:
    style = rng.randrange(3)
    if style == 0:
        return "[" + ", ".join(map(str, values)) + "]"
    if style == 1:
        return ", ".join(map(str, values))
    return ", ".join(map(str, values[:-1])) + f" and {values[-1]}"


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(rng.randint(2, 4)))


def _gen_arith(rng: random.Random, recipe: str) -> tuple[dict, str, str]:
    form = rng.choice(_ARITH_FORMS)
    a, b, c = rng.randint(2, 40), rng.randint(2, 12), rng.randint(2, 12)
    expr = form.format(a=a, b=b, c=c)
    fields = {"expr": expr, "words": _spoken(expr)}
    return fields, format_number(evaluate_expression(expr)), f"arith:{a},{b},{c}"


def _gen_linear(rng: random.Random, recipe: str) -> tuple[dict, str, str]:
    x, a = rng.choice([v for v in range(-12, 16) if v != 0]), rng.randint(2, 9)
    b = rng.choice([v for v in range(-20, 21) if v != 0])
    shape = rng.randrange(3)
    if shape == 0:
        eq = f"{a}x {'+' if b > 0 else '-'} {abs(b)} = {a * x + b}"
    elif shape == 1:
        eq = f"{a}x = {a * x}"
        b = 0
    else:
        d = rng.randint(1, a - 1) if a > 1 else 1
        eq = f"{a}x {'+' if b > 0 else '-'} {abs(b)} = {d}x + {(a - d) * x + b}"
        eq = eq.replace("+ -", "- ")
    return {"eq": eq}, str(x), f"linear:{a},{b},{x}"


def _gen_stats(rng: random.Random, recipe: str, held_out: bool) -> tuple[dict, str, str]:
    values = [rng.randint(1, 60) for _ in range(rng.randint(3, 6))]
    exact = sorted(Fraction(v) for v in values)
    mid = len(exact) // 2
    answer = {
        "stats_mean": sum(exact) / len(exact),
        "stats_median": exact[mid] if len(exact) % 2 else (exact[mid - 1] + exact[mid]) / 2,
        "stats_max": exact[-1],
        "stats_min": exact[0],
        "stats_sum": sum(exact),
    }[recipe]
    stat = rng.choice(STAT_WORDS[recipe][1 if held_out else 0])
    fields = {"list": _number_list(rng, values), "stat": stat, "n": len(values)}
    return fields, format_number(answer), "stats:" + ",".join(map(str, values))


def _gen_strings(rng: random.Random, recipe: str) -> tuple[dict, str, str]:
    word = _word(rng)
    char = rng.choice(word)
    answer = {"str_reverse": word[::-1], "str_upper": word.upper(), "str_count": str(word.count(char))}[
        recipe
    ]
    return {"word": word, "char": char}, answer, f"strings:{word}"


def _gen_units(rng: random.Random, recipe: str) -> tuple[dict, str, str]:
    big, small = rng.choice(_UNIT_PAIRS)
    downward = rng.random() < 0.6
    factor = UNITS[big][1] / UNITS[small][1]
    if downward:
        src, dst = big, small
        value = Fraction(rng.randint(1, 40)) if rng.random() < 0.5 else Fraction(rng.randint(1, 99), 10)
    else:
        src, dst = small, big
        # Whole or half multiples of the factor keep answers short ("2.5", not "0.0123").
        value = factor * rng.randint(1, 40) / 2
    answer = format_number(convert_exact(value, src, dst))
    named = rng.random() < 0.5
    fields = {
        "value": format_number(value),
        "src": _UNIT_NAMES[src] if named else src,
        "dst": _UNIT_NAMES[dst] if named else dst,
    }
    return fields, answer, f"units:{format_number(value)},{src},{dst}"


def _generate_one(rng: random.Random, recipe: str, held_out: bool) -> tuple[dict, str, str]:
    if recipe == "arith":
        return _gen_arith(rng, recipe)
    if recipe == "linear":
        return _gen_linear(rng, recipe)
    if recipe.startswith("stats_"):
        return _gen_stats(rng, recipe, held_out)
    if recipe.startswith("str_"):
        return _gen_strings(rng, recipe)
    return _gen_units(rng, recipe)


def phrasings_for(recipe: str, split: str) -> tuple[str, ...]:
    """Templates a split uses for a recipe: train phrasings, or held-out ones for test."""
    key = "stats" if recipe.startswith("stats_") else recipe
    train, held_out = PHRASINGS[key]
    return held_out if split == "test" else train


def generate_split(split: str, size: int, seed: int = 0) -> list[CalcItem]:
    """``size`` problems of ``split``, deterministic in (split, seed); families round-robin.

    The i-th problem does not depend on ``size`` (prefixes are stable), and every operand key
    belongs to this split (see :func:`split_of`), so splits never share numbers or words.
    """
    rng = random.Random(f"calc/{seed}/{split}")
    items: list[CalcItem] = []
    seen_keys: set[str] = set()
    counters = dict.fromkeys(FAMILIES, 0)
    held_out = split == "test"
    while len(items) < size:
        family = FAMILIES[len(items) % len(FAMILIES)]
        recipe = RECIPES[family][counters[family] % len(RECIPES[family])]
        templates = phrasings_for(recipe, split)
        for _attempt in range(10_000):
            fields, answer, operand_key = _generate_one(rng, recipe, held_out)
            phrasing = rng.randrange(len(templates))
            if operand_key in seen_keys or split_of(operand_key) != split:
                continue
            text = templates[phrasing].format(**fields)
            break
        else:  # pragma: no cover - the operand spaces are far larger than any split
            raise RuntimeError(f"calc: cannot draw a fresh {recipe} problem for {split}")
        seen_keys.add(operand_key)
        counters[family] += 1
        items.append(CalcItem(text, answer, family, recipe, phrasing, held_out, operand_key))
    return items
