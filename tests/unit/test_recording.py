"""JSONL recordings: round trip, cut-off last line, damaged middle, bad header."""

import json

import pytest

from rsttrace.schema.recording import RecordingError, RecordingWriter, iter_recording, read_recording

HEADER = {"host": "h", "kernel": "k", "plan": {}}


def write(tmp_path, n=3):
    path = tmp_path / "r.jsonl"
    w = RecordingWriter(path, HEADER)
    for i in range(n):
        w.write({"kind": "reset", "t": float(i), "dir": "recv"})
    w.write({"kind": "ctx", "t": 9.0, "namespaces": []})
    w.close({"lost": 2})
    w.close()  # idempotent
    return path


def test_round_trip(tmp_path):
    rec = read_recording(write(tmp_path))
    assert rec.header["schema"] == 1 and rec.header["kind"] == "header"
    assert [r["t"] for r in rec.records] == [0.0, 1.0, 2.0, 9.0]
    assert rec.totals["events"] == 3 and rec.totals["lost"] == 2
    assert rec.totals["by_kind"] == {"reset": 3, "ctx": 1}
    assert not rec.truncated and rec.warnings == []


def test_encoded_events_and_records_interleave_in_one_file(tmp_path):
    """The recorder's hot path writes the encoder's bytes between records
    written as dicts (context): one valid file, counted by kind."""
    import numpy as np

    from rsttrace.schema import catalog as cat
    from rsttrace.tracer import events as ev
    a = np.zeros(3, dtype=ev.EVENT_DTYPE)
    a["kind"], a["dir"], a["ts_ns"] = cat.EV_RESET, cat.DIR_SENT, [1, 2, 3]
    a["kind"][2] = cat.EV_CT_DROP
    dec = ev.Decoder(hz=250, mono_to_unix=100.0)
    path = tmp_path / "r.jsonl"
    w = RecordingWriter(path, HEADER)
    w.write({"kind": "ctx", "t": 0.5, "namespaces": []})
    w.write_jsonl(dec.encode_jsonl(a), {"reset": 2, "ct_drop": 1})
    w.write({"kind": "ctx", "t": 9.0, "namespaces": [{"name": "pod-ä"}]})
    w.close()
    rec = read_recording(path)
    assert [r["kind"] for r in rec.records] == ["ctx", "reset", "reset", "ct_drop", "ctx"]
    assert rec.records[1:4] == dec.decode_array(a)
    assert rec.records[4]["namespaces"][0]["name"] == "pod-ä"
    assert rec.totals["events"] == 3 and rec.totals["by_kind"] == {"ctx": 2, "reset": 2, "ct_drop": 1}
    assert not rec.truncated and rec.warnings == []


def test_truncated_last_line_is_reported_and_rest_read(tmp_path):
    path = write(tmp_path)
    lines = path.read_bytes().split(b"\n")
    # drop totals, cut the last record in half (a killed recording)
    cut = b"\n".join(lines[:3]) + b"\n" + lines[3][:10]
    path.write_bytes(cut)
    rec = read_recording(path)
    assert rec.truncated and len(rec.records) == 2
    assert "cut off" in rec.warnings[0] and ":4:" in rec.warnings[0]


def test_malformed_middle_line_is_counted_and_named(tmp_path):
    path = write(tmp_path)
    lines = path.read_text().split("\n")
    lines[2] = "{not json"
    path.write_text("\n".join(lines))
    rec = read_recording(path)
    assert [r["t"] for r in rec.records] == [0.0, 2.0, 9.0]
    assert "1 record did not validate" in rec.warnings[0] and "(first: line 3: not valid JSON" in rec.warnings[0]


def test_missing_header_and_unknown_schema(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text(json.dumps({"kind": "reset"}) + "\n")
    with pytest.raises(RecordingError, match="missing header"):
        read_recording(p)
    p.write_text(json.dumps({"kind": "header", "schema": 99}) + "\n")
    with pytest.raises(RecordingError, match="unknown schema version 99"):
        read_recording(p)
    p.write_text("")
    with pytest.raises(RecordingError, match="empty file"):
        read_recording(p)
    with pytest.raises(RecordingError, match="no such file"):
        read_recording(tmp_path / "absent.jsonl")


def test_streaming_reader_fills_header(tmp_path):
    reader, it = iter_recording(write(tmp_path, n=2))
    first = next(it)
    assert reader.header["host"] == "h" and first["t"] == 0.0
    rest = list(it)
    assert len(rest) == 2 and reader.totals["events"] == 2
