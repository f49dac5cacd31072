"""What the storm benchmarks share: a throwaway namespace with the storm
binary (bench/storm.c) compiled for it, a process's CPU and peak memory,
and a scrape of the exporter. (The kernel's own reset count:
rsttrace.lab.netns.tcp_out_rsts.)"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator

HERE = Path(__file__).resolve().parent


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


@contextlib.contextmanager
def storm_namespace(prefix: str) -> Iterator[tuple[str, str]]:
    """(namespace, storm binary); both removed afterwards, even on failure.
    The storm connects to a closed port on the namespace's loopback, so
    nothing leaves it."""
    tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    binary = str(tmp / "storm")
    ns = f"{prefix}-{uuid.uuid4().hex[:6]}"
    try:
        sh("gcc", "-O2", "-o", binary, str(HERE / "storm.c"))
        sh("ip", "netns", "add", ns)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield ns, binary
    finally:
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def storm(ns: str, binary: str, seconds: float, max_n: int = 10_000_000,
          cpu: int | None = None, workload: str = "refused", loops: int = 1) -> tuple[int, float]:
    """(connects refused, elapsed s) of one bounded storm, on CPU `cpu` if
    given; with workload "churn", (healthy connections made, elapsed s).
    `loops` storm loops run at once (each bounded by `seconds` and `max_n`;
    churn loops each on their own port): the count is theirs together, the
    time the longest one's."""
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    procs = []
    try:
        for i in range(loops):
            mode = [str(9 + i), "churn"] if workload == "churn" else []
            procs.append(subprocess.Popen(["ip", "netns", "exec", ns, *pin, binary, str(seconds),
                                           str(max_n), *mode], stdout=subprocess.PIPE, text=True))
        done, elapsed = 0, 0.0
        for proc in procs:
            out, _ = proc.communicate(timeout=seconds + 30)
            if proc.returncode != 0:
                raise RuntimeError(f"storm loop failed (exit {proc.returncode})")
            _n, d, e = out.split()
            done, elapsed = done + int(d), max(elapsed, float(e))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return done, elapsed


def _stat_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds from /proc/PID/stat: the process's own (all its
    threads), and its children's that it has waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    hz = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / hz, (int(fields[13]) + int(fields[14])) / hz


def proc_stats(pid: int) -> tuple[float, int]:
    """(cpu seconds of the process and its threads, peak RSS bytes)."""
    cpu = _stat_cpu(pid)[0]
    hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024
    return cpu, hwm


def children_cpu(pid: int) -> float:
    """CPU seconds of the process's children it has waited for (its loader
    and compiler processes), so far."""
    return _stat_cpu(pid)[1]


def end_process(proc) -> tuple[float, float]:
    """SIGTERM `proc` and wait for it: (seconds until it exited, CPU
    seconds of its whole life, its waited-for children included)."""
    t0 = time.monotonic()
    proc.terminate()
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.monotonic() - t0, usage.ru_utime + usage.ru_stime


def scrape(url: str) -> tuple[dict, float]:
    """The exporter's samples, {(name, sorted labels): value}, and the
    seconds the scrape took."""
    from prometheus_client.parser import text_string_to_metric_families
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    dt = time.perf_counter() - t0
    return ({(s.name, tuple(sorted(s.labels.items()))): s.value
             for f in text_string_to_metric_families(text) for s in f.samples}, dt)


def total(samples: dict, name: str, **match: str) -> float:
    """The sum of the series `name` whose labels include `match`."""
    return sum(v for (n, labels), v in samples.items()
               if n == name and all(dict(labels).get(k) == w for k, w in match.items()))


def sent_resets(samples: dict, ns: str) -> float:
    return total(samples, "rsttrace_resets_total", netns=ns, direction="sent")
