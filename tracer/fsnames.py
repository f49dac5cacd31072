"""Names from the file system as text that any JSON reader accepts.

A namespace name (/run/netns/NAME), a mount point or a directory name is a
string of bytes, not necessarily UTF-8: `ip netns add $'rt\\xff'` works.
Python hands such a name over with each undecodable byte as a lone
surrogate (PEP 383, "surrogateescape"), which strict encoders refuse
(msgspec, `str.encode()`, a Prometheus page) and a JSON file must not hold.
Where a name leaves for records, labels or the terminal it is `text(name)`:
valid UTF-8 with each undecodable byte written as `\\xNN` (the form
`ip netns exec $'rt\\xff'` takes in bash). Names that are valid UTF-8 stay as
they are, so the escaped form can be mistaken for a valid name spelled with
a backslash: it names a namespace for people; what rsttrace acts on is
found on the host again (by inode and cookie, tracer/netnsid.py) with its
real bytes. The real name (with surrogates) stays in paths.
"""

from __future__ import annotations

import os
import re

_OCTAL = re.compile(rb"\\([0-7]{3})")


def text(name: str) -> str:
    """`name` (as Python read it from the file system) as valid UTF-8 text."""
    if name.isascii():
        return name
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")


def mountinfo_path(field: bytes) -> str:
    """A path field of /proc/*/mountinfo as a path Python can open: the
    kernel writes space, tab, newline and backslash as octal escapes
    (\\040) and every other byte as it is, UTF-8 or not."""
    return os.fsdecode(_OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), field))
