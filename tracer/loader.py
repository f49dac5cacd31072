"""Compile, load and attach the BPF programs for an attach plan (bcc).

The program text is the file bpf/rsttrace.bpf.c as it is; everything that
varies (kernel offsets, enum values, hooks, transport, filters) is a -D flag,
so `rsttrace record --dump-bpf` can print exactly what was loaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .btf import KIND_FUNC, KIND_TYPEDEF, BTF, BTFError, load_module, load_vmlinux
from . import kernel
from .kernel import Headers, find_headers
from .offsets import (ACCEPT_FIELDS, CAST_TYPES, FEXIT_RET, HEADER_CHECKS, IPVS_HEADER,
                      IPVS_HEADER_MEMBERS, IPVS_NETNS_DIRECT, IPVS_NETNS_WALK, IPVS_OFFSETS,
                      NF_DROP_FUNCS, RAW_TP_ARGS, RDONLY_CAST, SOCKET_OFFSETS, SOCKET_OPTIONAL,
                      TASK_OPTIONAL, KernelLayout, btf_tracepoint_abi, fexit_ret_index, ipvs_netns,
                      kernel_layout, nf_drop_site_define, raw_tp_layout, rdonly_cast_ids)
from .bpfsys import as_kfunc_calls, attach_btf_tracepoint, load_btf_tracepoint, possible_cpus
from .storm import STORM_SAMPLE
from .probe import PERCPU_MIN_SLOTS, SLOT_SIZE, Capabilities, Hook

TRACEPOINT_DEFINES = {
    "tcp:tcp_send_reset": "HAVE_TP_SEND_RESET",
    "tcp:tcp_receive_reset": "HAVE_TP_RECEIVE_RESET",
    "sock:inet_sock_set_state": "HAVE_TP_SET_STATE",
    "tcp:tcp_destroy_sock": "HAVE_TP_DESTROY_SOCK",
    "skb:kfree_skb": "HAVE_TP_KFREE_SKB",
    "printk:console": "HAVE_TP_CONSOLE",
}
# which tracepoint programs serve which signal
_SIGNAL_TPS = {
    "reset_sent": ("tcp:tcp_send_reset",),
    "reset_recv": ("tcp:tcp_receive_reset",),
    "ct_drop": ("skb:kfree_skb",),
    "ct_full": ("printk:console",),
    "owner": ("sock:inet_sock_set_state", "tcp:tcp_destroy_sock"),
}
RINGBUF_PAGES = 4096  # 16 MiB: ~77,000 events, 0.5 s of the fastest storm measured here
# the second ring, used only when the first refuses a reservation
RESCUE_PAGES = 256
# filters are compiled in as comparisons with constants
MAX_FILTER_VALUES = 64
# the TCP states the programs compare against
TCP_STATES = ("TCP_SYN_SENT", "TCP_CLOSE", "TCP_TIME_WAIT", "TCP_NEW_SYN_RECV")


class LoadError(Exception):
    pass


# ---- the program's configuration: every -D flag, once ---------------------

@dataclass(frozen=True)
class Define:
    """A -D flag the loader may pass: a macro, or a family of them (a name
    with a `*`, whose members are `names`), and what it carries."""
    name: str
    doc: str
    names: tuple[str, ...] = ()

    def matches(self, macro: str) -> bool:
        return macro in self.names if "*" in self.name else macro == self.name


#: Every -D flag build() passes to bpf/rsttrace.bpf.c, and nothing else: the
#: program's whole configuration. build() refuses a flag missing here, and
#: the .c's opening comment lists this table as `python -m
#: rsttrace.tracer.loader` writes it (a unit test compares).
DEFINES = (
    Define("OFF_*", "struct member offsets, from the running kernel's BTF (tracer/offsets.py)",
           tuple(sorted({*SOCKET_OFFSETS, *SOCKET_OPTIONAL, *TASK_OPTIONAL, *ACCEPT_FIELDS, *IPVS_OFFSETS,
                         *IPVS_NETNS_DIRECT, *IPVS_NETNS_WALK}))),
    Define("ARG_*", "argument positions of raw tracepoints, and of an fexit program's return value, from "
           "their BTF prototypes", tuple(sorted({*RAW_TP_ARGS, *FEXIT_RET.values()}))),
    Define("SOCK_KEEPOPEN_BIT", "enum sock_flags.SOCK_KEEPOPEN, from BTF"),
    Define("NETFILTER_DROP_REASON", "SKB_DROP_REASON_NETFILTER_DROP of enum skb_drop_reason, from BTF "
           "(5.17+)"),
    Define("CT_DROP_DERIVED", "before 5.17 (skb:kfree_skb has no reason): a netfilter drop told by where "
           "the packet was freed, with NF_DROP_SITE"),
    Define("NF_DROP_SITE", "NF_DROP_SITE(addr): whether a code address lies in netfilter's drop sites "
           "(offsets.NF_DROP_FUNCS, their ranges from /proc/kallsyms), compared with constants"),
    Define("TCP_*_", "the TCP states the programs compare with, from the kernel's own table (tracefs)",
           tuple(f"{s}_" for s in TCP_STATES)),
    Define("AF_INET", "the address family values user space uses"),
    Define("AF_INET6", "(the same)"),
    Define("IPPROTO_TCP", "(the same)"),
    Define("TP_BTF", "tracepoints as BTF tracepoints (plain loads), else raw tracepoints"),
    Define("CALL_SOCKET_COOKIE", "BTF programs may call bpf_get_socket_cookie (5.12+): the owner table "
           "tells sockets apart by cookie"),
    Define("CALL_TASK_BTF", "BTF programs may call bpf_get_current_task_btf (5.11+): the task's fields "
           "as plain loads"),
    Define("KFUNC_RDONLY_CAST", f"BTF id of {RDONLY_CAST}: tcp_sock and packet headers typed by a cast"),
    Define("BTF_*", "BTF ids of the structs cast to (with KFUNC_RDONLY_CAST)", tuple(sorted(CAST_TYPES))),
    Define("HAVE_TP_*", "each tracepoint to attach", tuple(sorted(TRACEPOINT_DEFINES.values()))),
    Define("HAVE_TP_SEND_RESET_REASON", "tcp:tcp_send_reset carries the reset's reason (6.10+)"),
    Define("HAVE_FEXIT_ACCEPT", "owners of accepted sockets from an fexit on inet_csk_accept"),
    Define("HAVE_TP_ACCEPT", "owners of accepted sockets from syscalls:sys_exit_accept4 (record "
           "--accept-syscalls)"),
    Define("HAVE_TP_ACCEPT_PLAIN", "and from syscalls:sys_exit_accept"),
    Define("WANT_KPROBE_SEND_RESET", "kprobes on tcp_v4/v6_send_reset (no-socket resets before 6.10)"),
    Define("WANT_KPROBE_TCP_RESET", "kprobe on tcp_reset (no tcp:tcp_receive_reset)"),
    Define("WANT_KPROBE_IPVS_EXPIRE", "kprobe on ip_vs_conn_expire"),
    Define("WANT_KRETPROBE_CT_ALLOC", "kretprobe on __nf_conntrack_alloc"),
    Define("NET_NAMESPACE_LIST", "address of net_namespace_list (/proc/kallsyms): an IPVS entry's "
           "namespace found by walking the list"),
    Define("USE_PCRING", "per-CPU rings, with PCRING_CPUS and PCRING_SLOTS"),
    Define("PCRING_CPUS", "(per-CPU rings)"),
    Define("PCRING_SLOTS", "(per-CPU rings)"),
    Define("USE_RINGBUF", "the BPF ring buffer, with RINGBUF_PAGES and RESCUE_PAGES (neither: the perf "
           "buffer)"),
    Define("RINGBUF_PAGES", "(BPF ring buffer)"),
    Define("RESCUE_PAGES", "(BPF ring buffer)"),
    Define("PORT_WANTED", "PORT_WANTED(p): the --port filter, compared with constants (no map lookup)"),
    Define("NETNS_WANTED", "NETNS_WANTED(ns): the --netns filter, the same way"),
    Define("STORM_RATE", "storm mode: above this many resets per second on a CPU, resets are counted per key "
           "and only a sample sent in full (record --storm-rate; absent: every reset in full)"),
    Define("STORM_SAMPLE", "(storm mode) full events per key, interval and CPU (tracer/storm.py)"),
    Define("BENCH_RETURN_EARLY", "bench/bench_storm.py --floor only"),
    Define("BENCH_MINIMAL", "(the same)"),
)


def defines_comment() -> str:
    """DEFINES as the lines of bpf/rsttrace.bpf.c's opening comment."""
    out = []
    for d in DEFINES:
        out += textwrap.wrap(d.doc, 78, initial_indent=f" *   {d.name}  ", subsequent_indent=" *       ",
                             break_on_hyphens=False)
    return "\n".join(out) + "\n"


def _check_defines(cflags: list[str]) -> None:
    """Every -D flag is one of DEFINES (a flag added elsewhere without its
    line there fails here, in every build)."""
    for flag in cflags:
        if flag.startswith("-D"):
            macro = flag[2:].split("=", 1)[0].split("(", 1)[0]
            if not any(d.matches(macro) for d in DEFINES):
                raise LoadError(f"-D{macro} is not in tracer/loader.py DEFINES: add it there")


def bpf_dir() -> Path:
    return Path(str(resources.files("rsttrace.bpf")))


def program_text() -> str:
    return (bpf_dir() / "rsttrace.bpf.c").read_text()


@dataclass
class Program:
    text: str
    cflags: list[str]
    layout: KernelLayout
    headers: Headers
    attach: list[tuple[str, str, str]] = field(default_factory=list)
    ring_pages: int = RINGBUF_PAGES
    rescue_pages: int = RESCUE_PAGES
    # where struct bpf_prog_info keeps the runs the kernel skipped because
    # the program was already running on that CPU (None: kernel too old)
    misses_at: int | None = None
    # BTF tracepoints: btf_trace_<name> type ids and the bpf() enum values
    # to load them with (empty: raw tracepoints, attached by bcc)
    btf_ids: dict[str, int] = field(default_factory=dict)
    abi: dict[str, int] = field(default_factory=dict)
    transport: str = "ringbuf"        # probe.transport(): percpu, ringbuf or perfbuf
    percpu: tuple[int, int] = (0, 0)  # per-CPU rings: (CPUs, slots each)
    # BTF ids of the kfuncs the BTF programs call (written as helper calls
    # with these numbers: bpfsys.as_kfunc_calls)
    kfuncs: list[int] = field(default_factory=list)

    @property
    def tp_btf(self) -> bool:
        return bool(self.btf_ids)


def build(caps: Capabilities, hooks: dict[str, Hook], transport: str,
          ports: list[int] | None, netns: list[int] | None,
          btf: BTF | None = None, ring_pages: int = RINGBUF_PAGES,
          rescue_pages: int = RESCUE_PAGES, tp_btf: bool = False,
          extra_defines: tuple[str, ...] = (), storm_rate: int = 0) -> Program:
    """The program text and flags for this kernel. With `tp_btf` the
    tracepoint programs are BTF tracepoints (fields read as plain loads,
    loaded by us); without, raw tracepoints (probe reads, attached by bcc).
    `storm_rate` > 0: storm mode above that many resets per second per CPU
    (not with the perf buffer, whose reader has no map access but bcc's)."""
    headers = find_headers()
    if headers.build is None:
        raise LoadError(headers.note)
    btf = btf or load_vmlinux()
    ipvs_btf = None
    ipvs = hooks.get("ipvs_expire")
    if ipvs and ipvs.available and caps.ipvs_btf:
        ipvs_btf = load_module("ip_vs", btf) or btf
    netns_list = None
    try:
        layout = kernel_layout(btf, ipvs_btf)
        if ipvs_btf is not None:
            netns_list = ipvs_netns(btf, ipvs_btf, layout, kernel.ksym_address)[1]
    except BTFError as e:
        raise LoadError(f"cannot read kernel struct layout from BTF: {e}") from None
    if ipvs and ipvs.available and not caps.ipvs_btf:
        try:
            offsets = header_layout(IPVS_HEADER, IPVS_HEADER_MEMBERS, layout)
        except LoadError as e:
            # the rest traces on; the plan (and so the recording's header)
            # says why IPVS expiry does not
            hooks["ipvs_expire"] = Hook("ipvs_expire", False, None,
                                        f"struct ip_vs_conn layout unknown: {e}")
        else:
            layout.defines.update(offsets)
            layout.sources.update({d: f"{IPVS_HEADER_MEMBERS[d][0]}.{IPVS_HEADER_MEMBERS[d][1][0]} "
                                   f"(headers {caps.ipvs_headers})" for d in offsets})
    defines = [f"-I{bpf_dir()}"] + layout.cflags() + [
        f"-D{name}={int(getattr(socket, name))}" for name in ("AF_INET", "AF_INET6", "IPPROTO_TCP")]
    defines += tcp_state_defines()
    tps = set()
    attach: list[tuple[str, str, str]] = []
    for name, hook in hooks.items():
        if not hook.available:
            continue
        defines += [f"-D{d}" for d in hook.defines]
        attach += hook.attach
        for tp in _SIGNAL_TPS.get(name, ()):
            if caps.has_tp(tp):
                tps.add(tp)
    if tp_btf:
        helpers = [d for d, why in caps.btf_helpers.items() if not why]
        defines += [f"-D{d}" for d in sorted(helpers)]
        if "CALL_SOCKET_COOKIE" in helpers:
            # the owner table tells sockets apart by cookie: no program on
            # every socket's destruction (bpf/rsttrace.bpf.c, struct owner)
            tps.discard("tcp:tcp_destroy_sock")
    # raw tracepoints: argument positions from each one's BTF prototype
    args, missing = raw_tp_layout(btf)
    unusable = sorted(tp for tp in tps if tp.split(":")[1] in missing)
    if unusable:
        raise LoadError("cannot place raw tracepoint arguments: " +
                        "; ".join(f"{tp}: {missing[tp.split(':')[1]]}" for tp in unusable))
    defines += [f"-D{k}={v}" for k, v in sorted(args.items())]
    layout.defines.update(args)
    layout.sources.update({k: "btf_trace_" + RAW_TP_ARGS[k][0] for k in args})
    defines += [f"-D{TRACEPOINT_DEFINES[tp]}" for tp in sorted(tps)]
    percpu = (0, 0)
    if transport == "percpu":
        percpu = percpu_ring_size(ring_pages)
        defines += ["-DUSE_PCRING", f"-DPCRING_CPUS={percpu[0]}", f"-DPCRING_SLOTS={percpu[1]}"]
    elif transport == "ringbuf":
        for pages in (ring_pages, rescue_pages):
            if pages < 1 or pages & (pages - 1):
                raise LoadError(f"ring buffer pages must be a power of 2, got {pages}")
        defines += ["-DUSE_RINGBUF", f"-DRINGBUF_PAGES={ring_pages}", f"-DRESCUE_PAGES={rescue_pages}"]
    if storm_rate > 0 and transport != "perfbuf":
        defines += [f"-DSTORM_RATE={int(storm_rate)}", f"-DSTORM_SAMPLE={STORM_SAMPLE}"]
    if netns_list is not None:
        defines.append(f"-DNET_NAMESPACE_LIST={netns_list:#x}ULL")
    ct_drop = hooks.get("ct_drop")
    if ct_drop and ct_drop.available and "CT_DROP_DERIVED" in ct_drop.defines:
        # netfilter's drop sites: where this boot's kernel put them
        ranges = kernel.ksym_ranges(NF_DROP_FUNCS)
        if not ranges:
            raise LoadError("netfilter's drop sites are not in /proc/kallsyms: ct_drop cannot "
                            "be derived on this kernel")
        defines.append(nf_drop_site_define(ranges))
    if ports:
        defines.append(filter_define("PORT_WANTED", ports, 0xFFFF))
    if netns:
        defines.append(filter_define("NETNS_WANTED", netns, 0xFFFFFFFF))
    defines += [f"-D{d}" for d in extra_defines]   # the benchmark's lower bounds (bench_storm --floor)
    btf_ids: dict[str, int] = {}
    abi: dict[str, int] = {}
    kfuncs: list[int] = []
    if tp_btf:
        try:
            abi = btf_tracepoint_abi(btf)
            for tp in sorted(tps):
                name = tp.split(":")[1]
                btf_ids[name] = btf.find(f"btf_trace_{name}", (KIND_TYPEDEF,))
                attach.append(("tp_btf", name, f"tpbtf__{name}"))
            for kind, func, _fn in attach:
                if kind == "fexit":
                    btf_ids[func] = btf.find(func, (KIND_FUNC,))
                    defines.append(f"-D{FEXIT_RET[func]}={fexit_ret_index(btf, btf_ids[func])}")
            if caps.rdonly_cast:
                casts = rdonly_cast_ids(btf)
                defines += [f"-D{k}={v}" for k, v in casts.items()]
                layout.defines.update(casts)
                layout.sources.update({k: f"BTF id of {RDONLY_CAST}" if k == "KFUNC_RDONLY_CAST"
                                       else f"BTF id of struct {CAST_TYPES[k]}" for k in casts})
                kfuncs = [casts["KFUNC_RDONLY_CAST"]]
        except BTFError as e:
            raise LoadError(f"BTF tracepoints: {e}") from None
        defines.append("-DTP_BTF")
    try:
        misses_at = btf.field("bpf_prog_info", "recursion_misses")[0]
    except BTFError:
        misses_at = None
    _check_defines(defines)
    return Program(program_text(), defines, layout, headers, attach, ring_pages, rescue_pages,
                   misses_at, btf_ids, abi, transport, percpu, kfuncs)


# header_layout's answers, per process: the headers of a running kernel do
# not change, and reading them costs a compile of the kernel headers they
# pull in (~1.7 s here; more than a minute in an emulated guest)
_HEADER_LAYOUTS: dict[tuple, dict[str, int]] = {}


def header_layout(header: str, members: dict[str, tuple[str, tuple[str, ...]]],
                  btf_layout: KernelLayout, timeout_s: float = 600.0) -> dict[str, int]:
    """Offsets of `members` (define -> (struct, member paths): the first
    path) from `header` in the running kernel's exact headers, which bcc
    compiles bpf/layout.c against, in a short-lived process (LLVM stays out
    of this one). The headers must agree with `btf_layout` on the members
    of offsets.HEADER_CHECKS. LoadError when they do not compile or agree."""
    checks = []
    for define in HEADER_CHECKS:
        struct_name, _, path = btf_layout.sources[define].partition(".")
        checks.append(f"X({struct_name},{path},{btf_layout.defines[define]})")
    cflags = [f"-DHEADER=<{header}>",
              "-DMEMBERS(X)=" + " ".join(f"X({d},{s},{paths[0]})" for d, (s, paths) in members.items()),
              "-DCHECKS(X)=" + " ".join(checks)]
    key = (os.uname().release, tuple(cflags))
    if key in _HEADER_LAYOUTS:
        return _HEADER_LAYOUTS[key]
    req = json.dumps({"text": (bpf_dir() / "layout.c").read_text(), "cflags": cflags,
                      "functions": list(members)})
    try:
        p = subprocess.run([sys.executable, "-m", "rsttrace.tracer.loader_child", "--layout"],
                           input=req, capture_output=True, text=True, timeout=timeout_s)
        answer = json.loads(p.stdout or "{}")
    except (OSError, ValueError, subprocess.TimeoutExpired) as e:
        raise LoadError(f"reading {header} of the running kernel failed: {e}") from None
    if "offsets" not in answer:
        raise LoadError(answer.get("error") or f"reading {header} failed: {p.stderr.strip()[-600:]}")
    _HEADER_LAYOUTS[key] = answer["offsets"]
    return answer["offsets"]


def percpu_ring_size(ring_pages: int) -> tuple[int, int]:
    """(CPUs, slots per CPU) of the per-CPU rings: `ring_pages` of memory
    shared out, a power of two each, at least probe.PERCPU_MIN_SLOTS (a
    storm may land on one CPU)."""
    cpus = possible_cpus()
    each = ring_pages * os.sysconf("SC_PAGE_SIZE") // SLOT_SIZE // cpus
    return cpus, max(PERCPU_MIN_SLOTS, 1 << max(0, each.bit_length() - 1))



def tcp_state_defines() -> list[str]:
    """-DTCP_SYN_SENT_=2 ... for TCP_STATES, from the kernel's own table."""
    values = {name: value for value, name in kernel.tcp_states().items()}
    missing = [state for state in TCP_STATES if state not in values]
    if missing:
        raise LoadError(f"cannot read the TCP state values {', '.join(missing)} from tracefs "
                        "(sock:inet_sock_set_state or tcp:tcp_send_reset format)")
    return [f"-D{state}_={values[state]}" for state in TCP_STATES]


def filter_define(name: str, values: list[int], top: int) -> str:
    """-DNAME(x)=((x)==v1||(x)==v2...): a filter the program evaluates
    with no map lookup."""
    values = sorted(set(int(v) for v in values))
    if not values:
        raise LoadError(f"{name}: empty filter")
    if len(values) > MAX_FILTER_VALUES:
        raise LoadError(f"at most {MAX_FILTER_VALUES} values per filter, got {len(values)}")
    bad = [v for v in values if not 0 <= v <= top]
    if bad:
        raise LoadError(f"{name}: {bad[0]} is out of range")
    return f"-D{name}(x)=(" + "||".join(f"(x)=={v}U" for v in values) + ")"


@contextlib.contextmanager
def _quiet_stderr():
    """bcc's clang prints warnings from the foreign headers on fd 2; keep
    them, and show them only when compiling fails."""
    saved = os.dup(2)
    tmpf = tempfile.TemporaryFile()
    os.dup2(tmpf.fileno(), 2)
    try:
        yield tmpf
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        tmpf.close()


# maps the consumer needs after loading
MAPS = ("events", "rescue", "pcring", "pcpos", "lost", "owners", "tcp_transitions", "storm_aggs",
        "storm_epoch")


@dataclass
class Attached:
    """Programs loaded and attached by the loader process; these
    descriptors keep them alive. Closing them detaches everything."""
    maps: dict[str, int]
    links: list[int]
    layout: dict
    tracepoints: list[str]
    progs: list[int] = field(default_factory=list)
    _closed: bool = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for fd in [*self.links, *self.progs, *self.maps.values()]:
            try:
                os.close(fd)
            except OSError:
                pass


class LoaderProcess:
    """A loader process (loader_child.py), started before it is needed: its
    interpreter start and bcc import overlap the caller's probing and
    building. One load each; `close` ends one that was never used."""

    def __init__(self):
        self._parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # Debian's bcc lives in /usr/lib/python3/dist-packages: same interpreter
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "rsttrace.tracer.loader_child", str(child.fileno())],
            stdin=subprocess.PIPE, pass_fds=[child.fileno()], text=True)
        child.close()
        self.used = False

    def load(self, program: Program, timeout_s: float = 120.0) -> Attached:
        """Compile and attach `program` there and take over its descriptors."""
        if self.used:
            raise LoadError("this loader process has already loaded a program")
        self.used = True
        parent, proc = self._parent, self._proc
        req = json.dumps({"text": program.text, "cflags": program.cflags, "attach": program.attach,
                          "btf_ids": program.btf_ids, "abi": program.abi, "kfuncs": program.kfuncs,
                          "maps": list(MAPS)})
        try:
            proc.stdin.write(req)
            proc.stdin.close()
            parent.settimeout(timeout_s)
            head, fds, _flags, _addr = socket.recv_fds(parent, 4, 64)
            if len(head) < 4:
                raise LoadError("the BPF loader process died without an answer")
            size = int.from_bytes(head, "little")
            body = b""
            while len(body) < size:
                chunk = parent.recv(size - len(body))
                if not chunk:
                    break
                body += chunk
            meta = json.loads(body)
        except (OSError, ValueError) as e:
            proc.kill()
            raise LoadError(f"the BPF loader process failed: {e}") from None
        finally:
            parent.close()
            proc.wait(timeout=30)
        if "error" in meta:
            raise LoadError(meta["error"])
        return Attached({name: fds[i] for name, i in meta["maps"].items()},
                        [fds[i] for i in meta["links"]], meta["layout"], meta["tracepoints"],
                        [fds[i] for i in meta.get("progs", [])])

    def close(self) -> None:
        if self.used:
            return
        self.used = True
        self._proc.kill()
        self._proc.wait(timeout=30)
        self._parent.close()
        try:
            self._proc.stdin.close()
        except OSError:
            pass


def load_detached(program: Program, loader: LoaderProcess | None = None) -> Attached:
    """Compile and attach in a short-lived loader process (bcc and LLVM stay
    there) and take over its descriptors: in `loader` when one was started
    ahead and is still unused, else in a new one."""
    if loader is None or loader.used:
        loader = LoaderProcess()
    return loader.load(program)


def load_inprocess(program: Program):
    """Compile and attach here; returns the bcc BPF object. Used for the
    perf-buffer fallback (kernels without a ring buffer), whose reading
    goes through bcc."""
    return compile_and_attach(program.text, program.cflags, program.attach, program.btf_ids,
                              program.abi, program.kfuncs)


def compile_and_attach(text: str, cflags: list[str], attach: list,
                       btf_ids: dict[str, int] | None = None, abi: dict[str, int] | None = None,
                       kfuncs: list[int] = ()):
    """bcc compile + load (raw tracepoint programs attach themselves), BTF
    tracepoint and fexit programs loaded and attached from bcc's bytecode, kprobes
    attached. Used in this process and in the loader process
    (loader_child.py); their calls of `kfuncs` are made kfunc calls. The
    BTF tracepoints' descriptors are in
    `b.rsttrace_btf_tps` as (prog fd, link fd)."""
    try:
        from bcc import BPF
    except ImportError:
        raise LoadError("bcc is not importable: run scripts/install.sh (it installs Debian's "
                        "python3-bpfcc and a venv that can see it)") from None
    with _quiet_stderr() as errlog:
        try:
            b = BPF(text=text, cflags=cflags)
        except Exception as e:
            errlog.seek(0)
            msg = errlog.read().decode(errors="replace")[-3000:]
            raise LoadError(f"BPF program failed to load: {e}\n{msg}") from None
    b.rsttrace_btf_tps = []
    for kind, target, fn in attach:
        if kind in ("tp_btf", "fexit"):
            try:
                prog = load_btf_tracepoint(as_kfunc_calls(b.dump_func(fn), kfuncs), fn,
                                           btf_ids[target], abi,
                                           attach_type="BPF_TRACE_FEXIT" if kind == "fexit"
                                           else "BPF_TRACE_RAW_TP")
                b.rsttrace_btf_tps.append((prog, attach_btf_tracepoint(prog, abi)))
            except (OSError, KeyError) as e:
                for fds in b.rsttrace_btf_tps:
                    for fd in fds:
                        os.close(fd)
                b.cleanup()
                what = "fexit" if kind == "fexit" else "BTF tracepoint"
                raise LoadError(f"{what} {target} refused: {e}") from None
        elif kind == "kprobe":
            b.attach_kprobe(event=target, fn_name=fn)
        elif kind == "kretprobe":
            b.attach_kretprobe(event=target, fn_name=fn)
    return b


def program_fds(b) -> list[int]:
    """Descriptors of every program loaded for `b` (a compile_and_attach
    result): bcc's own and the BTF tracepoints loaded from its bytecode."""
    fds = [fn.fd for fn in b.funcs.values() if fn.fd is not None and fn.fd >= 0]
    return fds + [prog for prog, _link in getattr(b, "rsttrace_btf_tps", [])]


if __name__ == "__main__":
    # python -m rsttrace.tracer.loader: the -D list of the .c's opening comment
    sys.stdout.write(defines_comment())
