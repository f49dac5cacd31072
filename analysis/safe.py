"""Strings from the traced host are data: never formulas, never markup.

A process name or a namespace name is chosen by whoever runs on the host,
so a CSV cell starting with `=`, `+`, `-`, `@`, tab or CR would run as a
formula in a spreadsheet, and control characters would drive the terminal.
"""

from __future__ import annotations

import re
from typing import Any

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def neutralise(cell: Any) -> Any:
    """A leading quote makes a spreadsheet show the cell as text."""
    if isinstance(cell, str) and cell.startswith(FORMULA_START):
        return "'" + cell
    return cell


def has_control(text: str) -> bool:
    return _CONTROL.search(text) is not None


def csv_text(cell: str) -> str:
    """A host string as a CSV cell value: formula-safe, and on one line
    (a CR inside a cell would split the row for many readers)."""
    cell = neutralise(cell)
    return printable(cell) if _CONTROL.search(cell) else cell


def printable(text: Any) -> str:
    """Control characters (ANSI escapes, newlines inside a name) shown as \\xNN."""
    s = str(text)
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", s)
