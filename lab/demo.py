"""`rsttrace demo`: build the lab, trace every scenario live, print what the
client saw, what rsttrace concluded and the fix, write the CSV report.

One TraceSession (limited to the lab's namespaces) runs for the whole demo and
writes a recording; each scenario is diagnosed from the records of its own
time window, so one scenario's conntrack drops cannot colour the next one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rsttrace.lab.diagnose import Diagnosis, diagnose, window
from rsttrace.lab.scenarios import SCENARIOS, ScenarioRun, run_scenario
from rsttrace.lab.topology import Lab

# After a scenario: the classifier pairs a flow's resets within 1 s and wants
# a context snapshot taken after them. A control expects no reset: a reset
# it did cause is in the records by the time its short settle is over, and
# the diagnosis decides it anyway.
SETTLE_S = 1.3
CONTROL_SETTLE_S = 0.3
CTX_PERIOD_S = 0.5

Say = Callable[[str], None]


@dataclass
class DemoResult:
    runs: list[ScenarioRun] = field(default_factory=list)
    diagnoses: list[Diagnosis] = field(default_factory=list)
    recording: Path | None = None
    csv: Path | None = None

    @property
    def ok(self) -> bool:
        return bool(self.diagnoses) and all(d.ok for d in self.diagnoses)


class _Collector:
    """Polls the live session in a thread; records go to the recording file
    and to memory for per-scenario diagnosis."""

    def __init__(self, session: Any, writer: Any):
        self.session, self.writer = session, writer
        self.records: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._t = threading.Thread(target=self._loop, name="rsttrace-demo-poll", daemon=True)

    def start(self) -> None:
        self._t.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            batch = self.session.poll(timeout_s=0.1)
            if batch:
                self.writer.write_many(batch)
                with self._lock:
                    self.records.extend(batch)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.records)

    def stop(self) -> None:
        self._stop.set()
        self._t.join(5)


def run_demo(names: list[str], *, recording: Path, csv: Path | None, keep: bool,
             say: Say = print, on_run: Callable[[ScenarioRun, Diagnosis], None] | None = None) -> DemoResult:
    from rsttrace.schema.recording import RecordingWriter
    from rsttrace.tracer.session import TraceSession

    res = DemoResult(recording=recording)
    lab = Lab(progress=lambda m: say(f"  {m}"))
    with lab:
        label = {ino: ns.removeprefix(f"rtlab-{lab.run_id}-") for ns, ino in lab.inodes().items()}
        names_by_ino = {ino: ns for ns, ino in lab.inodes().items()}
        t0 = time.monotonic()
        session = TraceSession(netns=list(label), ctx_period_s=CTX_PERIOD_S, netns_names=names_by_ino)
        session.start()
        writer = RecordingWriter(recording, session.header)
        col = _Collector(session, writer)
        col.start()
        say(f"  tracing the lab's namespaces (BPF attached in {time.monotonic() - t0:.1f} s)")
        try:
            for name in names:
                sc = SCENARIOS[name]
                say(f"> {name}: {sc.title}")
                session.snapshot()
                run = run_scenario(lab, name)
                time.sleep(SETTLE_S if sc.expect.cause else CONTROL_SETTLE_S)
                session.snapshot()
                time.sleep(0.2)
                d = diagnose(run, window(col.snapshot(), run.t_start, time.time()), label)
                res.runs.append(run)
                res.diagnoses.append(d)
                if on_run:
                    on_run(run, d)
        finally:
            col.stop()
            stats = session.stats()
            session.stop()
            writer.close({"t": time.time(), "lost": stats.get("lost", 0)})
        if keep:
            lab.keep()
    if csv is not None:
        res.csv = _write_csv(recording, csv)
    return res


def _write_csv(recording: Path, csv: Path) -> Path | None:
    try:
        from rsttrace.analysis.report import write_report
    except ImportError:
        return None
    from rsttrace.outfile import OutFile
    with OutFile(csv) as out:
        write_report(recording, out)
    return csv


__all__ = ["run_demo", "DemoResult", "SCENARIOS"]
