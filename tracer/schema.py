"""The record layout of docs/EVENTS.md as one table (field -> type), and
the decoder that reads each recorded line against it.

A recording is data from wherever it came from: a field holding a string
where a number belongs, a list where a name belongs, a bool where a port
belongs, a time in the year 30000 or a port of 70000 would otherwise reach
the classifier, the CSV and the screen. msgspec decodes a line and checks
every field of the table in one pass in C, at about the cost of decoding
alone (reports read millions of records), and refuses what JSON itself does
not allow: NaN, Infinity, invalid UTF-8, lone surrogates.

A record keeps the fields of the table: a field it lacks stays missing (the
field's value is unknown), a field the table does not name is dropped. A
new field written by the tracer therefore goes into this table too (a unit
test holds the reset fields of tracer/events.py to it). The header and the
totals line keep every field; the ones named here are checked.

This module imports nothing of the tracer (no bcc, no numpy): the analysis
may import it, like the recording reader beside it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

import msgspec
from msgspec import UNSET, Meta, UnsetType

# Unix seconds below 2**33 (the year 2242): inside every time type the
# reports convert to (pandas' nanosecond datetimes end in 2262).
TIME_MAX = 2.0 ** 33
# msgspec bounds integers within int64; kernel u64 values (socket cookies,
# cgroup ids) stay far below 2**63.
_INT_MAX = 2 ** 63 - 1


def _uint(bits: int) -> Any:
    # integers come from unsigned kernel fields of these widths
    return Annotated[int, Meta(ge=0, le=min(2 ** bits - 1, _INT_MAX))]


U8, U16, U32, U64 = _uint(8), _uint(16), _uint(32), _uint(64)
NUM = Union[U64, Annotated[float, Meta(ge=0, lt=2.0 ** 63)]]     # an int stays an int
TIME = Annotated[float, Meta(ge=0, lt=TIME_MAX)]
INODE_KEY = Annotated[str, Meta(pattern="^[0-9]+$")]

def obj(name: str, fields: dict[str, Any], tag: str | None = None) -> Any:
    """An object with these fields, each of which may be missing; with
    `tag`, a record whose `kind` is `tag`. Other members are ignored."""
    return msgspec.defstruct(name, [(k, t | UnsetType, UNSET) for k, t in fields.items()],
                             tag_field="kind" if tag else None, tag=tag, kw_only=True, gc=False)


# ---- the table -------------------------------------------------------------
# kind -> {field: type}. Every record has `kind` (the key of this table) and
# `t`; any other field may be missing.
RULE = {
    "source": Literal["nft", "iptables"], "family": str, "table": str, "chain": str,
    "handle": U64 | None, "text": str, "packets": U64 | None,
}
NAMESPACE = {
    "netns": U32, "name": str | None, "ct": dict[str, U64] | None,
    "sysctl": dict[str, NUM] | None, "ipvs": dict[str, NUM] | None,
    "nat": bool | None, "tcp_sockets": U64 | None, "cookie": U64 | None,
    "rules": list[obj("Rule", RULE)] | None,   # type: ignore[misc]
}

RECORDS: dict[str, dict[str, Any]] = {
    "reset": {
        "t": TIME, "dir": Literal["sent", "recv"], "netns": U32, "family": Literal[4, 6],
        "src": str, "sport": U16, "dst": str, "dport": U16,
        "state": str, "state_raw": U8, "reason": str | None, "reason_raw": U32 | None,
        "has_sock": bool, "cookie": U64 | None, "syn": bool | None, "trigger_flags": U8 | None,
        "idle_ms": U64 | None, "keepalive": bool | None, "ka_time_s": U32 | None,
        "ka_intvl_s": U32 | None, "ka_probes": U8 | None, "ka_per_socket": bool | None,
        "dev_netns": U32 | None, "pid": U32 | None, "comm": str | None, "cgroup": U64 | None,
        "cgroup_of": Literal["owner", "socket"] | None, "pod": str | None,
    },
    "ct_drop": {"t": TIME, "netns": U32 | None, "reason": str | None, "reason_raw": U32 | None,
                "protocol": U16 | None, "family": Literal[4, 6] | None, "src": str | None,
                "sport": U16 | None, "dst": str | None, "dport": U16 | None, "tcp_flags": U8 | None},
    "ct_full": {"t": TIME, "netns": U32 | None, "text": str | None},
    "ipvs_expire": {
        "t": TIME, "netns": U32 | None, "protocol": U16 | None, "client": str | None,
        "cport": U16 | None, "vaddr": str | None, "vport": U16 | None, "daddr": str | None,
        "dport": U16 | None, "state": str | None, "state_raw": U16 | None,
    },
    "ct_alloc_fail": {"t": TIME, "netns": U32 | None, "errno": U32 | None},
    "ctx": {"t": TIME, "namespaces": list[obj("Namespace", NAMESPACE)]},   # type: ignore[misc]
}

HEADER = {
    "schema": U32, "t": TIME, "host": str | None, "kernel": str | None, "tool": str | None,
    "hz": U32 | None, "transport": str | None, "headers": str | None, "hooks": str | None,
    "attach_s": NUM | None, "mem_total": U64 | None,
    "plan": dict[str, obj("PlanEntry", {"hook": str | None, "available": bool,   # type: ignore[misc]
                                        "why": str | None})] | None,
    "filters": obj("Filters", {"ports": list[U16], "netns": list[U32]}) | None,
    "netns_names": dict[INODE_KEY, str] | None,
    "netns_cookies": dict[INODE_KEY, U64 | None] | None,
}

TOTALS = {
    "t": TIME | None, "events": U64 | None, "lost": U64 | None, "rescued": U64 | None,
    "kernel_events": U64 | None, "by_kind": dict[str, U64] | None, "duration_s": NUM | None,
    "burst_held": U64 | None, "burst_peak_mb": NUM | None, "burst_note": str | None,
}


def _record(kind: str, fields: dict[str, Any]) -> Any:
    # `t` is required: a record without a time cannot be placed
    members = [("t", fields["t"])] + [(k, t | UnsetType, UNSET) for k, t in fields.items() if k != "t"]
    return msgspec.defstruct(f"R_{kind}", members, tag_field="kind", tag=kind, kw_only=True, gc=False)


_RECORD = msgspec.json.Decoder(Union[tuple(_record(k, f) for k, f in RECORDS.items())])  # type: ignore[misc]
_HEADER = msgspec.json.Decoder(obj("Header", HEADER, tag="header"))
_TOTALS = msgspec.json.Decoder(obj("Totals", TOTALS, tag="totals"))

#: Errors of the decoders. A RecursionError is msgspec's answer to nesting
#: deeper than Python's recursion limit in a field the table does not name.
ERRORS = (msgspec.MsgspecError, RecursionError)
to_builtins = msgspec.to_builtins


def decode_record(line: bytes) -> dict[str, Any]:
    """The record on one line, as a dict of the table's fields; raises one
    of ERRORS when the line is not JSON or not a valid record."""
    return to_builtins(_RECORD.decode(line))


def decode_records(lines: list[bytes]) -> list[dict[str, Any]]:
    """`decode_record` of each line (one call for a block of lines); raises
    one of ERRORS when any of them fails (then take them one by one)."""
    return to_builtins(list(map(_RECORD.decode, lines)))


def decode_any(line: bytes) -> Any:
    """The line as plain JSON, checked against nothing; raises ERRORS."""
    return msgspec.json.decode(line)


def header_problem(line: bytes) -> str | None:
    return _problem(_HEADER, line)


def totals_problem(line: bytes) -> str | None:
    return _problem(_TOTALS, line)


def _problem(decoder: Any, line: bytes) -> str | None:
    try:
        decoder.decode(line)
    except ERRORS as e:
        return why(e)
    return None


def not_json(e: BaseException) -> bool:
    """The line is not JSON at all (cut, damaged), rather than a JSON value
    that does not fit the table."""
    return isinstance(e, msgspec.DecodeError) and not isinstance(e, msgspec.ValidationError)


def why(e: BaseException) -> str:
    """A decoder's error in words for a warning: the field first
    (`sport: expected `int` <= 65535`), at most 120 characters (an error
    can quote a value from the file)."""
    if isinstance(e, RecursionError):
        return "nested too deep"
    msg = str(e)
    if isinstance(e, msgspec.ValidationError):
        m = re.fullmatch(r"(.*) - at `(.*)`", msg, re.S)
        text, where = (m.group(1), m.group(2).replace("`", "").replace("$.", "").replace("$", "")) \
            if m else (msg, "")
        text = text[:1].lower() + text[1:]
        if where == "t" and re.match(r"expected `float` [<>]", text):
            # a number that is no time a recording can hold (before 1970, past 2242)
            text = "time out of range (" + text + ")"
        msg = f"{where}: {text}" if where else text
    else:
        msg = msg.removeprefix("JSON is ")
        msg = f"not valid JSON ({msg[:1].lower()}{msg[1:]})"
    return msg if len(msg) <= 120 else msg[:117] + "..."
