"""Benchmark options from the command line: ``--benchmark-option KEY=VALUE`` and ``--data PATH``.

Options are kept as the strings the user typed (``{"path": "/abs/gsm8k.jsonl", "seed": "3"}``) so
that they can be stored in ``runs.config`` as JSON and reused by ``eval`` and by a resumed search.
:func:`build_benchmark` converts each value to the type of the factory parameter it sets (the
parameter's default decides: int, float, bool, a tuple of numbers such as ``fractions=0.5,0.2,0.3``,
else text), so ``calc``'s ``seed=3`` arrives as an int and a JSONL benchmark's ``path`` as a str.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from typing import Any

from workflow_rl.errors import WorkflowRLError
from workflow_rl.tasks import BENCHMARKS, Benchmark, _factory, get_benchmark

PATH_KEYS = frozenset({"path"})
"""Options holding a file path: stored absolute, so ``eval`` from another directory finds the file."""

FIXED_PARAMETERS = frozenset({"name", "task_type", "description", "operator_names"})
"""Benchmark fields that identify it: never settable as options (a run is tied to its benchmark)."""

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_benchmark_options(items: Sequence[str] | None, data: str | None = None) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` plus ``--data PATH`` (= ``path=PATH``) as a dict of strings.

    Raises :class:`WorkflowRLError` (one line: the bad item and the expected form) for an item
    without ``=``, a key that is not an identifier, or a key given twice.
    """
    options: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise WorkflowRLError(f"--benchmark-option {item!r}: use KEY=VALUE, e.g. --benchmark-option "
                                  "path=data/gsm8k.jsonl or --benchmark-option seed=3")
        if key in options:
            raise WorkflowRLError(f"--benchmark-option {key}= is given twice; give each option once")
        options[key] = value
    if data is not None:
        if "path" in options:
            raise WorkflowRLError("--data and --benchmark-option path= both name the file; give one of them")
        options["path"] = data
    for key in PATH_KEYS & set(options):
        if not options[key]:
            raise WorkflowRLError(f"--benchmark-option {key}= is empty; give the file, e.g. --data data/gsm8k.jsonl")
        options[key] = os.path.abspath(os.path.expanduser(options[key]))
    return options


def _coerce(benchmark: str, key: str, value: str, param: inspect.Parameter) -> Any:
    """``value`` converted to the type of the parameter's default (see the module docstring)."""
    default = param.default
    def bad(kind: str) -> WorkflowRLError:
        """The error for a value that is not of the option's kind."""
        return WorkflowRLError(f"benchmark {benchmark!r}: option {key}={value!r} must be {kind}")

    if isinstance(default, bool):
        if value.strip().lower() not in _TRUE + _FALSE:
            raise bad("true or false")
        return value.strip().lower() in _TRUE
    if isinstance(default, int):
        try:
            return int(value)
        except ValueError:
            raise bad("an integer") from None
    if isinstance(default, float):
        try:
            return float(value)
        except ValueError:
            raise bad("a number") from None
    if isinstance(default, (tuple, list)) and all(isinstance(x, (int, float)) for x in default):
        try:
            return tuple(float(x) for x in value.split(","))
        except ValueError:
            raise bad("comma-separated numbers, e.g. 0.5,0.2,0.3") from None
    mapping = "dict" in str(param.annotation) or "Mapping" in str(param.annotation)
    if not mapping and (default is None or default is inspect.Parameter.empty or isinstance(default, str)):
        return value
    raise WorkflowRLError(f"benchmark {benchmark!r}: option {key!r} cannot be set from the command line")


def build_benchmark(name: str, options: Mapping[str, str] | None = None) -> Benchmark:
    """``get_benchmark(name, **options)`` with each string option converted to its parameter's type.

    Raises :class:`WorkflowRLError` for an unknown benchmark, an option the benchmark does not take
    (listing the ones it does), a value of the wrong kind, or whatever the benchmark itself refuses
    (a missing file, the first bad JSONL line, ...).
    """
    options = dict(options or {})
    if name not in BENCHMARKS or not options:
        return get_benchmark(name, **options)
    params = inspect.signature(_factory(name)).parameters
    free = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    settable = [p for p in params if not p.startswith("_") and p not in FIXED_PARAMETERS
                and params[p].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    values: dict[str, Any] = {}
    for key, value in options.items():
        if key in settable:
            values[key] = _coerce(name, key, value, params[key])
        elif free and not key.startswith("_"):
            values[key] = value  # passed through; the factory checks it
        else:
            raise WorkflowRLError(f"benchmark {name!r} has no option {key!r}; its options: "
                                  f"{', '.join(settable) or 'none'}")
    return get_benchmark(name, **values)
