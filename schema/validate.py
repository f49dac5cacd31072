"""The reader's table (kind -> field -> type), made from the field catalog
(rsttrace.schema.catalog), and the decoders that read each recorded line
against it.

A recording is data from wherever it came from: a field holding a string
where a number belongs, a list where a name belongs, a bool where a port
belongs, a time in the year 30000 or a port of 70000 would otherwise reach
the classifier, the CSV and the screen. msgspec decodes a line and checks
every field of the table in one pass in C, at about the cost of decoding
alone (reports read millions of records), and refuses what JSON itself does
not allow: NaN, Infinity, invalid UTF-8, lone surrogates.

A record keeps the fields of the table: a field it lacks stays missing (the
field's value is unknown), a field the table does not name is dropped. The
header and the totals line keep every field; the ones named here are
checked.
"""

from __future__ import annotations

import re
from typing import Any, Union

import msgspec
from msgspec import UNSET, UnsetType

from . import catalog
from .catalog import obj

# ---- the table -------------------------------------------------------------
# kind -> {field: type}. Every record has `kind` (the key of this table) and
# `t`; any other field may be missing.
RECORDS: dict[str, dict[str, Any]] = {
    k.name: {f.name: f.type for f in k.fields if f.name != "kind"} for k in catalog.RECORDS}
NAMESPACE = {f.name: f.type for f in catalog.NAMESPACE}
HEADER = {f.name: f.type for f in catalog.HEADER}
TOTALS = {f.name: f.type for f in catalog.TOTALS}


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
