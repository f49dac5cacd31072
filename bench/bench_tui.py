"""Live screen under a reset storm: key-press-to-redraw latency while a
synthetic source offers ~50,000 reset records/s (the tracer's measured
ceiling on this machine class is ~58,000/s).

Reports numbers, asserts nothing:
  .venv/bin/python bench/bench_tui.py [--rate 50000] [--seconds 6] [--keep 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))
from test_tui_fixtures import LB, header, reset_pair, ctx  # noqa: E402

from rsttrace.analysis.classify import Classifier  # noqa: E402
from rsttrace.tui.app import RstApp  # noqa: E402
from rsttrace.tui.table import ResetTable  # noqa: E402
from textual import events  # noqa: E402


class StormSource:
    """Offers `rate` reset records a second on the wall clock (sent/recv
    pairs of the lab's keepalive reset), like a TraceSession would."""

    def __init__(self, rate: int, batch_max: int = 20_000):
        self.rate = rate
        self.batch_max = batch_max
        self.header = header()
        self.t_start = time.time()
        self.offered = 0
        self.handed = 0
        self.backlog_max = 0
        self._port = 0

    def start(self) -> "StormSource":
        return self

    def poll(self, timeout_s: float = 0.1) -> list[dict[str, Any]]:
        now = time.time()
        due = int((now - self.t_start) * self.rate)
        backlog = due - self.handed
        self.backlog_max = max(self.backlog_max, backlog)
        n = min(backlog, self.batch_max) // 2
        if n <= 0:
            time.sleep(min(timeout_s, 0.005))
            return []
        out: list[dict[str, Any]] = []
        if self.handed == 0:
            out.append(ctx(now))
        for _ in range(n):
            self._port = (self._port + 1) % 60000
            out += reset_pair(now, 1024 + self._port)
        self.handed += 2 * n
        return out

    def stats(self) -> dict[str, int]:
        return {"events": self.handed, "lost": 0}

    def stop(self) -> None:
        pass


async def run(rate: int, seconds: float, keep: int) -> dict[str, Any]:
    src = StormSource(rate)
    app = RstApp(src, Classifier(netns_names={str(LB): "lb"}), capacity=keep)
    lat: list[float] = []
    missed = 0  # key presses with no redraw within 10 s
    async with app.run_test(size=(160, 48)) as pilot:
        table = app.query_one(ResetTable)
        end = time.monotonic() + seconds
        await pilot.pause(0.5)
        # Pilot's press() waits for the whole process to go CPU-idle, which a
        # storm never does: post the key like a terminal would and time the
        # first redraw of the table that shows the moved cursor.
        marks: dict[str, float] = {}
        draw, move = table.render_line, table.action_move

        def action_move(delta: int) -> None:
            move(delta)
            marks.setdefault("moved", time.perf_counter())

        def render_line(y: int):
            if "moved" in marks and "t1" not in marks:
                marks["t1"] = time.perf_counter()
            return draw(y)

        table.render_line = render_line  # type: ignore[method-assign]
        table.action_move = action_move  # type: ignore[method-assign]
        while time.monotonic() < end:
            key = "down" if len(lat) % 2 == 0 else "up"
            marks.clear()
            t0 = time.perf_counter()
            app.post_message(events.Key(key, None))
            for _ in range(1000):  # bounded: 10 s at most
                if "t1" in marks:
                    break
                await asyncio.sleep(0.01 if time.perf_counter() - t0 > 0.05 else 0.001)
            if "t1" in marks:
                lat.append((marks["t1"] - t0) * 1000)
            else:
                missed += 1
            await asyncio.sleep(0.2)
        batches, total = app.batches, app.state.total
        t_quit = time.perf_counter()
        handed_at_quit = src.handed
        elapsed = time.time() - src.t_start
    quit_s = time.perf_counter() - t_quit
    return {
        "offered_per_s": rate, "seconds": round(elapsed, 1),
        "consumed_per_s": round(handed_at_quit / elapsed),
        "resets_classified": total, "ring_rows": keep, "batches_drawn": batches,
        "max_backlog_records": src.backlog_max,
        "key_ms_p50": round(statistics.median(lat), 1),
        "key_ms_p95": round(sorted(lat)[int(len(lat) * 0.95) - 1], 1),
        "key_ms_max": round(max(lat), 1), "key_presses": len(lat), "keys_not_redrawn": missed,
        "exit_s": round(quit_s, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=int, default=50_000)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--keep", type=int, default=5000)
    a = ap.parse_args()
    for k, v in asyncio.run(run(a.rate, a.seconds, a.keep)).items():
        print(f"{k:22} {v}")


if __name__ == "__main__":
    main()
