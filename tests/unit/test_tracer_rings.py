"""The per-CPU ring reader on rings laid out in ordinary memory exactly as
the programs lay them out in the mapped arrays (no root, no kernel)."""

from __future__ import annotations

import numpy as np

from rsttrace.tracer.bpfsys import PERCPU_POS_DTYPE, PerCPURingReader, percpu_slot_dtype
from rsttrace.tracer.events import EVENT_DTYPE

CPUS, SLOTS = 2, 8


class Rings:
    """What the programs do: take the head, fill the slot, publish seq."""

    def __init__(self):
        self.ring = np.zeros(CPUS * SLOTS, dtype=percpu_slot_dtype(EVENT_DTYPE))
        self.pos = np.zeros(CPUS, dtype=PERCPU_POS_DTYPE)
        self.reader = PerCPURingReader(self.ring, self.pos, SLOTS)

    def reserve(self, cpu: int, ts: int, kind: int = 1) -> int | None:
        h = int(self.pos["head"][cpu])
        if h - int(self.pos["tail"][cpu]) >= SLOTS:
            return None   # full: the program counts it lost
        self.pos["head"][cpu] = h + 1
        slot = self.ring[cpu * SLOTS + h % SLOTS]
        slot["pos"] = h
        slot["ev"]["ts_ns"], slot["ev"]["kind"] = ts, kind
        return cpu * SLOTS + h % SLOTS

    def publish(self, i: int) -> None:
        self.ring[i]["seq"] = self.ring[i]["pos"] + 1

    def emit(self, cpu: int, ts: int, kind: int = 1) -> bool:
        i = self.reserve(cpu, ts, kind)
        if i is not None:
            self.publish(i)
        return i is not None


def test_events_of_all_cpus_in_time_order_and_slots_handed_back():
    r = Rings()
    for ts in (10, 30, 50):
        r.emit(0, ts)
    for ts in (20, 40):
        r.emit(1, ts)
    assert list(r.reader.read()["ts_ns"]) == [10, 20, 30, 40, 50]
    assert list(r.pos["tail"]) == [3, 2]
    assert len(r.reader.read()) == 0


def test_stops_at_a_slot_still_being_written_and_takes_it_later():
    r = Rings()
    r.emit(0, 1)
    slow = r.reserve(0, 2)      # interrupted before publishing...
    r.emit(0, 3)                # ...by a program that published after it
    assert list(r.reader.read()["ts_ns"]) == [1]
    r.publish(slow)
    assert list(r.reader.read()["ts_ns"]) == [2, 3]


def test_wraps_around_and_a_full_ring_refuses():
    r = Rings()
    for ts in range(6):
        r.emit(0, ts)
    assert len(r.reader.read()) == 6
    took = [r.emit(0, ts) for ts in range(6, 6 + SLOTS + 3)]
    assert took.count(False) == 3   # what the program counts lost
    assert list(r.reader.read()["ts_ns"]) == list(range(6, 6 + SLOTS))


def test_stale_slot_from_the_previous_lap_is_not_taken():
    r = Rings()
    for ts in range(SLOTS):
        r.emit(0, ts)
    r.reader.read()
    r.reserve(0, 99)            # same slot as position 0, not yet published
    assert len(r.reader.read()) == 0


def test_discarded_events_are_skipped_and_max_records_is_kept():
    r = Rings()
    r.emit(0, 1)
    r.emit(0, 2, kind=0)        # refused by a filter after reserving
    r.emit(0, 3)
    assert list(r.reader.read()["ts_ns"]) == [1, 3]
    for ts in range(4, 8):
        r.emit(1, ts)
    assert len(r.reader.read(max_records=3)) == 3
    assert list(r.reader.read()["ts_ns"]) == [7]


def test_a_cpu_with_more_than_a_batch_waiting_does_not_starve_the_others():
    r = Rings()
    for ts in range(SLOTS):
        r.emit(0, ts)
    r.emit(1, 100)
    assert list(r.reader.read(max_records=SLOTS)["ts_ns"]) == list(range(SLOTS))
    for ts in range(SLOTS, 2 * SLOTS):
        r.emit(0, ts)       # CPU 0 full again
    assert list(r.reader.read(max_records=1)["ts_ns"]) == [100]
