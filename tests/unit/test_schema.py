"""The record table (rsttrace.schema.validate) against what the tracer writes: every
field of every kind the decoder makes is in the table, and every value it
can write validates, so nothing a real recording holds is dropped or
refused on reading."""

from __future__ import annotations

import json

import pytest

from rsttrace.schema import validate as schema
from rsttrace.tracer import events as ev
from test_tracer_events import DEC, _random_batch


def test_the_decoder_writes_the_fields_of_the_table_in_order():
    for r in DEC.decode_array(_random_batch(0, 400)):
        assert list(r) == ["kind", *schema.RECORDS[r["kind"]]]


@pytest.mark.parametrize("seed", range(10))
def test_what_the_tracer_writes_reads_back_unchanged(seed):
    a = _random_batch(seed, 400)
    lines = DEC.encode_jsonl(a).split(b"\n")[:-1]
    records = DEC.decode_array(a)
    assert {r["kind"] for r in records} == set(ev.KINDS.values())
    assert schema.decode_records(lines) == records
    assert [schema.decode_record(x) for x in lines] == [json.loads(x) for x in lines]


def test_times_and_integers_keep_their_types():
    rec = schema.decode_record(b'{"kind":"reset","t":1700000000,"sport":80,"netns":4026531840}')
    assert rec == {"kind": "reset", "t": 1700000000.0, "sport": 80, "netns": 4026531840}
    assert type(rec["t"]) is float and type(rec["sport"]) is int
    ctx = schema.decode_record(b'{"kind":"ctx","t":1,"namespaces":[{"netns":1,"sysctl":{"a":7200,"b":0.5}}]}')
    assert ctx["namespaces"][0]["sysctl"] == {"a": 7200, "b": 0.5}
    assert type(ctx["namespaces"][0]["sysctl"]["a"]) is int


def test_fields_outside_the_table_are_dropped_missing_ones_stay_missing():
    assert schema.decode_record(b'{"kind":"ct_full","t":2,"later":[1,{"x":2}]}') == {"kind": "ct_full", "t": 2.0}


@pytest.mark.parametrize("line,why", [
    (b'{"kind":"ipvs_expire","t":1,"vport":65536}', "vport: expected `int` <= 65535"),
    (b'{"kind":"reset","t":1,"family":4.0}', "family: expected `int`, got `float`"),
    (b'{"kind":"reset","t":1,"cgroup_of":"them"}', "cgroup_of: invalid enum value 'them'"),
    (b'{"kind":"reset","t":1,"netns":null}', "netns: expected `int`, got `null`"),
    (b'{"kind":"ctx","t":1,"namespaces":{}}', "namespaces: expected `array`, got `object`"),
    (b'{"kind":"reset","t":1,"comm":"' + b"x" * 500 + b'"', "not valid JSON"),
    (b'{"kind":"reset","t":1,"dir":"' + b"y" * 500 + b'"}', "..."),     # quoted values are cut
])
def test_what_does_not_validate_says_why_in_one_short_line(line, why):
    with pytest.raises(schema.ERRORS) as e:
        schema.decode_record(line)
    text = schema.why(e.value)
    assert why in text and len(text) <= 120 and "\n" not in text


def test_header_and_totals_are_checked_and_keep_every_field():
    assert schema.header_problem(b'{"kind":"header","schema":1,"later":{"x":1}}') is None
    assert "netns_names" in schema.header_problem(b'{"kind":"header","schema":1,"netns_names":{"lb":"x"}}')
    assert "plan[...].available" in schema.header_problem(
        b'{"kind":"header","schema":1,"plan":{"reset":{"available":"yes"}}}')
    assert schema.totals_problem(b'{"kind":"totals","lost":0,"events":3}') is None
    assert "lost: expected `int | null`, got `str`" in schema.totals_problem(b'{"kind":"totals","lost":"\\u001b[2J"}')
