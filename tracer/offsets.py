"""Struct offsets and enum values for the BPF programs, from the running
kernel's BTF, as -D flags.

Each offset names the struct path it comes from; where kernels renamed a
member, candidates are tried in order (e.g. 6.18 moved sk_flags into
sock_common as skc_flags). Nothing here is a number typed by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .btf import BTF, BTFError

# define -> (struct, candidate member paths)
SOCKET_OFFSETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "OFF_SK_NET": ("sock", ("__sk_common.skc_net",)),
    "OFF_SK_STATE": ("sock", ("__sk_common.skc_state",)),
    "OFF_SK_COOKIE": ("sock", ("__sk_common.skc_cookie",)),
    "OFF_SK_FLAGS": ("sock", ("sk_flags", "__sk_common.skc_flags")),
    "OFF_SK_FAMILY": ("sock", ("__sk_common.skc_family",)),
    "OFF_SK_NUM": ("sock", ("__sk_common.skc_num",)),
    # the local port as sent on the wire: skc_num is zeroed when a closing
    # socket leaves the hash, before an abort sends its reset
    "OFF_INET_SPORT": ("inet_sock", ("inet_sport",)),
    "OFF_SK_DPORT": ("sock", ("__sk_common.skc_dport",)),
    "OFF_SK_DADDR": ("sock", ("__sk_common.skc_daddr",)),
    "OFF_SK_RCV_SADDR": ("sock", ("__sk_common.skc_rcv_saddr",)),
    "OFF_SK_V6_DADDR": ("sock", ("__sk_common.skc_v6_daddr",)),
    "OFF_SK_V6_RCV_SADDR": ("sock", ("__sk_common.skc_v6_rcv_saddr",)),
    "OFF_SK_PROTOCOL": ("sock", ("sk_protocol",)),
    "OFF_TP_RCV_TSTAMP": ("tcp_sock", ("rcv_tstamp",)),
    "OFF_TP_KA_TIME": ("tcp_sock", ("keepalive_time",)),
    "OFF_TP_KA_INTVL": ("tcp_sock", ("keepalive_intvl",)),
    "OFF_TP_KA_PROBES": ("tcp_sock", ("keepalive_probes",)),
    "OFF_ICSK_LRCVTIME": ("inet_connection_sock", ("icsk_ack.lrcvtime",)),
    "OFF_NET_INUM": ("net", ("ns.inum",)),
    "OFF_NET_KA_TIME": ("net", ("ipv4.sysctl_tcp_keepalive_time",)),
    "OFF_NET_KA_INTVL": ("net", ("ipv4.sysctl_tcp_keepalive_intvl",)),
    "OFF_NET_KA_PROBES": ("net", ("ipv4.sysctl_tcp_keepalive_probes",)),
    "OFF_SKB_DEV": ("sk_buff", ("dev",)),
    "OFF_SKB_SK": ("sk_buff", ("sk",)),
    "OFF_SKB_HEAD": ("sk_buff", ("head",)),
    "OFF_SKB_NETWORK_HEADER": ("sk_buff", ("network_header",)),
    "OFF_SKB_TRANSPORT_HEADER": ("sk_buff", ("transport_header",)),
    "OFF_SKB_PROTOCOL": ("sk_buff", ("protocol",)),
    "OFF_DEV_NET": ("net_device", ("nd_net.net",)),
}

# The cgroup a socket was created in (cgroup v2): where missing (kernels
# before 5.15 laid sock_cgroup_data out otherwise) the program leaves it out.
SOCKET_OPTIONAL: dict[str, tuple[str, tuple[str, ...]]] = {
    "OFF_SK_CGROUP": ("sock", ("sk_cgrp_data.cgroup",)),
    "OFF_CGROUP_KN": ("cgroup", ("kn",)),
    "OFF_KN_ID": ("kernfs_node", ("id",)),
}

# The connecting task's tgid, comm and cgroup v2 (with OFF_CGROUP_KN and
# OFF_KN_ID above), read as plain loads in BTF tracepoints: the helpers that
# give the same three cost ~90 ns per connect on a kernel with return-thunk
# mitigations. Where missing, the programs call the helpers.
TASK_OPTIONAL: dict[str, tuple[str, tuple[str, ...]]] = {
    "OFF_TASK_TGID": ("task_struct", ("tgid",)),
    "OFF_TASK_COMM": ("task_struct", ("comm",)),
    "OFF_TASK_CGROUPS": ("task_struct", ("cgroups",)),
    "OFF_CSS_SET_DFL_CGRP": ("css_set", ("dfl_cgrp",)),
}

# An accepted socket's owner, learned as accept() returns in the accepting
# process: the new descriptor looked up in the task's file table, and the
# socket file's inode number, which tells that socket from any later one in
# the same memory. All or none: without them accepted sockets have no owner
# (the probe says so, probe.accept_fields).
ACCEPT_FIELDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "OFF_TASK_FILES": ("task_struct", ("files",)),
    "OFF_FILES_FDT": ("files_struct", ("fdt",)),
    "OFF_FDT_MAX_FDS": ("fdtable", ("max_fds",)),
    "OFF_FDT_FD": ("fdtable", ("fd",)),
    "OFF_FILE_PRIVATE": ("file", ("private_data",)),
    "OFF_FILE_INODE": ("file", ("f_inode",)),
    "OFF_INODE_INO": ("inode", ("i_ino",)),
    "OFF_SOCKET_SK": ("socket", ("sk",)),
    "OFF_SOCKET_FILE": ("socket", ("file",)),
    "OFF_SK_SOCKET": ("sock", ("sk_socket",)),
}

# From the ip_vs module's BTF (only where IPVS is loaded), else from the
# running kernel's exact headers (the program takes offsetof() of the same
# members: bpf/rsttrace.bpf.c, IPVS_HEADERS).
IPVS_OFFSETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "OFF_IPVS_TIMER": ("ip_vs_conn", ("timer",)),
    "OFF_IPVS_IPVS": ("ip_vs_conn", ("ipvs",)),
    "OFF_IPVS_AF": ("ip_vs_conn", ("af",)),
    "OFF_IPVS_PROTOCOL": ("ip_vs_conn", ("protocol",)),
    "OFF_IPVS_STATE": ("ip_vs_conn", ("state",)),
    "OFF_IPVS_CADDR": ("ip_vs_conn", ("caddr",)),
    "OFF_IPVS_VADDR": ("ip_vs_conn", ("vaddr",)),
    "OFF_IPVS_DADDR": ("ip_vs_conn", ("daddr",)),
    "OFF_IPVS_CPORT": ("ip_vs_conn", ("cport",)),
    "OFF_IPVS_VPORT": ("ip_vs_conn", ("vport",)),
    "OFF_IPVS_DPORT": ("ip_vs_conn", ("dport",)),
}
# An expiry's namespace: the entry's netns_ipvs names its struct net. Debian's
# 6.1 and 6.12 describe struct netns_ipvs nowhere (vmlinux has only a forward
# declaration, the ip_vs module's BTF omits it); there the program walks the
# kernel's list of namespaces (struct net.list, from net_namespace_list) for
# the one whose `ipvs` is the entry's.
IPVS_NETNS_DIRECT: dict[str, tuple[str, tuple[str, ...]]] = {
    "OFF_NETNS_IPVS_NET": ("netns_ipvs", ("net",)),
}
IPVS_NETNS_WALK: dict[str, tuple[str, tuple[str, ...]]] = {
    "OFF_NET_IPVS": ("net", ("ipvs",)),
    "OFF_NET_LIST": ("net", ("list",)),
}
NETNS_LIST_SYMBOL = "net_namespace_list"
# Where no BTF describes IPVS: the same members from the header that declares
# struct ip_vs_conn and struct netns_ipvs, in the running kernel's own headers
# (bpf/layout.c; the namespace then comes straight from the entry's
# netns_ipvs), and members the BTF of vmlinux places too, with which the
# headers must agree.
IPVS_HEADER = "net/ip_vs.h"
IPVS_HEADER_MEMBERS = {**IPVS_OFFSETS, **IPVS_NETNS_DIRECT}
HEADER_CHECKS = ("OFF_SK_PROTOCOL", "OFF_NET_INUM")

# Where a packet freed by netfilter's verdict is freed, for kernels whose
# skb:kfree_skb has no reason (before 5.17): the hook walk, which frees a
# packet a hook answered NF_DROP (a rule, conntrack, IPVS), and the
# re-injection of a queued packet, which frees it on a drop verdict. Later
# kernels report both as SKB_DROP_REASON_NETFILTER_DROP. (In Debian's 5.10
# the only other kfree_skb in netfilter's core is nf_queue's, for a queue
# nobody listens on, which later kernels report without a reason.) Later
# kernels also free a packet an nftables rule drops inside nft_do_chain
# (the site 6.18 reports with NETFILTER_DROP); 5.10's returns the verdict to
# the hook walk. It is listed so that the one derivation holds on both (a
# kernel test derives on a kernel that names its drops and compares).
NF_DROP_FUNCS = ("nf_hook_slow", "nf_reinject", "nft_do_chain")


@dataclass
class KernelLayout:
    defines: dict[str, int] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # define -> "struct.path"

    def cflags(self) -> list[str]:
        return [f"-D{k}={v}" for k, v in sorted(self.defines.items())]


def _resolve(btf: BTF, table: dict[str, tuple[str, tuple[str, ...]]], out: KernelLayout) -> None:
    for define, (struct_name, paths) in table.items():
        errors = []
        for path in paths:
            try:
                off, _size = btf.field(struct_name, path)
            except BTFError as e:
                errors.append(str(e))
                continue
            out.defines[define] = off
            out.sources[define] = f"{struct_name}.{path}"
            break
        else:
            raise BTFError(f"{define}: " + "; ".join(errors))


def unresolved(btf: BTF, table: dict[str, tuple[str, tuple[str, ...]]]) -> str:
    """Why `table` cannot be placed in this kernel's BTF ("" if it can)."""
    try:
        _resolve(btf, table, KernelLayout())
    except BTFError as e:
        return str(e)
    return ""


def nf_drop_site_define(ranges: dict[str, tuple[int, int]]) -> str:
    """-DNF_DROP_SITE(x)=...: whether code address x lies in one of the
    ranges (kernel.ksym_ranges of NF_DROP_FUNCS), as comparisons with
    constants. For the compiler only: addresses are never recorded."""
    if not ranges:
        raise ValueError("no netfilter drop site to compare with")
    test = "||".join(f"((x)>={lo:#x}ULL&&(x)<{hi:#x}ULL)" for lo, hi in sorted(ranges.values()))
    return f"-DNF_DROP_SITE(x)=({test})"


def ipvs_netns(btf: BTF, ipvs_btf: BTF, out: KernelLayout,
               ksym: Callable[[str], int | None]) -> tuple[str, int | None]:
    """How the IPVS program learns an expiry's namespace: (what to say, the
    namespace list's address where it walks the list). The offsets it needs
    go into `out`; the address does not (it is passed to the compiler only,
    never written to a recording)."""
    try:
        _resolve(ipvs_btf, IPVS_NETNS_DIRECT, out)
        return "namespace from the entry's struct netns_ipvs (BTF)", None
    except BTFError:
        pass
    why = unresolved(btf, IPVS_NETNS_WALK)
    if why:
        return f"namespace unknown (0): no struct netns_ipvs in BTF, and {why}", None
    head = ksym(NETNS_LIST_SYMBOL)
    if head is None:
        return (f"namespace unknown (0): no struct netns_ipvs in BTF, and {NETNS_LIST_SYMBOL} is "
                "not in /proc/kallsyms (kernel without CONFIG_KALLSYMS_ALL, or kptr_restrict)"), None
    _resolve(btf, IPVS_NETNS_WALK, out)
    return ("namespace found in the kernel's namespace list (no struct netns_ipvs in BTF; "
            f"{NETNS_LIST_SYMBOL} from /proc/kallsyms)"), head


# Raw tracepoint arguments, located by type in the tracepoint's BTF
# prototype (btf_trace_<name>: void *data, then TP_PROTO's arguments).
# define -> (tracepoint, type of the argument, which one of that type)
RAW_TP_ARGS: dict[str, tuple[str, str, int]] = {
    "ARG_SR_SK": ("tcp_send_reset", "struct sock *", 0),
    "ARG_SR_SKB": ("tcp_send_reset", "struct sk_buff *", 0),
    "ARG_SR_REASON": ("tcp_send_reset", "enum sk_rst_reason", 0),
    "ARG_RR_SK": ("tcp_receive_reset", "struct sock *", 0),
    "ARG_SS_SK": ("inet_sock_set_state", "struct sock *", 0),
    "ARG_SS_OLD": ("inet_sock_set_state", "int", 0),
    "ARG_SS_NEW": ("inet_sock_set_state", "int", 1),
    "ARG_DS_SK": ("tcp_destroy_sock", "struct sock *", 0),
    "ARG_KS_SKB": ("kfree_skb", "struct sk_buff *", 0),
    "ARG_KS_LOCATION": ("kfree_skb", "void *", 0),
    "ARG_KS_REASON": ("kfree_skb", "enum skb_drop_reason", 0),
    "ARG_CON_TEXT": ("console", "char *", 0),
}


# arguments later kernels added: tcp_send_reset's reason (6.10), kfree_skb's (5.17)
OPTIONAL_ARGS = ("ARG_SR_REASON", "ARG_KS_REASON")


def raw_tp_arg_types(btf: BTF, tracepoint: str) -> list[str]:
    """Argument types of a raw tracepoint, e.g. ['struct sock *',
    'struct sk_buff *', 'enum sk_rst_reason'] (qualifiers dropped)."""
    from .btf import KIND_FUNC_PROTO, KIND_TYPEDEF
    tid = btf.find(f"btf_trace_{tracepoint}", (KIND_TYPEDEF,))
    proto = btf.resolve(tid)
    while btf.kind(proto) != KIND_FUNC_PROTO:  # typedef -> pointer -> proto
        proto = btf.resolve(btf._header(proto)[4])
    return [btf.type_name(t) for t in btf.proto_params(proto)][1:]


def raw_tp_layout(btf: BTF) -> tuple[dict[str, int], dict[str, str]]:
    """(define -> argument index, tracepoint -> why not) for every raw
    tracepoint rsttrace uses; a tracepoint whose prototype lacks an
    argument is reported, not guessed."""
    defines: dict[str, int] = {}
    missing: dict[str, str] = {}
    cache: dict[str, list[str] | None] = {}
    for define, (tp, typ, nth) in RAW_TP_ARGS.items():
        if tp not in cache:
            try:
                cache[tp] = raw_tp_arg_types(btf, tp)
            except BTFError as e:
                cache[tp] = None
                missing[tp] = str(e)
        types = cache[tp]
        if types is None:
            continue
        hits = [i for i, t in enumerate(types) if t == typ]
        if len(hits) > nth:
            defines[define] = hits[nth]
        elif define not in OPTIONAL_ARGS:
            missing.setdefault(tp, f"no {typ!r} argument in btf_trace_{tp} {types}")
    return defines, missing


def enum_value(btf: BTF, enum_name: str, member: str) -> int:
    values = btf.enum(enum_name)
    if member not in values:
        raise BTFError(f"enum {enum_name} has no {member}")
    return values[member]


def btf_tracepoint_abi(btf: BTF) -> dict[str, int]:
    """The bpf() command, program type and attach type values for BTF
    tracepoints, from the kernel's own enums."""
    return {"BPF_PROG_LOAD": enum_value(btf, "bpf_cmd", "BPF_PROG_LOAD"),
            "BPF_RAW_TRACEPOINT_OPEN": enum_value(btf, "bpf_cmd", "BPF_RAW_TRACEPOINT_OPEN"),
            "BPF_PROG_TYPE_TRACING": enum_value(btf, "bpf_prog_type", "BPF_PROG_TYPE_TRACING"),
            "BPF_TRACE_RAW_TP": enum_value(btf, "bpf_attach_type", "BPF_TRACE_RAW_TP"),
            "BPF_TRACE_FEXIT": enum_value(btf, "bpf_attach_type", "BPF_TRACE_FEXIT")}


# bpf_rdonly_cast (a kfunc the verifier turns into a register move) and the
# kernel structs the BTF programs read through it: define -> struct. Their
# BTF type ids are the kfunc's second argument (bpf/rsttrace.bpf.c).
RDONLY_CAST = "bpf_rdonly_cast"
CAST_TYPES: dict[str, str] = {"BTF_TCP_SOCK": "tcp_sock", "BTF_IPHDR": "iphdr",
                              "BTF_IPV6HDR": "ipv6hdr", "BTF_TCPHDR": "tcphdr"}


def rdonly_cast_ids(btf: BTF) -> dict[str, int]:
    """KFUNC_RDONLY_CAST (the kfunc's BTF FUNC id) and the CAST_TYPES'
    struct ids; BTFError where one is missing, or where the kfunc's id is
    a helper's number too (the program writes the call as a helper call:
    bpfsys.as_kfunc_calls)."""
    from .btf import KIND_FUNC, KIND_STRUCT
    ids = {"KFUNC_RDONLY_CAST": btf.find(RDONLY_CAST, (KIND_FUNC,))}
    helpers = btf.enum("bpf_func_id").get("__BPF_FUNC_MAX_ID")
    if helpers is None or ids["KFUNC_RDONLY_CAST"] < helpers:
        raise BTFError(f"{RDONLY_CAST}'s BTF id {ids['KFUNC_RDONLY_CAST']} cannot be told from "
                       f"a helper number (helpers below {helpers})")
    for define, struct_name in CAST_TYPES.items():
        ids[define] = btf.find(struct_name, (KIND_STRUCT,))
    return ids


# fexit programs rsttrace loads: kernel function -> the program's -D for
# the index of its return value in the program's context (after the
# function's arguments, however many this kernel's version has)
FEXIT_RET: dict[str, str] = {"inet_csk_accept": "ARG_ACCEPT_RET"}


def fexit_ret_index(btf: BTF, func_id: int) -> int:
    """Where an fexit program on the function whose BTF FUNC is `func_id`
    finds the return value: the number of the function's parameters
    (inet_csk_accept has 4 in 6.1, 2 since 6.10)."""
    from .btf import KIND_FUNC_PROTO
    proto = btf._header(func_id)[4]
    if btf.kind(proto) != KIND_FUNC_PROTO:
        raise BTFError(f"{btf.name(func_id)}: no function prototype in BTF")
    return len(btf.proto_params(proto))


def kernel_layout(btf: BTF, ipvs_btf: BTF | None = None) -> KernelLayout:
    out = KernelLayout()
    _resolve(btf, SOCKET_OFFSETS, out)
    for group in (SOCKET_OPTIONAL, TASK_OPTIONAL, ACCEPT_FIELDS):
        try:
            _resolve(btf, group, out)
        except BTFError:
            for define in group:
                out.defines.pop(define, None)
                out.sources.pop(define, None)
    # SOCK_KEEPOPEN is a bit number in enum sock_flags.
    out.defines["SOCK_KEEPOPEN_BIT"] = enum_value(btf, "sock_flags", "SOCK_KEEPOPEN")
    out.sources["SOCK_KEEPOPEN_BIT"] = "enum sock_flags.SOCK_KEEPOPEN"
    try:
        out.defines["NETFILTER_DROP_REASON"] = enum_value(
            btf, "skb_drop_reason", "SKB_DROP_REASON_NETFILTER_DROP")
        out.sources["NETFILTER_DROP_REASON"] = "enum skb_drop_reason.SKB_DROP_REASON_NETFILTER_DROP"
    except BTFError:
        pass  # kernels before 5.17: no drop reasons; the probe reports it
    if ipvs_btf is not None:
        _resolve(ipvs_btf, IPVS_OFFSETS, out)
    return out
