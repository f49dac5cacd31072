"""The C side against the field catalog, without root: bpf/rsttrace.h is
parsed (struct rst_event, enum rst_kind and rst_dir, the EVF_ flags) and
compared with rsttrace.schema.catalog and the numpy layout made from it.
(The kernel tier compares the same layout with what bcc compiled.)"""

from __future__ import annotations

import pytest

from cheader import HEADER, c_layout, defines, enum_values, struct_members
from rsttrace.schema import catalog as cat
from rsttrace.tracer.events import EVENT_DTYPE

TEXT = HEADER.read_text()


def test_struct_members_and_types():
    assert struct_members(TEXT, "rst_event") == [(m.ctype, m.name, m.count) for m in cat.EVENT]


def test_offsets_and_size_by_c_rules():
    offsets, size = c_layout(struct_members(TEXT, "rst_event"))
    assert size == EVENT_DTYPE.itemsize == cat.layout()[1]
    assert offsets == {n: EVENT_DTYPE.fields[n][1] for n in EVENT_DTYPE.names} == cat.layout()[0]
    # the Python side reads every byte of the struct as one member or another
    assert sum(m.size for m in cat.EVENT) == size


@pytest.mark.parametrize("name,values", [("rst_kind", cat.RST_KIND), ("rst_dir", cat.RST_DIR)])
def test_enums(name, values):
    assert enum_values(TEXT, name) == {v.c: int(v) for v in values}


@pytest.mark.parametrize("prefix,values", [("EVF_", cat.FLAGS), ("EVF2_", cat.FLAGS2)])
def test_flags(prefix, values):
    assert defines(TEXT, prefix) == {v.c: int(v) for v in values}


def test_every_kind_the_kernel_sends_has_its_record():
    assert {int(k.value) for k in cat.EVENTS} == {int(v) for v in cat.RST_KIND}


def test_catalog_constants_are_named_as_in_c():
    for name, value in vars(cat).items():
        if isinstance(value, cat.CValue):
            assert value.c == name


def test_parser_refuses_what_it_cannot_read():
    with pytest.raises(AssertionError):
        struct_members("struct rst_event { struct foo *p; };", "rst_event")
    with pytest.raises(AssertionError):
        enum_values("enum rst_dir { DIR_SENT, DIR_RECV };", "rst_dir")
    assert c_layout([("__u8", "a", 1), ("__u32", "b", 1), ("__u8", "c", 3)]) == ({"a": 0, "b": 4, "c": 8}, 12)


def test_a_changed_header_is_noticed():
    """What the comparisons above would see if the C side changed alone."""
    wider = TEXT.replace("__u16 sport;", "__u32 sport;")
    assert wider != TEXT
    assert struct_members(wider, "rst_event") != [(m.ctype, m.name, m.count) for m in cat.EVENT]
    assert c_layout(struct_members(wider, "rst_event"))[0]["dport"] != EVENT_DTYPE.fields["dport"][1]
    moved = TEXT.replace("#define EVF_KA           0x80", "#define EVF_KA           0x100")
    assert moved != TEXT and defines(moved, "EVF_") != {v.c: int(v) for v in cat.FLAGS}


@pytest.mark.parametrize("struct,members", [("rst_agg_key", cat.AGG_KEY), ("rst_agg_val", cat.AGG_VAL)])
def test_storm_structs_match_the_catalog(struct, members):
    from rsttrace.tracer.events import AGG_KEY_DTYPE, AGG_VAL_DTYPE
    dtype = AGG_KEY_DTYPE if struct == "rst_agg_key" else AGG_VAL_DTYPE
    parsed = struct_members(TEXT, struct)
    assert parsed == [(m.ctype, m.name, m.count) for m in members]
    offsets, size = c_layout(parsed)
    assert (offsets, size) == cat.layout(members)
    assert size == dtype.itemsize == sum(m.size for m in members)   # no hidden padding in a hash key
    assert defines(TEXT, "AGGF_") == {v.c: int(v) for v in cat.AGGF}
