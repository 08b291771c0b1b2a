"""One way to show figures: the same rows as a terminal table (rich) or as a markdown table, and a
command's own section of a markdown file (docs/benchmarks.md) replaced in place."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from rich.table import Table


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]], right: Iterable[int] = ()) -> Table:
    """``right``: indexes of the columns to right-align (figures)."""
    out = Table(title=title, title_justify="left")
    aligned = set(right)
    for i, column in enumerate(columns):
        out.add_column(column, justify="right" if i in aligned else "left")
    for row in rows:
        out.add_row(*row)
    return out


def yes(met: object) -> str:
    """A goal or a check in a report: "yes", or a "NO" that stands out."""
    return "yes" if met else "NO"


def markdown(columns: Sequence[str], rows: Iterable[Sequence[str]], right: Iterable[int] = ()) -> list[str]:
    aligned = set(right)
    return ["| " + " | ".join(columns) + " |",
            "|" + "|".join("---:" if i in aligned else "---" for i in range(len(columns))) + "|",
            *("| " + " | ".join(row) + " |" for row in rows)]


def write_section(path: Path, section: str, start: str, end: str) -> None:
    """Replace the section between ``start`` and ``end`` (a command's own), keeping every other section."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        text = text[: text.index(start)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)
