"""A real recording passes the record table (rsttrace.schema.validate) unchanged:
every field the tracer, the context collector and the recorder write is in
the table with a type its values fit, so reading drops and refuses
nothing of it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.kernel


def test_a_real_recording_reads_back_unchanged(tmp_path):
    out = tmp_path / "rec.jsonl"
    p = subprocess.Popen([sys.executable, "-m", "rsttrace", "record", "-o", str(out), "--duration", "3",
                          "--ctx-period", "0.5", "-q"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (not out.exists() or out.stat().st_size == 0):
        time.sleep(0.1)
    for _ in range(5):      # refused connects: sent and received resets on loopback
        s = socket.socket()
        try:
            s.connect(("127.0.0.1", 1))
        except OSError:
            pass
        finally:
            s.close()
    assert p.wait(timeout=30) == 0, p.stderr.read()
    from rsttrace.schema.recording import iter_recording
    reader, it = iter_recording(out)
    records = list(it)
    lines = out.read_text().splitlines()
    assert records == [json.loads(x) for x in lines[1:-1]]
    assert reader.invalid == 0 and reader.header == json.loads(lines[0])
    assert reader.totals == json.loads(lines[-1])
    kinds = {r["kind"] for r in records}
    assert {"reset", "ctx"} <= kinds
    assert any(ns.get("sysctl") for r in records if r["kind"] == "ctx" for ns in r["namespaces"])
