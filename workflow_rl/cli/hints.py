"""What to say when ``workflow-rl sql`` finds no rows for a run name that is not what the user meant.

Only the shapes ``run = '...'``, ``loop = '...'`` and ``name = '...'`` (any case) are read from the
statement; this is a hint on an empty result, never a rewrite of the query.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Mapping

_NAMED = re.compile(r"\b(run|loop|name)\s*=\s*'((?:[^']|'')*)'", re.IGNORECASE)


def named_runs(query: str) -> list[tuple[str, str]]:
    """``(column, literal)`` for each ``run|loop|name = '<literal>'`` in ``query`` (SQL quotes undone)."""
    return [(m.group(1).lower(), m.group(2).replace("''", "'")) for m in _NAMED.finditer(query)]


def empty_result_hints(query: str, names: Collection[str], rounds: Mapping[str, list[str]]) -> list[str]:
    """One line per run name in ``query`` that explains an empty result.

    ``names`` are the stored run names; ``rounds`` maps a loop's name to its round runs' names.
    A loop named with ``run =`` holds no workflows itself (its rounds do); an unknown name gets the
    closest stored names.
    """
    hints = []
    for column, literal in named_runs(query):
        # Kept short: a hint should fit one 80-column line for the usual short run names.
        if column == "run" and rounds.get(literal):
            hints.append(f"hint: {literal!r} is a loop; its rows are in its rounds {rounds[literal][0]}, ...: "
                         f"use loop = '{literal}'")
        elif literal not in names:
            close = difflib.get_close_matches(literal, list(names), n=3, cutoff=0.6)
            listed = f"; close names: {', '.join(close)}" if close else "; see workflow-rl runs"
            hints.append(f"hint: no run is named {literal!r}{listed}")
    return hints
