"""TraceSession: the live event source.

probe -> plan -> compile/attach -> poll batches. The rings (per-CPU rings,
else the BPF ring buffer, else the perf buffer: probe.transport) are filled
without per-event wake-ups and drained on a short timer; raw events are
copied out a batch at a time and decoded per batch (tracer/events.py).
Context snapshots join the same stream. Events the kernel could not queue
are counted in a BPF map and reported by `stats()`: loss is never silent.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import socket
import threading
import time
from typing import Any, Iterator

import numpy as np

from rsttrace import __version__
from rsttrace.schema import SCHEMA_VERSION
from rsttrace.schema import catalog as cat

from . import access, kernel, probe
from .bpfsys import (PerCPURingReader, RingReader, map_delete, map_keys, map_lookup, map_update,
                     percpu_u64_sum, percpu_u64_sums, possible_cpus, prog_info_u64)
from .btf import load_module, load_vmlinux
from .context import Collector, PeriodicSampler
from .events import AGG_KEY_DTYPE, AGG_VAL_DTYPE, EVENT_DTYPE, Decoder
from .loader import (RESCUE_PAGES, RINGBUF_PAGES, LoaderProcess, LoadError, build, load_detached,
                     load_inprocess, program_fds)
from .storm import STORM_GRACE_S, STORM_INTERVAL_S, STORM_RATE
from .pods import PodResolver

POLL_INTERVAL_S = 0.02
PAGE = os.sysconf("SC_PAGE_SIZE")
# events taken from the kernel per drain: a consumer that fell behind
# catches up in bounded steps instead of decoding a whole ring at once
MAX_BATCH = 16384


class SessionError(Exception):
    pass


def preflight() -> None:
    """Errors a user can fix, raised before anything is attached."""
    if os.geteuid() != 0:
        raise SessionError("tracing needs root (BPF and tracefs): run it with sudo")
    missing = access.problem()
    if missing:
        raise SessionError(missing)


# glibc's mallopt parameter (malloc.h), not a kernel value
M_TOP_PAD = -2
HEAP_PAD = 16 << 20


def keep_heap() -> None:
    """Keep 16 MiB at the top of the process's heap. Every drain allocates
    and frees arrays of megabytes (a batch of events and its text), fifty
    times a second; by default glibc hands the top of the heap back to the
    kernel after such frees and the next batch faults the pages in again.
    Measured: encoding a storm batch 1.6 -> 0.85 us per event
    (bench/bench_encode.py), the recorder's CPU at the highest storm rate
    1.75 -> 1.5 s per 3 s round, and a lower peak RSS. Nothing on a libc
    without mallopt."""
    try:
        ctypes.CDLL(None).mallopt(M_TOP_PAD, HEAP_PAD)
    except (OSError, AttributeError):
        pass


def release_heap() -> None:
    """Hand the heap's free pages back to the kernel, wherever they are.
    glibc only shrinks the heap from its top, and keep_heap() keeps 16 MiB
    there; a burst's records freed below the last live allocation stay
    resident. A long-running consumer (the agent) calls this once a burst
    is over: measured after a 200,000-reset storm (bench/bench_agent.py),
    its RSS came back to within a few MiB of its idle figure instead of
    staying at the storm's peak. Nothing on a libc without malloc_trim."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


class TraceSession:
    def __init__(self, ports: list[int] | None = None, netns: list[int] | None = None,
                 ctx_period_s: float = 1.0, transport: str | None = None,
                 netns_names: dict[int, str] | None = None,
                 ring_pages: int = RINGBUF_PAGES, rescue_pages: int = RESCUE_PAGES,
                 btf_tracepoints: bool | None = None, extra_defines: tuple[str, ...] = (),
                 accept_syscalls: bool = False, node: str | None = None, storm_rate: int | None = None):
        self._node = node       # the header's node name (default: the host name)
        self.ports = sorted(set(ports)) if ports else None
        self.netns = sorted(set(netns)) if netns else None
        self.ctx_period_s = ctx_period_s
        self._want_transport = transport   # None: the best this kernel has (probe.transport)
        self.transport = ""                 # chosen at start: percpu, ringbuf or perfbuf
        self._ring_pages = (ring_pages, rescue_pages)
        self.tp_btf_note = ""
        self._want_btf = btf_tracepoints   # None: where the kernel allows them
        self._extra_defines = tuple(extra_defines)
        # accepted sockets' owners from the accept() syscall tracepoints where
        # no fexit can learn them (probe.Capabilities.accept_syscalls)
        self._accept_syscalls = accept_syscalls
        # storm mode above this many resets per second per CPU (0: off)
        self.storm_rate = STORM_RATE if storm_rate is None else max(0, int(storm_rate))
        self._storm_epoch = 0
        self._storm_moved = 0.0
        self._storm_counted = {"sent": 0, "recv": 0}
        self.header: dict[str, Any] = {}
        self.caps: probe.Capabilities | None = None
        self.hooks: dict[str, probe.Hook] = {}
        self.program = None
        self.attach_s: float | None = None
        self._bpf = None        # bcc object: perf-buffer fallback only
        self._attached = None   # descriptors from the loader process (per-CPU rings, ring buffer)
        self._rings: list[PerCPURingReader | RingReader] = []
        self.layout: dict = {}
        self._chunks: list[bytes] = []
        self._ctx_queue: queue.SimpleQueue = queue.SimpleQueue()
        self._decoder: Decoder | None = None
        self._collector: Collector | None = None
        self._sampler: PeriodicSampler | None = None
        self._events = 0
        self._rescued = 0
        self._last_drain = 0.0
        self._behind = False   # the last drain was cut at MAX_BATCH: more is waiting
        self._perf_lost = 0
        self._lock = threading.Lock()
        self._stopped = False
        self._netns_names = netns_names or {}
        self._cb = None

    # -- lifecycle --------------------------------------------------------
    def start(self) -> "TraceSession":
        preflight()
        keep_heap()
        t0 = time.perf_counter()
        early = LoaderProcess()
        try:
            self._start(early)
        finally:
            early.close()  # not needed after all (perf buffer), or not used
            load_vmlinux.cache_clear()  # the kernel's BTF is needed only to start
            load_module.cache_clear()
        self.attach_s = time.perf_counter() - t0
        self._decoder = self._make_decoder()
        self._collector = Collector(only=self.netns)
        first_ctx = self._collector.snapshot()
        names = dict(self._collector.names)
        names.update(self._netns_names)
        # the wall and monotonic clocks read together: event times are the
        # monotonic clock converted to the wall's (tracer/events.py), so a
        # report can tell recordings of one boot whose wall clock stepped
        wall, mono = time.time(), time.monotonic()
        self.header = {
            "kind": "header", "schema": SCHEMA_VERSION, "t": round(wall, 6),
            "monotonic": round(mono, 6), "boot_id": _boot_id(), "node": self._node or socket.gethostname(),
            "host": socket.gethostname(), "kernel": os.uname().release, "tool": __version__,
            "hz": self._decoder.hz, "transport": self.transport,
            "plan": probe.plan_summary(self.hooks),
            "headers": self.program.headers.note,
            "hooks": ("BTF tracepoints" if self.program.tp_btf else "raw tracepoints")
                     + (" + bpf_rdonly_cast" if self.program.kfuncs else "")
                     + (f" ({self.tp_btf_note})" if self.tp_btf_note else ""),
            "filters": {"ports": self.ports or [], "netns": self.netns or []},
            "netns_names": {str(k): v for k, v in names.items()},
            "netns_cookies": {str(k): v for k, v in self._collector.cookies.items() if v is not None},
            "attach_s": round(self.attach_s, 3),
            "storm_rate": self.storm_rate if self._storm_on else 0,
        }
        self._ctx_queue.put(first_ctx)
        if self.ctx_period_s and self.ctx_period_s > 0:
            self._sampler = PeriodicSampler(self._collector, self.ctx_period_s, self._ctx_queue.put)
            self._sampler.start()
        return self

    def _start(self, early: LoaderProcess) -> None:
        """Probe, plan, build, load and attach; `early` is a loader process
        started ahead."""
        self.caps = probe.probe()
        if not self.caps.tracefs:
            raise SessionError(self.caps.tracefs_note)
        self.transport = self._want_transport or probe.transport(self.caps)[0]
        usable = {"percpu": self.caps.percpu_rings, "ringbuf": self.caps.ringbuf, "perfbuf": True}
        if self.transport not in usable:
            raise SessionError(f"unknown transport {self.transport!r}: one of {', '.join(usable)}")
        if not usable[self.transport]:
            raise SessionError(f"transport {self.transport} does not work on this kernel: "
                               + (self.caps.percpu_rings_note if self.transport == "percpu"
                                  else "no BPF ring buffer"))
        # perf buffers are read through bcc, which loads raw tracepoints only
        detached = self.transport != "perfbuf"
        if self._want_btf is False:
            self.caps.tp_btf, self.caps.tp_btf_note = False, "raw tracepoints asked for"
        elif not detached:
            self.caps.tp_btf, self.caps.tp_btf_note = False, "perf buffer: raw tracepoints"
        self.caps.accept_syscalls = self._accept_syscalls
        self.hooks = probe.plan(self.caps)
        if not any(h.available for k, h in self.hooks.items() if k.startswith("reset")):
            raise SessionError("no reset hook can attach on this kernel: "
                               + "; ".join(h.why for h in self.hooks.values()))
        try:
            self.program = self._build(tp_btf=self.caps.tp_btf)
            if detached:
                self._attached = self._load_detached(early)
                self.layout = self._attached.layout
            else:
                self._bpf = load_inprocess(self.program)
        except LoadError as e:
            raise SessionError(str(e)) from None
        if detached:
            maps = self._attached.maps
            if self.transport == "percpu":
                self._rings = [PerCPURingReader.open(maps["pcring"], maps["pcpos"],
                                                     *self.program.percpu, EVENT_DTYPE)]
            else:
                self._rings = [RingReader(maps["events"], self.program.ring_pages * PAGE, EVENT_DTYPE),
                               RingReader(maps["rescue"], self.program.rescue_pages * PAGE, EVENT_DTYPE)]
        else:
            self._bpf["events"].open_perf_buffer(self._on_perf_event, page_cnt=256,
                                                 lost_cb=self._on_perf_lost)

    def _load_detached(self, early: LoaderProcess):
        """Load self.program in a loader process. A verifier that refuses
        what the probe's small programs did not show gets the programs
        built again without the kfunc cast, then for raw tracepoints; each
        step said in the header."""
        while True:
            try:
                return load_detached(self.program, early)
            except LoadError as e:
                if self.program.kfuncs:
                    self.tp_btf_note = f"bpf_rdonly_cast refused, not used: {e}"
                    self.caps.rdonly_cast, self.caps.rdonly_cast_note = False, self.tp_btf_note
                elif self.program.tp_btf:
                    self.tp_btf_note = f"BTF tracepoints refused, raw tracepoints used: {e}"
                    self.caps.tp_btf, self.caps.tp_btf_note = False, self.tp_btf_note
                else:
                    raise
                self.hooks = probe.plan(self.caps)
                self.program = self._build(tp_btf=self.caps.tp_btf)

    def _build(self, tp_btf: bool):
        return build(self.caps, self.hooks, self.transport, self.ports, self.netns,
                     ring_pages=self._ring_pages[0], rescue_pages=self._ring_pages[1], tp_btf=tp_btf,
                     extra_defines=self._extra_defines, storm_rate=self.storm_rate)

    def _make_decoder(self) -> Decoder:
        hz = kernel.kernel_hz()
        # tcp states and reset reasons from the tracepoints' own tables;
        # drop reasons from BTF (the tracefs table has them too).
        states = {v: n.removeprefix("TCP_") for v, n in kernel.tcp_states().items()}
        rst = {}
        tp = kernel.tracepoint("tcp", "tcp_send_reset")
        if tp:
            rst = tp.symbols.get("reason", {})
        drops = {}
        tp = kernel.tracepoint("skb", "kfree_skb")
        if tp:
            drops = tp.symbols.get("reason", {})
        return Decoder(hz=hz, mono_to_unix=time.time() - time.monotonic(),
                       tcp_states=states, rst_reasons=rst, drop_reasons=drops,
                       pod_of=PodResolver())

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        if self._sampler:
            self._sampler.stop()
        if self._collector:
            self._collector.close()
        for ring in self._rings:
            ring.close()
        self._rings = []
        if self._attached is not None:
            self._attached.close()
            self._attached = None
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None

    def __enter__(self) -> "TraceSession":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- events -----------------------------------------------------------
    def _on_perf_event(self, cpu, data, size) -> None:
        # `size` includes the perf record's padding to 8 bytes (4 more here)
        self._chunks.append(ctypes.string_at(data, EVENT_DTYPE.itemsize))

    def _on_perf_lost(self, n) -> None:
        self._perf_lost += n

    @property
    def stopped(self) -> bool:
        """True once `stop()` has run (programs detached)."""
        return self._stopped

    @property
    def running(self) -> bool:
        return bool(self._rings) or self._bpf is not None

    def _drain_kernel(self) -> np.ndarray:
        if self._rings:
            arr, *rescue = [ring.read(MAX_BATCH) for ring in self._rings]
            rescued = sum(map(len, rescue))
            if rescued:
                # the rare events the main ring refused, back in time order
                self._rescued += rescued
                arr = np.concatenate([arr, *rescue])
                arr = arr[np.argsort(arr["ts_ns"], kind="stable")]
        elif self._bpf is not None:
            self._bpf.perf_buffer_poll(timeout=0)
            chunks, self._chunks = self._chunks, []
            arr = np.frombuffer(b"".join(chunks), dtype=EVENT_DTYPE)
        else:
            arr = np.empty(0, dtype=EVENT_DTYPE)
        self._events += len(arr)
        return arr

    def _drain_ctx(self) -> list[dict]:
        out = []
        while True:
            try:
                out.append(self._ctx_queue.get_nowait())
            except queue.Empty:
                return out

    def poll_raw(self, timeout_s: float = 0.1) -> tuple[np.ndarray, list[dict]]:
        """The next batch as raw events (decode with `self.decoder`) and
        context records; waits up to `timeout_s` for one.

        The kernel buffer is drained at most once per POLL_INTERVAL_S, even
        when called in a tight loop: a storm then arrives in batches of
        thousands, and the per-batch work is paid fifty times a second, not
        once per handful of events."""
        deadline = time.monotonic() + timeout_s
        while True:
            wait = self._last_drain + POLL_INTERVAL_S - time.monotonic()
            if wait > 0 and not self._behind:
                time.sleep(min(wait, max(0.0, deadline - time.monotonic())))
            self._last_drain = time.monotonic()
            arr = self._drain_kernel()
            self._behind = len(arr) >= MAX_BATCH
            if len(arr):
                self._note_drops(arr)
            ctx = self._drain_ctx()
            if self._storm_on and self._last_drain - self._storm_moved >= STORM_INTERVAL_S:
                ctx += self._storm_drain()
            if len(arr) or ctx or time.monotonic() >= deadline or not self.running:
                return arr, ctx

    # -- storm mode ------------------------------------------------------
    @property
    def _storm_on(self) -> bool:
        return self._attached is not None and "storm_aggs" in self._attached.maps

    def _storm_drain(self, final: bool = False) -> list[dict]:
        """Moves the programs on to the next interval and returns the
        `reset_agg` records of those no program can still be counting into:
        the ones before the interval just left (a whole interval ago), or
        with `final`, after a grace, every one. Each key read is deleted, so
        every reset counted is reported once."""
        maps = self._attached.maps
        left = self._storm_epoch
        self._storm_epoch += 1
        map_update(maps["storm_epoch"], b"\0\0\0\0", self._storm_epoch.to_bytes(4, "little"))
        self._storm_moved = time.monotonic()
        if final:
            time.sleep(STORM_GRACE_S)
        upto = left if final else left - 1
        fd, cpus = maps["storm_aggs"], possible_cpus()
        out = []
        for key in map_keys(fd, AGG_KEY_DTYPE.itemsize):
            epoch = int.from_bytes(key[AGG_KEY_DTYPE.fields["epoch"][1]:][:4], "little")
            if epoch > upto:
                continue
            try:
                values = map_lookup(fd, key, AGG_VAL_DTYPE.itemsize * cpus)
                map_delete(fd, key)
            except OSError:
                continue
            rec = self._decoder.aggregate(key, values)
            if rec is not None:
                self._storm_counted[rec["dir"]] += rec["count"]
                out.append(rec)
        out.sort(key=lambda r: r["t"])
        return out

    def flush_storms(self) -> int:
        """Storm mode: every reset counted so far, as `reset_agg` records
        queued into the stream (the next poll has them); for the end of a
        recording. Returns how many."""
        if not self._storm_on or self._stopped:
            return 0
        recs = self._storm_drain(final=True)
        for rec in recs:
            self._ctx_queue.put(rec)
        return len(recs)

    def _note_drops(self, arr: np.ndarray) -> None:
        """Namespaces where netfilter dropped a packet: the collector reads
        their reject rules, in a snapshot taken now when one is due."""
        if self._collector is None:
            return
        drops = arr["kind"] == cat.EV_CT_DROP
        if not drops.any():
            return
        if self._collector.note_drops(np.unique(arr["netns"][drops]).tolist()) and self._sampler:
            self._sampler.wake()

    @contextlib.contextmanager
    def discarding(self) -> Iterator[None]:
        """While in the block, a thread drains the rings and drops what it
        reads, so none fills (for measuring the programs, not their
        events)."""
        stop = threading.Event()

        def drain() -> None:
            while not stop.is_set():
                self.poll_raw(0.05)

        t = threading.Thread(target=drain, daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join()

    def poll(self, timeout_s: float = 0.1) -> list[dict]:
        """The next batch of records; waits up to `timeout_s` for one."""
        arr, ctx = self.poll_raw(timeout_s)
        return self._decoder.decode_array(arr) + ctx

    @property
    def decoder(self) -> Decoder:
        assert self._decoder is not None, "session not started"
        return self._decoder

    def snapshot(self) -> dict:
        """A context record taken now; it also joins the stream."""
        if self._collector is None:
            raise SessionError("session not started")
        rec = self._collector.snapshot()
        self._ctx_queue.put(rec)
        return rec

    def lost(self) -> int:
        """Events that never reached us: refused by the rings (full; counted
        by the programs), dropped by the perf buffer, and program runs the
        kernel skipped because the same program was already running on
        that CPU (a reset sent from softirq while one is being sent from
        process context)."""
        n = self._perf_lost + self.missed()
        if self._attached is not None:
            n += percpu_u64_sum(self._attached.maps["lost"])
        elif self._bpf is not None:
            n += sum(int(v) for v in self._bpf["lost"][ctypes.c_int(0)])
        return n

    def program_fds(self) -> list[int]:
        """Descriptors of the loaded programs (empty before start)."""
        if self._attached is not None:
            return list(self._attached.progs)
        if self._bpf is not None:
            return program_fds(self._bpf)
        return []

    def missed(self) -> int:
        """Program runs the kernel skipped (bpf_prog_info.recursion_misses)."""
        at = self.program.misses_at if self.program is not None else None
        if at is None:
            return 0
        total = 0
        for fd in self.program_fds():
            try:
                total += prog_info_u64(fd, at)
            except OSError:
                pass
        return total

    def tcp_transitions(self) -> dict[tuple[str, str], int]:
        """Cumulative TCP state transitions counted in the kernel since
        start: (old state, new state) -> count. Empty without the hook."""
        if self._attached is not None and "tcp_transitions" in self._attached.maps:
            counts = percpu_u64_sums(self._attached.maps["tcp_transitions"], range(256))
        elif self._bpf is not None:
            table = self._bpf["tcp_transitions"]
            counts = [sum(int(v) for v in table[ctypes.c_int(i)]) for i in range(256)]
        else:
            return {}
        names = self._decoder.tcp_states if self._decoder else {}
        out = {}
        for slot, n in enumerate(counts):
            if n:
                old, new = slot >> 4, slot & 15
                out[(names.get(old, str(old)), names.get(new, str(new)))] = n
        return out

    def stats(self) -> dict[str, int]:
        """events read, events lost (counted in the kernel), and how many of
        the events read came through the rescue ring."""
        return {"events": self._events, "lost": self.lost(), "rescued": self._rescued,
                "storm_counted": sum(self._storm_counted.values())}
