"""ReplaySource: a recording replayed with the live source's interface."""

from __future__ import annotations

import pytest

from rsttrace.schema.recording import RecordingError
from rsttrace.tracer.replay import ReplaySource
from test_tui_fixtures import T0, incident_records, storm_records, write


def drain(src: ReplaySource, limit: int = 10_000) -> list[list[dict]]:
    batches = []
    for _ in range(limit):
        if src.done:
            break
        batches.append(src.poll(0.0))
    return batches


def test_speed_zero_yields_every_record_in_bounded_batches(tmp_path):
    recs = storm_records(300)
    src = ReplaySource(write(tmp_path / "s.jsonl", recs, lost=7), speed=0, batch_max=100)
    assert src.header["host"] == "node-a"
    batches = drain(src)
    got = [r for b in batches for r in b]
    assert got == recs
    assert max(len(b) for b in batches) == 100
    st = src.stats()
    assert st["events"] == sum(1 for r in recs if r["kind"] != "ctx")
    assert st["lost"] == 7  # from the totals line
    assert src.poll(0.0) == []
    assert src.snapshot()["kind"] == "ctx"


def test_speed_paces_records_on_the_recording_clock(tmp_path):
    now = [100.0]
    src = ReplaySource(write(tmp_path / "i.jsonl", incident_records()), speed=2,
                       clock=lambda: now[0])
    first = src.poll(0.0)
    assert [r["t"] for r in first] == [T0]  # only the first ctx is due at start
    now[0] += 4.25  # 4.25 s of wall time at 2x = 8.5 s of recording: the first reset pair
    second = src.poll(0.0)
    assert [r["kind"] for r in second] == ["reset", "reset"]
    assert src.now() == pytest.approx(T0 + 8.5)
    now[0] += 100.0
    rest = src.poll(0.0)
    assert src.done and rest[-1]["t"] == T0 + 14.0


def test_truncated_recording_replays_complete_lines(tmp_path):
    p = write(tmp_path / "t.jsonl", incident_records())
    text = p.read_text().splitlines(keepends=True)
    p.write_text("".join(text[:-2]) + text[-2][: len(text[-2]) // 2])  # no totals, last line cut
    src = ReplaySource(p)
    got = [r for b in drain(src) for r in b]
    assert len(got) == len(incident_records()) - 1
    assert src.truncated and src.warnings


def test_not_a_recording_is_refused_with_the_reason(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"kind": "reset"}\n{"kind": "reset"}\n')
    with pytest.raises(RecordingError, match="missing header"):
        ReplaySource(p)
    with pytest.raises(ValueError, match="speed"):
        ReplaySource(write(tmp_path / "ok.jsonl", []), speed=-1)
