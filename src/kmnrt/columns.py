"""Aligned columns for terminal tables (export's summary, bench's results): markdown tables wrap in a terminal."""

from __future__ import annotations

from collections.abc import Sequence


def aligned_columns(rows: Sequence[Sequence[str]], right_from: int | None = None) -> list[str]:
    """The header row, a dashed rule, then the other rows, each column as wide as its widest cell; columns from
    index ``right_from`` on (numbers) are right-aligned, the others left-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def line(row: Sequence[str]) -> str:
        right = right_from if right_from is not None else len(widths)
        return "  ".join(cell.rjust(width) if i >= right else cell.ljust(width)
                         for i, (cell, width) in enumerate(zip(row, widths))).rstrip()

    return [line(rows[0]), "  ".join("-" * width for width in widths), *(line(row) for row in rows[1:])]
