"""Strings from the traced host are data: never formulas, never markup,
never terminal commands.

A process name, a namespace name, a mount path or a recording's field is
chosen by whoever runs on the host or wrote the file, so a CSV cell starting
with `=`, `+`, `-`, `@`, tab or CR would run as a formula in a spreadsheet,
and an escape sequence would drive the terminal it is printed on (OSC 52
writes the clipboard, OSC 8 makes links, `ESC [ 2 J` clears the screen, a
C1 byte such as 0x9b starts a sequence on its own, a bidi override reorders
what is shown). `printable` is the one sanitiser: every host string shown
on a terminal, in a report or a CSV cell goes through it, and `SafeStream`
puts everything the command line prints through it too.
"""

from __future__ import annotations

from typing import Any, TextIO

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise(cell: Any) -> Any:
    """A leading quote makes a spreadsheet show the cell as text."""
    if isinstance(cell, str) and cell.startswith(FORMULA_START):
        return "'" + cell
    return cell


def has_control(text: str) -> bool:
    """Whether `printable` would change the text."""
    return not text.isprintable()


def csv_text(cell: str) -> str:
    """A host string as a CSV cell value: formula-safe, and on one line
    (a CR inside a cell would split the row for many readers)."""
    cell = neutralise(cell)
    return cell if cell.isprintable() else printable(cell)


def _escape(ch: str) -> str:
    o = ord(ch)
    if 0xDC80 <= o <= 0xDCFF:
        return f"\\x{o - 0xDC00:02x}"   # a byte that was not UTF-8 (surrogateescape)
    if o < 0x100:
        return f"\\x{o:02x}"
    return f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"


def printable(text: Any, keep: str = "") -> str:
    """The text with every character Python does not call printable shown
    as an escape: controls (ESC, BEL, C1), format characters (bidi
    overrides, zero-width ones), separators other than the space, lone
    surrogates (a byte that was not UTF-8 shows as \\xNN). Characters in
    `keep` (a newline in a multi-line text) are left as they are."""
    s = text if isinstance(text, str) else str(text)
    if s.isprintable():
        return s
    return "".join(ch if ch.isprintable() or ch in keep else _escape(ch) for ch in s)


class SafeStream:
    """A text stream that prints through `printable`, keeping newlines,
    carriage returns (progress lines) and tabs: what the command line
    writes to a terminal cannot carry a sequence from a host string, and a
    lone surrogate cannot stop a print with an encoding error."""

    KEEP = "\n\r\t"

    def __init__(self, raw: TextIO):
        self.raw = raw

    def write(self, s: str) -> int:
        text = printable(s, self.KEEP)
        try:
            self.raw.write(text)
        except UnicodeEncodeError:      # a terminal that cannot show a printable character
            enc = getattr(self.raw, "encoding", None) or "ascii"
            self.raw.write(text.encode(enc, "backslashreplace").decode(enc))
        return len(s)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)
