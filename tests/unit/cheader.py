"""A reader of bpf/rsttrace.h for unit tests: the members of a struct, the
values of an enum, the #defines with a prefix. Small on purpose: it reads
the subset of C that header is written in (fixed-width integer types,
arrays of them, comments), and fails loudly on anything else."""

from __future__ import annotations

import re
from pathlib import Path

HEADER = Path(__file__).resolve().parents[2] / "bpf" / "rsttrace.h"
SIZES = {"__u64": 8, "__u32": 4, "__u16": 2, "__u8": 1, "char": 1}


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def struct_members(text: str, name: str) -> list[tuple[str, str, int]]:
    """(C type, member, array count) of `struct name`, in order."""
    body = re.search(r"struct\s+" + name + r"\s*\{(.*?)\};", strip_comments(text), re.S)
    assert body, f"struct {name} not found"
    out = []
    for decl in body.group(1).split(";"):
        decl = " ".join(decl.split())
        if not decl:
            continue
        m = re.fullmatch(r"(\w+) (\w+)(?:\[(\d+)\])?", decl)
        assert m and m.group(1) in SIZES, f"cannot read member {decl!r}"
        out.append((m.group(1), m.group(2), int(m.group(3) or 1)))
    return out


def c_layout(members: list[tuple[str, str, int]]) -> tuple[dict[str, int], int]:
    """Offsets and size by C's rules (System V ABIs): a member at the next
    multiple of its type's alignment (its size, for these types), the
    struct padded to a multiple of its largest alignment."""
    at, widest, offsets = 0, 1, {}
    for ctype, name, count in members:
        align = SIZES[ctype]
        at = (at + align - 1) // align * align
        offsets[name] = at
        at += align * count
        widest = max(widest, align)
    return offsets, (at + widest - 1) // widest * widest


def enum_values(text: str, name: str) -> dict[str, int]:
    body = re.search(r"enum\s+" + name + r"\s*\{(.*?)\};", strip_comments(text), re.S)
    assert body, f"enum {name} not found"
    out = {}
    for item in body.group(1).split(","):
        item = item.strip()
        if item:
            m = re.fullmatch(r"(\w+)\s*=\s*(\w+)", item)
            assert m, f"enum {name}: give every value explicitly ({item!r})"
            out[m.group(1)] = int(m.group(2), 0)
    return out


def defines(text: str, prefix: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2), 0)
            for m in re.finditer(r"^#define\s+(" + prefix + r"\w*)\s+(\w+)", text, re.M)}
