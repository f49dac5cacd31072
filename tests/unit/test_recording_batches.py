"""The fast batch reader yields what the recording reader yields, and fails
the same way."""

from __future__ import annotations

from pathlib import Path

import pytest

from rsttrace.schema.recording import RecordingError, iter_batches, iter_recording

FIX = Path(__file__).resolve().parents[1] / "fixtures"


def both(path):
    ref_reader, it = iter_recording(path)
    ref = list(it)
    reader, batches = iter_batches(path)
    got = [r for b in batches for r in b]
    return ref, ref_reader, got, reader


@pytest.mark.parametrize("name", sorted(p.name for p in FIX.glob("*.jsonl")))
def test_fixtures_read_the_same(name):
    ref, ref_reader, got, reader = both(FIX / name)
    assert got == ref
    assert (reader.header, reader.totals, reader.truncated, reader.warnings) == \
        (ref_reader.header, ref_reader.totals, ref_reader.truncated, ref_reader.warnings)


def test_many_blocks_and_lines_that_do_not_validate(tmp_path, monkeypatch):
    import rsttrace.schema.recording as r
    monkeypatch.setattr(r, "BLOCK_BYTES", 200)     # many small blocks
    p = tmp_path / "r.jsonl"
    lines = ['{"kind":"header","schema":1,"t":1}']
    lines += [f'{{"kind":"reset","t":{i},"sport":{i}}}' for i in range(50)]
    lines += ['{"kind":"ctx","t":60,"x":NaN}', "", '{"kind":"header","schema":1,"t":2}',
              '{"kind":"reset","t":61,"sport":"x"}', '{"kind":"ctx","t":62,"namespaces":[]}',
              '{"kind":"totals","events":50}']
    p.write_text("\n".join(lines) + "\n")
    ref, ref_reader, got, reader = both(p)
    assert got == ref and len(got) == 51 and reader.totals == {"kind": "totals", "events": 50}
    assert reader.invalid == ref_reader.invalid == 3 and reader.first_invalid == "line 52: not valid JSON " \
        "(malformed: invalid character (byte 25))"


@pytest.mark.parametrize("text,msg", [
    ("", "empty file"),
    ("\n\n", "empty file"),
    ('{"kind":"reset","t":1}\n', "missing header"),
    ('{not json\n{"kind":"reset","t":1}\n', ":1: missing header"),
    ('{"kind":"header","schema":"1"}\n', "unknown schema version '1'"),
    ('{"kind":"header","schema":1,"t":"now"}\n', ":1: header: t: expected `float`, got `str`"),
])
def test_errors_are_the_recording_readers(tmp_path, text, msg):
    p = tmp_path / "r.jsonl"
    p.write_text(text)
    with pytest.raises(RecordingError) as ref:
        list(iter_recording(p)[1])
    with pytest.raises(RecordingError) as got:
        list(iter_batches(p)[1])
    assert str(got.value) == str(ref.value) and msg in str(got.value)


def test_missing_file(tmp_path):
    with pytest.raises(RecordingError, match="no such file"):
        list(iter_batches(tmp_path / "nope.jsonl")[1])


def test_cut_last_line(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text('{"kind":"header","schema":1}\n{"kind":"reset","t":1}\n{"kind":"res')
    reader, batches = iter_batches(p)
    assert [r["t"] for b in batches for r in b] == [1]
    assert reader.truncated and "cut off" in reader.warnings[0]
