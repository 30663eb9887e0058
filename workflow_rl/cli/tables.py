"""Tables that fit the terminal: ``runs`` and ``sql`` print within its width (80 columns when piped).

Columns are kept left to right while each can still show a readable part of its values; wide text
columns are shortened (ending in an ellipsis) widest first, and the columns that do not fit at all
are left out and named under the table. ``--wide`` prints every column in full instead.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

MIN_SHOWN = 10
"""A kept column is never narrower than this (or its header, or its widest value, if smaller)."""

MIN_FOLDED = 20
"""The same floor for a column whose long values fold onto more lines (e.g. run names)."""

_PER_COLUMN = 2
"""Characters a column costs besides its text: the two spaces that separate it from the next one."""


def cell(value: Any) -> str:
    """Render one value: NULL for None, 4 significant digits for floats."""
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _numeric(texts: list[str]) -> bool:
    """Whether a column holds numbers only (NULL and "-" aside): those are right-aligned."""
    present = [t for t in texts if t not in ("NULL", "-")]
    try:
        [float(t) for t in present]
    except ValueError:
        return False
    return bool(present)


def _width(text: str) -> int:
    """Printed width of a value: its longest line (code keeps its line breaks)."""
    return max((len(line) for line in text.splitlines()), default=0)


def natural_widths(headers: Sequence[str], texts: Sequence[Sequence[str]]) -> list[int]:
    """Width of each column with nothing shortened."""
    return [max([len(h), *(_width(row[i]) for row in texts)]) for i, h in enumerate(headers)]


def fit_widths(
    headers: Sequence[str], texts: Sequence[Sequence[str]], width: int, fold: Collection[str] = (),
) -> list[int]:
    """Width of each column that is kept (a prefix of ``headers``) so that the table fits ``width``.

    Each kept column gets at least ``min(its natural width, max(len(header), MIN_SHOWN))`` (``MIN_FOLDED``
    for the columns in ``fold``, which must stay whole); the rest of the room goes to the natural
    widths, the widest columns giving way first.
    """
    natural = natural_widths(headers, texts)
    floor = [min(n, max(len(h), MIN_FOLDED if h in fold else MIN_SHOWN))
             for n, h in zip(natural, headers, strict=True)]
    kept = 0
    while kept < len(headers) and sum(floor[: kept + 1]) + _PER_COLUMN * (kept + 1) <= width:
        kept += 1
    kept = max(kept, 1)  # a single column wider than the terminal is still shown (shortened)
    widths = natural[:kept]
    room = width - _PER_COLUMN * kept
    while sum(widths) > room:
        i = max(range(kept), key=lambda j: widths[j] - floor[j])
        if widths[i] <= floor[i]:
            break  # every column is at its floor: only a lone over-wide column gets here
        widths[i] -= 1
    if kept == 1:
        widths[0] = max(1, min(widths[0], room))
    return widths


def print_table(
    console: Console, headers: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str | None = None,
    wide: bool = False, fold: Collection[str] = (),
) -> None:
    """Print ``rows`` as a table within the console's width (every column in full with ``wide``).

    Values too long for their column end in an ellipsis, except in the columns named in ``fold``:
    those continue on the next lines (a name is only useful whole).
    """
    texts = [[cell(v).rstrip() for v in row] for row in rows]  # code ends in a newline: no blank line
    if wide:
        widths = natural_widths(headers, texts)
        console = Console(width=max(console.width, sum(widths) + _PER_COLUMN * len(widths)), soft_wrap=False,
                          file=console.file)
    else:
        widths = fit_widths(headers, texts, console.width, fold)
    # Header rule only, no vertical lines; collapse_padding leaves two spaces between columns.
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    for i, width in enumerate(widths):
        numeric = _numeric([row[i] for row in texts])
        folds = headers[i] in fold
        table.add_column(Text(headers[i]), justify="right" if numeric else "left", no_wrap=not folds,
                         overflow="fold" if folds else "ellipsis", max_width=width, min_width=min(width, len(headers[i])))
    for row in texts:
        table.add_row(*(Text(t) for t in row[: len(widths)]))  # Text: a value is never read as markup
    console.print(table)
    if not rows:
        console.print("(no rows)")
    left_out = list(headers[len(widths):])
    if left_out:
        console.print(Text(f"({len(left_out)} more column{'s' if len(left_out) > 1 else ''} not shown: "
                           f"{', '.join(left_out)}; --wide shows every column)"))
