"""Capability probe and attach plan.

`probe()` gathers what the running kernel offers (pure reads, plus mounting
tracefs when missing); `plan(caps)` is a pure function from those facts to
the hook chosen for every signal, so the choice is unit-tested on fake
kernels. A signal with no usable hook is in the plan as unavailable with the
reason: nothing is silently missing.
"""

from __future__ import annotations

import ctypes
import os
import resource
from dataclasses import dataclass, field
from pathlib import Path

from . import kernel
from .bpfsys import _bpf, percpu_slot_dtype, possible_cpus
from .events import EVENT_DTYPE
from .offsets import (ACCEPT_FIELDS, IPVS_HEADER, IPVS_OFFSETS, NF_DROP_FUNCS, KernelLayout,
                      ipvs_netns, unresolved)

# tracepoints rsttrace can use: (group, name)
TRACEPOINTS = (
    ("tcp", "tcp_send_reset"), ("tcp", "tcp_receive_reset"), ("skb", "kfree_skb"),
    ("printk", "console"), ("sock", "inet_sock_set_state"), ("tcp", "tcp_destroy_sock"),
    ("syscalls", "sys_exit_accept4"), ("syscalls", "sys_exit_accept"),
)
KPROBE_SYMBOLS = ("tcp_v4_send_reset", "tcp_v6_send_reset", "tcp_reset",
                  "ip_vs_conn_expire", "__nf_conntrack_alloc")


@dataclass
class Capabilities:
    kernel: str
    tracefs: bool = False
    tracefs_note: str = ""
    tracepoints: dict[str, list[str]] = field(default_factory=dict)  # "g:n" -> fields
    kprobes: bool = False
    kprobes_note: str = ""
    kprobe_symbols: dict[str, bool] = field(default_factory=dict)
    fentry: bool = False     # fexit programs load and attach (tried for real)
    fentry_note: str = ""
    ringbuf: bool = False
    percpu_rings: bool = False   # the programs' own per-CPU rings can work here
    percpu_rings_note: str = ""
    btf: bool = False
    tp_btf: bool = False     # BTF tracepoints load (fields read without helper calls)
    tp_btf_note: str = ""
    # helpers BTF programs may call here (tried for real): BTF_HELPERS name
    # -> why not ("" where they may); the programs do without the others
    btf_helpers: dict[str, str] = field(default_factory=dict)
    # BTF programs may call bpf_rdonly_cast (tried for real): a tcp_sock and
    # packet headers read as plain loads
    rdonly_cast: bool = False
    rdonly_cast_note: str = "no BTF"
    netfilter_drop_reason: int | None = None
    # kernels whose skb:kfree_skb has no reason (before 5.17): the functions
    # of offsets.NF_DROP_FUNCS whose code ranges /proc/kallsyms gives (a
    # drop there is a netfilter drop), or why none
    nf_drop_sites: list[str] = field(default_factory=list)
    nf_drop_note: str = ""
    conntrack: bool = False
    ipvs: bool = False
    ipvs_note: str = ""
    ipvs_btf: bool = False      # BTF (ip_vs's own, or vmlinux's) describes struct ip_vs_conn
    ipvs_headers: str = ""      # else: this kernel's exact headers, which declare it
    ipvs_layout_note: str = ""  # where struct ip_vs_conn's layout comes from, or why from nowhere
    ipvs_netns_note: str = ""   # how an IPVS expiry's namespace is learned (offsets.ipvs_netns)
    # why an accepted socket's file cannot be followed in this kernel's BTF
    # ("": it can; offsets.ACCEPT_FIELDS)
    accept_fields_note: str = "no BTF"
    # the user's choice, not the kernel's: learn accepted sockets' owners
    # from the accept() syscall tracepoints where no fexit can (enabling any
    # syscall tracepoint slows every syscall on the host)
    accept_syscalls: bool = False

    def has_tp(self, name: str, fieldname: str | None = None) -> bool:
        fields = self.tracepoints.get(name)
        if fields is None:
            return False
        return fieldname is None or fieldname in fields


@dataclass
class Hook:
    signal: str
    available: bool
    hook: str | None
    why: str
    defines: list[str] = field(default_factory=list)  # -D names the program needs
    attach: list[tuple[str, str, str]] = field(default_factory=list)  # (type, target, fn)


def _bpf_map_create(map_type: int, key_size: int, value_size: int, max_entries: int,
                    flags: int = 0) -> bool:
    """Create and close a map with the bpf() syscall: the honest test of
    whether this kernel (and our privileges) support that map type."""
    attr = (ctypes.c_uint32 * 30)()
    attr[0], attr[1], attr[2], attr[3], attr[4] = map_type, key_size, value_size, max_entries, flags
    try:
        os.close(_bpf(BPF_MAP_CREATE, attr))
    except OSError:
        return False
    return True


# include/uapi/linux/bpf.h (stable UAPI)
BPF_MAP_CREATE = 0
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_RINGBUF = 27
BPF_F_MMAPABLE = 1 << 10
# Per-CPU rings need a full-size ring on every possible CPU (a storm can
# land on one): at least this many slots each, and at most PERCPU_MAX_MEMORY in
# all; hosts with more CPUs than that allows use the shared ring buffer.
PERCPU_MIN_SLOTS = 8192
PERCPU_MAX_MEMORY = 64 << 20
# struct pc_slot in bpf/rsttrace.bpf.c; a kernel test checks it against the compiled one
SLOT_SIZE = percpu_slot_dtype(EVENT_DTYPE).itemsize


def _load_probe_program(btf, insns: bytes, fexit: str | None = None) -> None:
    """Load (and drop) `insns` as a BTF tracepoint program, or with `fexit`
    as an fexit program on that kernel function, attached and detached;
    raises BTFError or OSError (with the verifier's last words) when it
    does not load or attach."""
    from .bpfsys import attach_btf_tracepoint, load_btf_tracepoint
    from .btf import KIND_FUNC, KIND_TYPEDEF
    from .offsets import btf_tracepoint_abi
    abi = btf_tracepoint_abi(btf)
    if fexit is None:
        tid = btf.find("btf_trace_tcp_receive_reset", (KIND_TYPEDEF,))
        os.close(load_btf_tracepoint(insns, "rsttrace_probe", tid, abi, log_size=4096))
        return
    fd = load_btf_tracepoint(insns, "rsttrace_probe", btf.find(fexit, (KIND_FUNC,)), abi,
                             log_size=4096, attach_type="BPF_TRACE_FEXIT")
    try:
        os.close(attach_btf_tracepoint(fd, abi))
    finally:
        os.close(fd)


# r0 = 0; exit
RETURN_0 = bytes([0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0])


def _try_tp_btf(btf) -> tuple[bool, str]:
    """Whether this kernel and our privileges allow BTF tracepoints: an
    empty one loaded for real."""
    from .btf import BTFError
    try:
        _load_probe_program(btf, RETURN_0)
        return True, "BTF tracepoints load: fields are read without a helper call each"
    except (BTFError, OSError) as e:
        return False, f"BTF tracepoints do not load ({e}): raw tracepoints with probe reads"


def _try_fexit(btf) -> tuple[bool, str]:
    """Whether fexit programs load and attach here: an empty one on the
    function rsttrace uses (inet_csk_accept), attached and detached."""
    from .btf import BTFError
    try:
        _load_probe_program(btf, RETURN_0, fexit="inet_csk_accept")
    except (BTFError, OSError) as e:
        return False, f"fexit programs do not load or attach here ({str(e).rstrip(': ')})"
    return True, "fexit programs load and attach"


# Helpers the BTF programs call where the kernel lets tracing programs call
# them, each loaded for real once: the socket's cookie (5.12), which tells a
# socket from a later one in the same memory (without it the programs empty
# an owner entry at the socket's destruction, as raw tracepoints do), and
# the current task as a BTF pointer (5.11), whose fields are plain loads
# (without it, a helper call each). -D name -> (helper, program).
def _helper_call(helper_id: int, sk_arg: bool) -> bytes:
    load_sk = bytes([0x79, 0x11, 0, 0, 0, 0, 0, 0]) if sk_arg else b""   # r1 = ctx[0] (the socket)
    return load_sk + bytes([0x85, 0, 0, 0]) + helper_id.to_bytes(4, "little") + RETURN_0


BTF_HELPERS = {"CALL_SOCKET_COOKIE": ("get_socket_cookie", True),
               "CALL_TASK_BTF": ("get_current_task_btf", False)}


def _try_btf_helpers(btf, tp_btf: bool) -> dict[str, str]:
    """BTF_HELPERS define -> "" where BTF tracepoints may call its helper,
    else why not."""
    from .btf import BTFError
    out = {}
    for define, (helper, sk_arg) in BTF_HELPERS.items():
        if not tp_btf:
            out[define] = "no BTF tracepoints"
            continue
        try:
            helper_id = btf.enum("bpf_func_id").get(f"BPF_FUNC_{helper}")
            if helper_id is None:
                raise BTFError(f"no helper {helper} in this kernel")
            _load_probe_program(btf, _helper_call(helper_id, sk_arg))
            out[define] = ""
        except (BTFError, OSError) as e:
            out[define] = f"bpf_{helper} not callable from BTF programs ({str(e).rstrip(': ')})"
    return out


def _try_rdonly_cast(btf, tp_btf: bool) -> tuple[bool, str]:
    """Whether BTF tracepoint programs may call the bpf_rdonly_cast kfunc
    (6.2+): one that casts to tcp_sock, loaded for real."""
    from .bpfsys import BPF_PSEUDO_KFUNC_CALL
    from .btf import BTFError
    from .offsets import RDONLY_CAST, rdonly_cast_ids
    if not tp_btf:
        return False, "BTF tracepoints do not load: no kfunc calls"
    try:
        ids = rdonly_cast_ids(btf)
    except BTFError as e:
        return False, f"no {RDONLY_CAST} in this kernel (before 6.2?): {e}"
    insns = b"".join([
        bytes([0xb7, 0x01, 0, 0]) + (0).to_bytes(4, "little"),                      # r1 = 0
        bytes([0xb7, 0x02, 0, 0]) + ids["BTF_TCP_SOCK"].to_bytes(4, "little"),      # r2 = id
        bytes([0x85, BPF_PSEUDO_KFUNC_CALL << 4, 0, 0])
        + ids["KFUNC_RDONLY_CAST"].to_bytes(4, "little"),                          # call kfunc
        RETURN_0])
    try:
        _load_probe_program(btf, insns)
    except (BTFError, OSError) as e:
        return False, f"{RDONLY_CAST} refused ({str(e).rstrip(': ')}): helper calls and probe reads"
    return True, f"{RDONLY_CAST}: tcp_sock and packet headers read as plain loads"


# r0 = 0, then one 64-bit compare-and-swap on the stack
CAS_PROGRAM = bytes([
    0xb7, 0x01, 0, 0, 0, 0, 0, 0,            # r1 = 0
    0x7b, 0x1a, 0xf8, 0xff, 0, 0, 0, 0,      # *(u64 *)(r10 - 8) = r1
    0xb7, 0x00, 0, 0, 0, 0, 0, 0,            # r0 = 0
    0xb7, 0x02, 0, 0, 1, 0, 0, 0,            # r2 = 1
    0xdb, 0x2a, 0xf8, 0xff, 0xf1, 0, 0, 0,   # r0 = cmpxchg_64(r10 - 8, r0, r2)
    0xb7, 0x00, 0, 0, 0, 0, 0, 0,            # r0 = 0
    0x95, 0, 0, 0, 0, 0, 0, 0,               # exit
])


def _percpu_rings(btf, tp_btf: bool) -> tuple[bool, str]:
    """Whether the programs' own per-CPU rings work here: x86-64 (a slot
    is published by a plain store; x86-64 makes stores visible in program
    order), arrays user space can map (5.5+), and compare-and-swap in
    programs (5.12+), tried for real by loading one."""
    from .btf import BTFError
    if os.uname().machine != "x86_64":
        return False, f"not on {os.uname().machine} (slots are published by plain stores: x86-64 only)"
    cpus = possible_cpus()
    if cpus * PERCPU_MIN_SLOTS * SLOT_SIZE > PERCPU_MAX_MEMORY:
        return False, (f"{cpus} possible CPUs: a ring on each would take over "
                       f"{PERCPU_MAX_MEMORY >> 20} MiB")
    if not _bpf_map_create(BPF_MAP_TYPE_ARRAY, 4, 64, 1, BPF_F_MMAPABLE):
        return False, "no memory-mapped BPF arrays (kernel before 5.5)"
    if not tp_btf:
        return False, "BTF tracepoints do not load: compare-and-swap cannot be tried"
    try:
        _load_probe_program(btf, CAS_PROGRAM)
    except (BTFError, OSError) as e:
        return False, f"no compare-and-swap in BPF programs (kernel before 5.12?): {e}"
    return True, ""


def lift_memlock() -> None:
    """Before 5.11 the kernel charges BPF maps to the user's locked memory,
    checked against the creating process's RLIMIT_MEMLOCK: once the loader
    process (bcc lifts its own limit) has made the rings, even the probe's
    small maps would be refused under the default limit, and the probe
    would report no ring buffer. Lifted as bcc does; nothing on later
    kernels, which charge BPF memory to the cgroup instead."""
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (OSError, ValueError):
        pass   # not root: the probe says what does not work


def probe() -> Capabilities:
    lift_memlock()
    caps = Capabilities(kernel=os.uname().release)
    caps.tracefs, caps.tracefs_note = kernel.ensure_tracefs()
    if caps.tracefs:
        for group, name in TRACEPOINTS:
            tp = kernel.tracepoint(group, name)
            if tp is not None:
                caps.tracepoints[tp.full] = sorted(tp.fields)
    config = kernel.kernel_config()
    caps.kprobes, caps.kprobes_note = kernel.kprobes_available(config)
    if caps.kprobes:
        caps.kprobe_symbols = kernel.kprobe_symbols(KPROBE_SYMBOLS)
    caps.btf = Path("/sys/kernel/btf/vmlinux").exists()
    caps.fentry, caps.fentry_note = False, "no BTF: fentry and fexit need it"
    caps.ringbuf = _bpf_map_create(BPF_MAP_TYPE_RINGBUF, 0, 0, 4096)
    caps.tp_btf, caps.tp_btf_note = False, "no BTF"
    caps.percpu_rings_note = "no BTF: compare-and-swap cannot be tried"
    if caps.btf:
        from .btf import BTFError, load_vmlinux
        btf = load_vmlinux()   # read once for every question below
        caps.tp_btf, caps.tp_btf_note = _try_tp_btf(btf)
        caps.percpu_rings, caps.percpu_rings_note = _percpu_rings(btf, caps.tp_btf)
        caps.fentry, caps.fentry_note = _try_fexit(btf)
        caps.rdonly_cast, caps.rdonly_cast_note = _try_rdonly_cast(btf, caps.tp_btf)
        caps.btf_helpers = _try_btf_helpers(btf, caps.tp_btf)
        missing = [why for why in caps.btf_helpers.values() if why and caps.tp_btf]
        if missing:
            caps.tp_btf_note += "; " + "; ".join(missing) + " (those fields by helper calls)"
        caps.accept_fields_note = unresolved(btf, ACCEPT_FIELDS)
        try:
            caps.netfilter_drop_reason = btf.enum("skb_drop_reason").get(
                "SKB_DROP_REASON_NETFILTER_DROP")
        except BTFError:
            caps.netfilter_drop_reason = None
    caps.conntrack = Path("/proc/sys/net/netfilter/nf_conntrack_max").exists()
    if caps.has_tp("skb:kfree_skb", "location") and not caps.has_tp("skb:kfree_skb", "reason"):
        caps.nf_drop_sites, caps.nf_drop_note = _nf_drop_sites()
    caps.ipvs = Path("/proc/net/ip_vs").exists()
    if caps.ipvs:
        caps.ipvs_note = "IPVS loaded"
    elif config.get("CONFIG_IP_VS") in ("y", "m"):
        caps.ipvs_note = f"IPVS built ({config['CONFIG_IP_VS']}) but not loaded (modprobe ip_vs)"
    else:
        caps.ipvs_note = "kernel built without IPVS"
    if caps.ipvs and caps.kprobes:
        _ipvs_layout(caps)
    return caps


def _nf_drop_sites() -> tuple[list[str], str]:
    """Netfilter's drop sites in this kernel (offsets.NF_DROP_FUNCS that
    /proc/kallsyms places), or why none: the hook walk must be among them."""
    ranges = kernel.ksym_ranges(NF_DROP_FUNCS)
    if NF_DROP_FUNCS[0] not in ranges:
        return [], (f"{NF_DROP_FUNCS[0]} has no address in /proc/kallsyms (hidden by "
                    "kptr_restrict, or not root): netfilter's drops cannot be told apart")
    return sorted(ranges), ""


def _ipvs_layout(caps: Capabilities) -> None:
    """Where struct ip_vs_conn's layout comes from: BTF (the ip_vs module's,
    5.11+, or vmlinux's where IPVS is built in), else this kernel's exact
    headers, never headers of another version. Sets caps.ipvs_btf or
    caps.ipvs_headers, the note saying which, and how an expiry's namespace
    is learned."""
    from .btf import BTFError, load_module, load_vmlinux
    why_not_btf = "no BTF"
    if caps.btf:
        btf = load_vmlinux()
        module = load_module("ip_vs", btf)
        ipvs_btf = module or btf
        why_not_btf = unresolved(ipvs_btf, IPVS_OFFSETS)
        if not why_not_btf:
            caps.ipvs_btf = True
            caps.ipvs_layout_note = ("struct ip_vs_conn from BTF ("
                                     + ("module ip_vs" if module else "vmlinux") + ")")
            try:
                caps.ipvs_netns_note = ipvs_netns(btf, ipvs_btf, KernelLayout(), kernel.ksym_address)[0]
            except BTFError as e:
                caps.ipvs_netns_note = f"namespace unknown (0): {e}"
            return
        if module is None:
            why_not_btf = "no BTF for ip_vs (module BTF came with 5.11)"
    release = caps.kernel
    exact = kernel.exact_headers(release)
    header = kernel.header_file(IPVS_HEADER, release) if exact else None
    if header is not None:
        caps.ipvs_headers = str(exact)
        caps.ipvs_layout_note = (f"struct ip_vs_conn and struct netns_ipvs from this kernel's own "
                                 f"headers ({exact}; {why_not_btf})")
        caps.ipvs_netns_note = "namespace from the entry's struct netns_ipvs (headers)"
        return
    caps.ipvs_layout_note = (f"struct ip_vs_conn layout unknown: {why_not_btf}, and no headers of "
                             f"exactly {release} in /lib/modules/{release}/build"
                             + (f" (they lack {IPVS_HEADER})" if exact else
                                f" (install linux-headers-{release})"))
    return caps


def plan(caps: Capabilities) -> dict[str, Hook]:
    """The best hook per signal, falling back in order."""
    out: dict[str, Hook] = {}
    kp = caps.kprobes
    sym = caps.kprobe_symbols
    tp = "BTF tracepoint" if caps.tp_btf and caps.ringbuf else "raw tracepoint"

    # reset sent: the tracepoint sees no-socket resets only from 6.10 (the
    # release that added `reason`); before, a kprobe on tcp_v{4,6}_send_reset
    # catches them and the tracepoint keeps the resets sent on a socket.
    if caps.has_tp("tcp:tcp_send_reset", "reason"):
        out["reset_sent"] = Hook("reset_sent", True, f"{tp} tcp:tcp_send_reset",
                                 "tracepoint with reason (6.10+): sees no-socket resets too",
                                 ["HAVE_TP_SEND_RESET_REASON"])
    elif caps.has_tp("tcp:tcp_send_reset") and kp and sym.get("tcp_v4_send_reset"):
        h = Hook("reset_sent", True, f"{tp} tcp:tcp_send_reset + kprobe tcp_v4_send_reset/tcp_v6_send_reset",
                 "tracepoint has no reason (before 6.10) and misses no-socket resets: kprobes add them",
                 ["WANT_KPROBE_SEND_RESET"],
                 [("kprobe", "tcp_v4_send_reset", "kp_send_reset")])
        if sym.get("tcp_v6_send_reset"):
            h.attach.append(("kprobe", "tcp_v6_send_reset", "kp_send_reset"))
        out["reset_sent"] = h
    elif caps.has_tp("tcp:tcp_send_reset"):
        out["reset_sent"] = Hook("reset_sent", True, f"{tp} tcp:tcp_send_reset",
                                 "PARTIAL: before 6.10 this tracepoint misses resets sent with no "
                                 "socket and kprobes are unavailable (" + caps.kprobes_note + ")")
    elif kp and sym.get("tcp_v4_send_reset"):
        out["reset_sent"] = Hook("reset_sent", True, "kprobe tcp_v4_send_reset",
                                 "PARTIAL: no tcp_send_reset tracepoint; only no-socket resets seen",
                                 ["WANT_KPROBE_SEND_RESET"],
                                 [("kprobe", "tcp_v4_send_reset", "kp_send_reset")])
    else:
        out["reset_sent"] = Hook("reset_sent", False, None,
                                 "no tcp:tcp_send_reset tracepoint and no kprobes (" + caps.kprobes_note + ")")

    if caps.has_tp("tcp:tcp_receive_reset"):
        out["reset_recv"] = Hook("reset_recv", True, f"{tp} tcp:tcp_receive_reset",
                                 "every reset a local socket receives")
    elif kp and sym.get("tcp_reset"):
        out["reset_recv"] = Hook("reset_recv", True, "kprobe tcp_reset", "no tracepoint: kprobe fallback",
                                 ["WANT_KPROBE_TCP_RESET"], [("kprobe", "tcp_reset", "kp_tcp_reset")])
    else:
        out["reset_recv"] = Hook("reset_recv", False, None,
                                 "no tcp:tcp_receive_reset tracepoint and no kprobe on tcp_reset")

    if not caps.conntrack:
        out["ct_drop"] = Hook("ct_drop", False, None, "conntrack not in this kernel (or not loaded)")
    elif caps.has_tp("skb:kfree_skb", "reason"):
        if caps.netfilter_drop_reason is None:
            out["ct_drop"] = Hook("ct_drop", False, None,
                                  "SKB_DROP_REASON_NETFILTER_DROP not in this kernel's BTF")
        else:
            out["ct_drop"] = Hook("ct_drop", True, f"{tp} skb:kfree_skb",
                                  f"reason NETFILTER_DROP = {caps.netfilter_drop_reason} on this "
                                  "kernel (from BTF)")
    elif caps.nf_drop_sites:
        # Before 5.17 the tracepoint has no reason, only the code address
        # that freed the packet: one inside netfilter's verdict handling is
        # a netfilter drop. The events say their reason was derived.
        out["ct_drop"] = Hook("ct_drop", True, f"{tp} skb:kfree_skb",
                              "no drop reason before 5.17: a packet freed inside netfilter's "
                              f"verdict handling ({', '.join(caps.nf_drop_sites)}: code ranges from "
                              "/proc/kallsyms) is NETFILTER_DROP, marked reason_derived",
                              ["CT_DROP_DERIVED"])
    else:
        out["ct_drop"] = Hook("ct_drop", False, None, "skb:kfree_skb has no drop reason (before 5.17)"
                              + (f" and {caps.nf_drop_note}" if caps.nf_drop_note else ""))
    h = out["ct_drop"]
    if h.available and kp and sym.get("__nf_conntrack_alloc"):
        h.hook += " + kretprobe __nf_conntrack_alloc"
        h.defines.append("WANT_KRETPROBE_CT_ALLOC")
        h.attach.append(("kretprobe", "__nf_conntrack_alloc", "kr_nf_conntrack_alloc"))

    if not caps.conntrack:
        out["ct_full"] = Hook("ct_full", False, None, "conntrack not in this kernel")
    elif caps.has_tp("printk:console"):
        out["ct_full"] = Hook("ct_full", True, f"{tp} printk:console",
                              "'table full' log lines (the kernel rate-limits them; drops count the rest)")
    else:
        out["ct_full"] = Hook("ct_full", False, None, "no printk:console tracepoint")

    if not caps.ipvs:
        out["ipvs_expire"] = Hook("ipvs_expire", False, None, caps.ipvs_note)
    elif not kp:
        out["ipvs_expire"] = Hook("ipvs_expire", False, None,
                                  "ip_vs_conn_expire has no tracepoint and kprobes are unavailable ("
                                  + caps.kprobes_note + ")")
    elif not sym.get("ip_vs_conn_expire"):
        out["ipvs_expire"] = Hook("ipvs_expire", False, None, "ip_vs_conn_expire is not kprobe-able here")
    elif caps.ipvs_btf or caps.ipvs_headers:
        out["ipvs_expire"] = Hook("ipvs_expire", True, "kprobe ip_vs_conn_expire",
                                  "kprobe (no tracepoint exists); "
                                  + (caps.ipvs_layout_note or "layout from ip_vs BTF")
                                  + (f"; {caps.ipvs_netns_note}" if caps.ipvs_netns_note else ""),
                                  ["WANT_KPROBE_IPVS_EXPIRE"],
                                  [("kprobe", "ip_vs_conn_expire", "kp_ip_vs_conn_expire")])
    else:
        out["ipvs_expire"] = Hook("ipvs_expire", False, None,
                                  caps.ipvs_layout_note or "struct ip_vs_conn layout unknown: no BTF "
                                  "for ip_vs and no headers of exactly this kernel")

    # accepted sockets: learned as accept() returns, in the accepting task
    if caps.has_tp("sock:inet_sock_set_state"):
        h = Hook("owner", True, f"{tp} sock:inet_sock_set_state",
                 "process learned at connect() and as accept() returns")
        syscalls = caps.has_tp("syscalls:sys_exit_accept4")
        if caps.fentry and tp == "BTF tracepoint":
            h.hook += " + fexit inet_csk_accept"
            h.defines = ["HAVE_FEXIT_ACCEPT"]
            h.attach = [("fexit", "inet_csk_accept", "fexit__inet_csk_accept")]
        elif caps.accept_syscalls and syscalls and not caps.accept_fields_note:
            both = caps.has_tp("syscalls:sys_exit_accept")
            h.hook += " + tracepoint syscalls:sys_exit_accept4" + ("/sys_exit_accept" if both else "")
            h.why += " (syscall tracepoints asked for: every syscall on the host is slower)"
            h.defines = ["HAVE_TP_ACCEPT"] + (["HAVE_TP_ACCEPT_PLAIN"] if both else [])
        else:
            why = [caps.fentry_note if not caps.fentry else "fexit needs BTF tracepoints and a ring"]
            if not syscalls:
                why.append("no syscalls:sys_exit_accept4 tracepoint (kernel without CONFIG_FTRACE_SYSCALLS)")
            elif caps.accept_fields_note:
                why.append(f"an accepted socket's file cannot be followed ({caps.accept_fields_note})")
            else:
                why.append("the accept() syscall tracepoints would slow every syscall on the host "
                           "(record --accept-syscalls uses them anyway)")
            h.why = "process learned at connect(); accepted sockets have no owner: " + "; ".join(why)
        out["owner"] = h
    else:
        out["owner"] = Hook("owner", False, None, "no sock:inet_sock_set_state tracepoint")
    return out


def transport(caps: Capabilities) -> tuple[str, str]:
    """The best way events reach us here: ("percpu" | "ringbuf" | "perfbuf", why)."""
    if caps.percpu_rings:
        return "percpu", ("per-CPU rings in memory-mapped arrays: no helper call, lock or "
                          "wake-up per event, consumed in batches")
    if caps.ringbuf:
        return "ringbuf", ("BPF ring buffer, no per-event wake-ups, consumed in batches "
                           f"(no per-CPU rings: {caps.percpu_rings_note})")
    return "perfbuf", "perf buffer (no ring buffer on this kernel): per-CPU buffers, consumed in batches"


def plan_summary(hooks: dict[str, Hook]) -> dict[str, dict]:
    return {name: {"hook": h.hook, "available": h.available, "why": h.why}
            for name, h in hooks.items()}
