"""What the traced host pays for rsttrace's programs, from the kernel's own
run statistics: each program's count of runs and their time
(bpf_prog_info.run_cnt, run_time_ns).

The kernel keeps them only while someone holds a BPF_ENABLE_STATS
descriptor (two clock reads per run of every BPF program on the host), so
RunStats holds one only between start() and stop() or close(), and never
past this process. A run's time is the program itself plus the clock reads
around it; the tracepoint's call into the program is not in it.
"""

from __future__ import annotations

import os
import struct

from .bpfsys import enable_stats, prog_info
from .btf import BTF, BTFError, load_vmlinux
from .offsets import enum_value

# hook -> (runs, run time ns)
Runs = dict[str, tuple[int, int]]


class RunStats:
    """Run counts and times of a started TraceSession's programs, per hook
    (the tracepoint or kernel function a program is attached to, from BTF;
    where BTF does not say, the program's own name)."""

    def __init__(self, session, btf: BTF | None = None):
        self._btf = btf or load_vmlinux()
        self._at = {f: self._btf.field("bpf_prog_info", f)[0]
                    for f in ("name", "run_time_ns", "run_cnt", "attach_btf_id")}
        self._cmd = (enum_value(self._btf, "bpf_cmd", "BPF_ENABLE_STATS"),
                     enum_value(self._btf, "bpf_stats_type", "BPF_STATS_RUN_TIME"))
        self._session = session
        self._fd: int | None = None
        self._before: Runs = {}

    def _read(self) -> Runs:
        at, out = self._at, {}
        for fd in self._session.program_fds():
            info = prog_info(fd, max(at.values()) + 8)
            name = info[at["name"]:at["name"] + 16].split(b"\0")[0].decode()
            type_id = struct.unpack_from("<I", info, at["attach_btf_id"])[0]
            if type_id:
                # BTF tracepoints attach to btf_trace_<tracepoint>, fexit to the
                # function (a module's type ids lie past vmlinux's: name kept)
                try:
                    name = self._btf.name(type_id).removeprefix("btf_trace_")
                except (BTFError, IndexError):
                    pass
            t = struct.unpack_from("<Q", info, at["run_time_ns"])[0]
            n = struct.unpack_from("<Q", info, at["run_cnt"])[0]
            prev = out.get(name, (0, 0))
            out[name] = (prev[0] + n, prev[1] + t)
        return out

    def start(self) -> None:
        self._fd = enable_stats(*self._cmd)
        self._before = self._read()

    def stop(self) -> Runs:
        """Runs since start() of every hook that ran; counting ends."""
        after = self._read()
        self.close()
        zero = (0, 0)
        runs = {name: (n - self._before.get(name, zero)[0], t - self._before.get(name, zero)[1])
                for name, (n, t) in after.items()}
        return {name: r for name, r in runs.items() if r[0]}

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunStats":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def cost(runs: Runs, seconds: float) -> dict:
    """Per hook over `seconds`: runs per second, ns per run and the share
    of one CPU spent in the programs; and the total share."""
    hooks = {}
    for hook, (n, t) in sorted(runs.items()):
        hooks[hook] = {"runs_per_s": round(n / seconds, 1), "ns_per_run": round(t / n),
                       "cpu_pct": round(t / seconds / 1e7, 4)}
    total = sum(t for _n, t in runs.values())
    return {"seconds": seconds, "hooks": hooks, "cpu_pct": round(total / seconds / 1e7, 4)}
