"""Warm-start corpus of the built-in tiny policy: valid operator pipelines, answer-free.

A base model should know how to *write* a workflow program and have a broad prior over which
operators to chain, but not know which pipeline solves which problem (that is what RL must
learn). So every document is ``policy prompt of a RANDOM train problem + a random, type-checked
pipeline``: the pipeline is drawn from the operator signatures alone (an extractor whose input is
the problem text, then an operator that takes the extractor's output type; multi-input operators
get every argument from indexed extractors), independently of the problem it is paired with.
The benchmark's oracle/recipe mapping is never used, nor validation or test problems.
Deterministic for a seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from search.proposers.signatures import OpSignature, load_signatures

EXTRACT_PREFIX = "extract_"
"""Operators named ``extract_*`` read the problem text (the first step of a pipeline)."""

VAR_NAMES = {"list": "values", "str": "text", "number": "value", "int": "count"}
"""Variable name per extractor output type (one name per type keeps the syntax easy to learn)."""


def _header() -> str:
    return "async def solve(problem, ops):\n"


def _extractors(sigs: dict[str, OpSignature]) -> list[str]:
    return [n for n, s in sigs.items() if n.startswith(EXTRACT_PREFIX) and s.unary_from("str")]


def two_step_programs(sigs: dict[str, OpSignature]) -> list[str]:
    """``x = extract(problem); return op(x)`` for every extractor and every operator taking ``x``."""
    out = []
    for ext in _extractors(sigs):
        typ = sigs[ext].returns
        var = VAR_NAMES.get(typ, "x")
        for name, sig in sigs.items():
            if name.startswith(EXTRACT_PREFIX) or not sig.unary_from(typ):
                continue
            out.append(f"{_header()}    {var} = await ops.{ext}(problem)\n    return await ops.{name}({var})\n")
    return out


def multi_arg_programs(sigs: dict[str, OpSignature]) -> list[str]:
    """Operators with several required inputs, every input read from the problem text.

    Inputs of one type share one extractor with distinct indices: a list extractor gives
    ``items[0], items[1]``, an extractor with an ``int`` second parameter gives
    ``ops.extract(problem, 0)``, ...; a lone input takes a scalar extractor of its type. Both
    index orders are produced (which order is right depends on the problem: RL's job).
    """
    out = []
    extractors = _extractors(sigs)
    for name, sig in sigs.items():
        required = [t for _, t, has_default in sig.params if not has_default]
        if name.startswith(EXTRACT_PREFIX) or len(required) < 2:
            continue
        groups: dict[str, list[int]] = {}
        for i, typ in enumerate(required):
            groups.setdefault(typ, []).append(i)
        # Per type group: candidate (setup lines, argument expressions in group order).
        options: list[list[tuple[list[str], dict[int, str]]]] = []
        for typ, idxs in groups.items():
            opts: list[tuple[list[str], dict[int, str]]] = []
            for ext in extractors:
                esig = sigs[ext]
                indexed = len(esig.params) >= 2 and esig.params[1][1] == "int"
                if len(idxs) == 1 and esig.returns == typ:
                    var = VAR_NAMES.get(typ, "x")
                    opts.append(([f"    {var} = await ops.{ext}(problem)\n"], {idxs[0]: var}))
                elif len(idxs) == 2 and esig.returns == "list":
                    for order in ((0, 1), (1, 0)):
                        opts.append(([f"    items = await ops.{ext}(problem)\n"],
                                     {i: f"items[{k}]" for i, k in zip(idxs, order, strict=True)}))
                elif len(idxs) == 2 and indexed and esig.returns == typ:
                    for order in ((0, 1), (1, 0)):
                        opts.append(([], {i: f"await ops.{ext}(problem, {k})" for i, k in zip(idxs, order, strict=True)}))
            options.append(opts)
        out += _combine(name, len(required), options)
    return out


def _combine(name: str, n_args: int, options: list[list[tuple[list[str], dict[int, str]]]]) -> list[str]:
    """One program per choice of option in every type group."""
    programs = []

    def rec(k: int, setup: list[str], args: dict[int, str]) -> None:
        if k == len(options):
            call = f"    return await ops.{name}({', '.join(args[i] for i in range(n_args))})\n"
            programs.append(_header() + "".join(setup) + call)
            return
        for lines, assigned in options[k]:
            rec(k + 1, setup + lines, {**args, **assigned})

    rec(0, [], {})
    return programs


def pipeline_programs(operator_names: Iterable[str]) -> list[str]:
    """Every corpus program for these operators (sorted, unique)."""
    sigs = load_signatures(tuple(operator_names))
    return sorted(set(two_step_programs(sigs) + multi_arg_programs(sigs)))


def warm_start_documents(
    prompt_for, problems: list[str], operator_names: Iterable[str], n_documents: int, seed: int = 0,
) -> list[str]:
    """``prompt_for(random problem) + random pipeline`` documents (problem and pipeline independent).

    Programs are drawn round-robin over a shuffled list so each appears about equally often.
    """
    programs = pipeline_programs(operator_names)
    if not programs or not problems:
        return []
    rng = random.Random(f"tiny-corpus:{seed}")
    docs = []
    order: list[str] = []
    for _ in range(n_documents):
        if not order:
            order = programs[:]
            rng.shuffle(order)
        docs.append(prompt_for(rng.choice(problems)) + order.pop())
    return docs
