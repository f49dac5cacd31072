"""`fix --from` plans from a recording of any size in bounded memory: the
records are streamed through the classifier and each distinct list of
fixes is added once (it used to load every record, then keep every verdict
with its events)."""

from __future__ import annotations

import tracemalloc

from rsttrace.remedy.sources import from_records
from test_remedy_sources import CLI, _find, _pool_recording


def _many(n: int):
    header, records = _pool_recording()
    ctx, sent, recv, _ = records
    yield ctx
    for i in range(n):
        dt = i * 0.01
        yield {**sent, "t": 108.1 + dt, "dport": 10000 + i % 50000}
        yield {**recv, "t": 108.101 + dt, "dport": 10000 + i % 50000}


def test_planning_from_a_large_recording_holds_no_records():
    from test_remedy_fakes import FakeAccess
    acc = FakeAccess()
    acc.add(CLI)
    header = _pool_recording()[0]
    tracemalloc.start()
    try:
        g = from_records(_many(60_000), header, acc.node, None, find=_find)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert g.resets == 120_000 and sum(g.causes.values()) == 60_000
    assert len(g.proposals) < 10
    assert peak < 20 << 20, peak
