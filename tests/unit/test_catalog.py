"""The field catalog's own rules, checked over every field: what the
kernel can put in a member, the reader accepts; a name decoded from a
kernel table has its raw number beside it; every report column shows a
field or says where it comes from."""

from __future__ import annotations

import types
from typing import Annotated, Literal, Union, get_args, get_origin

import msgspec
import pytest

from rsttrace.schema import catalog as cat
from rsttrace.schema import validate

EVENT_FIELDS = [(k, f) for k in cat.EVENTS for f in k.fields]


def _max_int(t) -> int | None:
    """The largest int the type accepts (None: no int)."""
    if get_origin(t) in (Union, types.UnionType):
        vals = [m for a in get_args(t) if (m := _max_int(a)) is not None]
        return max(vals) if vals else None
    if get_origin(t) is Annotated:
        base, *metas = get_args(t)
        if base is int:
            return min(m.le for m in metas if isinstance(m, msgspec.Meta) and m.le is not None)
    return None


def test_a_member_decoded_as_it_is_fits_the_type():
    for kind, f in EVENT_FIELDS:
        if f.decode.op == "int":
            widest = 2 ** (8 * cat.MEMBERS[f.c].size) - 1
            assert _max_int(f.type) >= min(widest, 2 ** 63 - 1), \
                f"{kind.name}.{f.name} refuses values {f.c} can hold"


def test_names_from_kernel_tables_keep_the_raw_number_beside():
    named = [(k, f) for k, f in EVENT_FIELDS if f.decode.op == "names"]
    assert len(named) == 4
    for kind, f in named:
        raw = kind[f.raw]
        assert raw.c == f.c and raw.decode.op == "int", f"{kind.name}.{f.name}"


def test_a_field_that_can_be_null_says_so():
    for kind, f in EVENT_FIELDS:
        if f.when or f.decode.op in ("null", "full_netns", "pod", "text"):
            assert type(None) in get_args(f.type), f"{kind.name}.{f.name} is null at times, its type refuses null"


def test_enum_names_are_the_literal_type():
    f = cat.RESET["dir"]
    assert set(get_args(f.type)) == {n for _, n in f.decode.arg}
    assert {v for v, _ in f.decode.arg} == set(cat.RST_DIR)
    f = cat.RESET["cgroup_of"]
    assert set(get_args(get_args(f.type)[0])) == {f.decode.yes, f.decode.no}


def test_every_csv_column_shows_a_field_or_names_its_source():
    for c, f in cat.csv_columns():
        assert (f is None) == bool(c.source), c.column
        assert c.source in ("", "verdict", "names", "row", "count")
        assert c.fmt in ("text", "int", "time", "ms_as_s")
        if c.only_if:
            assert cat.RESET[c.only_if].type in (bool, bool | None)


def test_the_readers_table_is_the_catalogs():
    for k in cat.RECORDS:
        assert list(validate.RECORDS[k.name]) == [f.name for f in k.fields if f.name != "kind"]
    assert list(validate.HEADER) == [f.name for f in cat.HEADER]
    assert list(validate.TOTALS) == [f.name for f in cat.TOTALS]


def test_when_expressions():
    assert cat.parse_when("EVF_TRIGGER & !EVF_HAS_SOCK") == \
        ((("flag", "flags", 0x20, False), ("flag", "flags", 0x01, True)),)
    assert cat.parse_when("EVF_OWNER | EVF2_SK_CGROUP") == \
        ((("flag", "flags", 0x40, False),), (("flag", "flags2", 0x01, False),))
    with pytest.raises(ValueError):
        cat.parse_when("EVF_NOPE")


def test_literal_types_only_where_the_decoder_makes_them():
    for k, f in EVENT_FIELDS:
        if get_origin(f.type) is Literal:
            assert f.decode.op in ("enum", "family"), f.name
