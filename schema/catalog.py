"""The field catalog: every field of every record, defined once.

A reset, a drop, a context snapshot: each record rsttrace writes is a
JSON object whose fields are listed here, with their type (what the reader
accepts), unit, one line of meaning, and for the events the member of
`struct rst_event` (bpf/rsttrace.h) each is decoded from, how, and when it
is null. Everything else is made from these tables:

- the Python mirror of the C struct (tracer/events.py builds its numpy
  layout from `EVENT`; a unit test parses bpf/rsttrace.h and compares its
  members, their offsets, the kind, direction and flag values with this
  module, without root; a kernel test compares what bcc compiled);
- the decoding of raw events into records, in order (tracer/events.py);
- the reader's validation table (rsttrace.schema.validate);
- the report's CSV columns and the one function that writes them
  (analysis/csvout.py compiles it from `CSV_ORDER` and the fields' `csv`);
- the live screen's columns that show a field (`label`);
- the tables of docs/EVENTS.md (`python -m rsttrace.schema.docs`).

A new kernel value is a member of the C struct, its line in `EVENT` and a
`Field` in its kind; a field shown in the CSV also names its column in
`CSV_ORDER`.

This module imports neither the tracer nor the analysis (both import it),
nor numpy: a recording is read and checked with msgspec alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

import msgspec
from msgspec import UNSET, Meta, UnsetType

#: The version of the recording layout, written in every header and the
#: only one the reader accepts.
SCHEMA_VERSION = 1

# ---- value types -------------------------------------------------------------
# Unix seconds below 2**33 (the year 2242): inside every time type the
# reports convert to (pandas' nanosecond datetimes end in 2262).
TIME_MAX = 2.0 ** 33
# msgspec bounds integers within int64; kernel u64 values (socket cookies,
# cgroup ids) stay far below 2**63.
_INT_MAX = 2 ** 63 - 1


def _uint(bits: int) -> Any:
    # integers come from unsigned kernel fields of these widths
    return Annotated[int, Meta(ge=0, le=min(2 ** bits - 1, _INT_MAX))]


U8, U16, U32, U64 = _uint(8), _uint(16), _uint(32), _uint(64)
NUM = Union[U64, Annotated[float, Meta(ge=0, lt=2.0 ** 63)]]     # an int stays an int
TIME = Annotated[float, Meta(ge=0, lt=TIME_MAX)]
INODE_KEY = Annotated[str, Meta(pattern="^[0-9]+$")]


def obj(name: str, fields: dict[str, Any], tag: str | None = None) -> Any:
    """An object with these fields, each of which may be missing; with
    `tag`, a record whose `kind` is `tag`. Other members are ignored."""
    return msgspec.defstruct(name, [(k, t | UnsetType, UNSET) for k, t in fields.items()],
                             tag_field="kind" if tag else None, tag=tag, kw_only=True, gc=False)


# ---- struct rst_event (bpf/rsttrace.h) ---------------------------------------

class CValue(int):
    """A value of the header (an enum constant or a #define), with its C
    name and meaning; usable as the int it is."""
    c: str
    doc: str

    def __new__(cls, c: str, value: int, doc: str) -> "CValue":
        self = super().__new__(cls, value)
        self.c, self.doc = c, doc
        return self

    def __repr__(self) -> str:
        return f"{self.c}={int(self):#x}"


# enum rst_kind
EV_RESET = CValue("EV_RESET", 1, "a TCP reset sent or received")
EV_CT_DROP = CValue("EV_CT_DROP", 2, "a packet dropped by netfilter (kfree_skb NETFILTER_DROP)")
EV_CT_FULL = CValue("EV_CT_FULL", 3, "a kernel log line from conntrack / IPVS (printk:console)")
EV_IPVS_EXPIRE = CValue("EV_IPVS_EXPIRE", 4, "an IPVS connection entry expired (kprobe ip_vs_conn_expire)")
EV_CT_ALLOC_FAIL = CValue("EV_CT_ALLOC_FAIL", 5, "conntrack could not allocate an entry (kretprobe)")
RST_KIND = (EV_RESET, EV_CT_DROP, EV_CT_FULL, EV_IPVS_EXPIRE, EV_CT_ALLOC_FAIL)

# enum rst_dir
DIR_SENT = CValue("DIR_SENT", 1, "this host's kernel sent the reset")
DIR_RECV = CValue("DIR_RECV", 2, "a local socket received the reset")
RST_DIR = (DIR_SENT, DIR_RECV)

# bits of rst_event.flags
EVF_HAS_SOCK = CValue("EVF_HAS_SOCK", 0x01, "a local socket was involved")
EVF_KEEPALIVE = CValue("EVF_KEEPALIVE", 0x02, "SO_KEEPALIVE (SOCK_KEEPOPEN) set")
EVF_KA_PER_SOCK = CValue("EVF_KA_PER_SOCK", 0x04, "the socket overrides the netns keepalive time")
EVF_IDLE = CValue("EVF_IDLE", 0x08, "idle_jiffies is valid")
EVF_REASON = CValue("EVF_REASON", 0x10, "reason holds a kernel reason")
EVF_TRIGGER = CValue("EVF_TRIGGER", 0x20, "trigger_flags holds the triggering segment's TCP flags "
                     "(EV_CT_DROP: the dropped segment's, and sport/dport its ports)")
EVF_OWNER = CValue("EVF_OWNER", 0x40, "pid/comm/cgroup are the socket's owner")
EVF_KA = CValue("EVF_KA", 0x80, "keepalive fields are valid (a full TCP socket)")
FLAGS = (EVF_HAS_SOCK, EVF_KEEPALIVE, EVF_KA_PER_SOCK, EVF_IDLE, EVF_REASON, EVF_TRIGGER,
         EVF_OWNER, EVF_KA)
# bits of rst_event.flags2
EVF2_SK_CGROUP = CValue("EVF2_SK_CGROUP", 0x01, "cgroup is the socket's own (its creator's, or for an "
                        "accepted socket its listener's), not a learned owner's")
EVF2_L3 = CValue("EVF2_L3", 0x02, "EV_CT_DROP: family, saddr, daddr and proto are the dropped packet's IP "
                 "header's")
EVF2_REASON_DERIVED = CValue("EVF2_REASON_DERIVED", 0x04, "EV_CT_DROP: NETFILTER_DROP told from where the "
                             "packet was freed (kernels whose kfree_skb has no reason)")
FLAGS2 = (EVF2_SK_CGROUP, EVF2_L3, EVF2_REASON_DERIVED)

# RFC 793's SYN bit of a TCP header's flags byte: the protocol's, not a
# value of the kernel or of the header above
TCP_FLAG_SYN = 0x02

#: C types of the struct's members: (size in bytes, numpy type of one)
C_TYPES = {"__u64": (8, "<u8"), "__u32": (4, "<u4"), "__u16": (2, "<u2"), "__u8": (1, "u1"),
           "char": (1, "S1")}


@dataclass(frozen=True)
class Member:
    """A member of `struct rst_event`: `ctype name[count]`."""
    name: str
    ctype: str
    doc: str = ""
    count: int = 1              # an array of `count` (addresses, strings)

    @property
    def size(self) -> int:
        return C_TYPES[self.ctype][0] * self.count

    @property
    def align(self) -> int:
        return C_TYPES[self.ctype][0]

    @property
    def numpy(self) -> str:
        if self.count == 1:
            return C_TYPES[self.ctype][1]
        return f"S{self.count}" if self.ctype == "char" else f"V{self.size}"


#: struct rst_event, member by member in the header's order: one struct for
#: every kind and both address families (IPv4 in the first 4 bytes of a
#: 16-byte address). Raw kernel values (state, reason) are carried as they
#: are and decoded with the running kernel's own tables.
EVENT = (
    Member("ts_ns", "__u64", "bpf_ktime_get_ns(): CLOCK_MONOTONIC"),
    Member("cookie", "__u64", "socket cookie, 0 when unknown"),
    Member("cgroup", "__u64", "owner's cgroup id"),
    Member("netns", "__u32", "netns inode where it happened"),
    Member("dev_netns", "__u32", "no-socket reset: netns of the receiving device"),
    Member("pid", "__u32", "owner's tgid"),
    Member("reason", "__u32", "raw sk_rst_reason / skb_drop_reason"),
    Member("idle_jiffies", "__u32", "since the last data/ACK received"),
    Member("ka_time", "__u32", "effective keepalive time, jiffies"),
    Member("ka_intvl", "__u32", "effective keepalive interval, jiffies"),
    Member("sport", "__u16", "host order; the reset's source (EV_CT_DROP: the packet's)"),
    Member("dport", "__u16", "host order; the reset's destination (EV_CT_DROP: the packet's)"),
    Member("kind", "__u8", "enum rst_kind"),
    Member("dir", "__u8", "enum rst_dir"),
    Member("family", "__u8", "AF_INET / AF_INET6"),
    Member("state", "__u8", "TCP state of the socket, 0 when none"),
    Member("flags", "__u8", "EVF_*"),
    Member("ka_probes", "__u8", "keepalive probes"),
    Member("trigger_flags", "__u8", "TCP flags byte of the segment that triggered a sent reset (EV_CT_DROP: "
           "of the dropped segment)"),
    Member("proto", "__u8", "IPVS, EV_CT_DROP: L4 protocol"),
    Member("saddr", "__u8", "the reset's source (IPVS: client; EV_CT_DROP: the packet's)", 16),
    Member("daddr", "__u8", "the reset's destination (IPVS: virtual address; EV_CT_DROP: the packet's)", 16),
    Member("raddr", "__u8", "IPVS: real server", 16),
    Member("rport", "__u16", "IPVS: real server port; EV_CT_DROP: the packet's ethertype"),
    Member("ipvs_state", "__u16", "IPVS: connection state"),
    Member("flags2", "__u8", "EVF2_*"),
    Member("_pad", "__u8", "", 3),
    Member("comm", "char", "owner's comm", 16),
    Member("text", "char", "EV_CT_FULL: the log line (NUL-terminated or cut); left unwritten by the "
           "other kinds", 96),
)
MEMBERS = {m.name: m for m in EVENT}


# ---- storm mode's aggregates (bpf/rsttrace.h) ---------------------------------

# bits of rst_agg_key.aflags
AGGF_SYN = CValue("AGGF_SYN", 0x01, "the triggering segment had SYN")
AGGF = (AGGF_SYN,)

#: struct rst_agg_key: what a storm's resets are counted under, per CPU
AGG_KEY = (
    Member("saddr", "__u8", "the reset's source", 16),
    Member("daddr", "__u8", "the reset's destination", 16),
    Member("netns", "__u32", "netns inode"),
    Member("reason", "__u32", "raw sk_rst_reason, with EVF_REASON in flags"),
    Member("epoch", "__u32", "the interval it was counted in"),
    Member("sport", "__u16", "the lower port kept, the other 0"),
    Member("dport", "__u16", "(the same)"),
    Member("dir", "__u8", "enum rst_dir"),
    Member("family", "__u8", "AF_INET / AF_INET6"),
    Member("state", "__u8", "TCP state, 0 when no socket"),
    Member("flags", "__u8", "EVF_HAS_SOCK | EVF_REASON | EVF_TRIGGER of the resets"),
    Member("aflags", "__u8", "AGGF_*"),
    Member("_pad", "__u8", "", 3),
)
#: struct rst_agg_val: per CPU
AGG_VAL = (
    Member("count", "__u64", "resets counted, not sent in full"),
    Member("first_ns", "__u64", "bpf_ktime_get_ns() of the first counted"),
    Member("last_ns", "__u64", "and of the last"),
    Member("sampled", "__u64", "resets of this key sent in full this interval"),
)


def layout(members: tuple[Member, ...] = EVENT) -> tuple[dict[str, int], int]:
    """(member -> offset, size) of the struct by C's rules on the targets
    rsttrace runs on: each member at a multiple of its type's size, the
    whole a multiple of the largest."""
    offsets, at, widest = {}, 0, 1
    for m in members:
        at = -(-at // m.align) * m.align
        offsets[m.name] = at
        at += m.size
        widest = max(widest, m.align)
    return offsets, -(-at // widest) * widest


# ---- how an event member becomes a field -------------------------------------

@dataclass(frozen=True)
class Decode:
    """How a field's value is made from its member (tracer/events.py has
    one builder per `op`):

    int          the number as it is          time    unix seconds of ts_ns
    bit ARG      whether bit ARG is set       kind    the record's kind name
    names ARG    the name in the running kernel's table ARG, else the
                 number as text (ZERO, when given, names 0; where the
                 flag FLAG is set, YES instead: a name the program
                 derived, the kernel having no value for it)
    addr         the address, IPv4 or IPv6 by `family`
    family       4 or 6                       enum ARG  the name paired with the value
    jiffies_ms   jiffies as ms (kernel HZ)    jiffies_s   as whole seconds
    cstring      text up to its NUL           text    the text, trimmed
    choice ARG   YES when bit ARG is set, else NO
    pod          the Kubernetes pod of the cgroup id (tracer/pods.py)
    full_netns   the namespace a "table full" line names
    null         always null (not known where the event is made)"""
    op: str
    arg: Any = None
    zero: str | None = None
    yes: str | None = None
    no: str | None = None
    flag: CValue | None = None

    def text(self) -> str:
        arg = getattr(self.arg, "c", self.arg)
        if self.op == "bit":
            return f"bit {arg}" if isinstance(arg, str) else f"bit {arg:#04x}"
        if self.op == "choice":
            return f"`{self.yes}` if {arg} else `{self.no}`"
        if self.op == "names":
            return f"name in the kernel's {arg}" + (f"; `{self.yes}` if {self.flag.c}" if self.flag else "")
        if self.op == "enum":
            return ", ".join(f"{v.c} `{n}`" for v, n in self.arg)
        return {"int": "as is", "time": "unix s", "kind": "", "addr": "address",
                "family": "4 / 6", "jiffies_ms": "jiffies → ms", "jiffies_s": "jiffies → s",
                "cstring": "up to NUL", "text": "trimmed", "pod": "cgroup → pod",
                "full_netns": "parsed", "null": ""}.get(self.op, self.op)


INT, TIMEOF, ADDR, FAMILY = Decode("int"), Decode("time"), Decode("addr"), Decode("family")
JIFFIES_MS, JIFFIES_S, CSTRING, TEXT = (Decode("jiffies_ms"), Decode("jiffies_s"), Decode("cstring"),
                                        Decode("text"))
POD, FULL_NETNS, NULL, KIND = Decode("pod"), Decode("full_netns"), Decode("null"), Decode("kind")


def bit(mask: int) -> Decode:
    return Decode("bit", mask)


def names(table: str, zero: str | None = None, derived: tuple[CValue, str] | None = None) -> Decode:
    flag, yes = derived or (None, None)
    return Decode("names", table, zero=zero, flag=flag, yes=yes)


def choice(flag: CValue, yes: str, no: str) -> Decode:
    return Decode("choice", flag, yes=yes, no=no)


def enum(*pairs: tuple[CValue, str]) -> Decode:
    return Decode("enum", tuple(pairs))


@dataclass(frozen=True)
class Csv:
    """A column of the report's CSV (analysis/csvout.py).

    fmt: `time` (ISO 8601 UTC with ms), `text` (formula-safe, quoted when
    needed), `int`, `ms_as_s` (milliseconds shown as seconds). `only_if`:
    the column is empty unless this field of the record is true. A column
    that shows no field has a `source`: `verdict` (the verdict's attribute
    of that name, the same in every row of an incident) or `names` (the
    name of the row's namespace), `row` (a value the report sets on
    each row: its node, the node at the other end) or `count` (the resets
    the row stands for)."""
    column: str
    fmt: str = "text"
    only_if: str | None = None
    doc: str = ""
    source: str = ""


@dataclass(frozen=True)
class Field:
    """One field of a record: its JSON key and type, unit and meaning; for
    an event, the member of struct rst_event it is decoded from, how
    (`decode`) and when it has a value (`when`, else null: an expression
    of EVF_/EVF2_ flags with `&`, `|`, `!`, or `nonzero` for the member
    itself); `raw` names the field beside it that holds the kernel's
    number; `csv` the report column that shows it; `label` the title of a
    live screen column showing it; `later`: added to schema 1 after its
    first recordings, so older ones lack it."""
    name: str
    type: Any
    doc: str
    unit: str = ""
    c: str | None = None
    decode: Decode | None = None
    when: str | None = None
    raw: str | None = None
    csv: Csv | None = None
    label: str | None = None
    later: bool = False


@dataclass(frozen=True)
class Kind:
    """A kind of record: its `kind` value and fields, in the order written;
    `value` is its enum rst_kind value for the events the kernel sends."""
    name: str
    doc: str
    fields: tuple[Field, ...]
    value: CValue | None = None

    def __getitem__(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.name} has no field {name!r}")

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)


# Every record has `kind` (the key of KINDS) and `t`.
def _kind_field(doc: str = "the kind of record") -> Field:
    return Field("kind", str, doc, c="kind", decode=KIND)


T = Field("t", TIME, "unix time, to the microsecond (the kernel's monotonic clock converted once at start)",
          unit="s", c="ts_ns", decode=TIMEOF, csv=Csv("time", "time", doc="the reset's time, UTC, to the ms"),
          label="TIME")

RESET = Kind("reset", "a TCP reset sent by this host's kernel or received by a local socket", value=EV_RESET,
             fields=(
    _kind_field(), T,
    Field("dir", Literal["sent", "recv"], "this host's kernel sent the reset, or a local socket received one",
          c="dir", decode=enum((DIR_SENT, "sent"), (DIR_RECV, "recv")), csv=Csv("direction")),
    Field("netns", U32, "network namespace inode where the event happened", c="netns", decode=INT,
          csv=Csv("netns", "int"), label="NETNS"),
    Field("family", Literal[4, 6], "address family", c="family", decode=FAMILY, csv=Csv("family", "int")),
    Field("src", str, "who sent the reset (the RST's source)", c="saddr", decode=ADDR, csv=Csv("src")),
    Field("sport", U16, "the RST's source port", c="sport", decode=INT, csv=Csv("sport", "int")),
    Field("dst", str, "who was reset (the RST's destination)", c="daddr", decode=ADDR, csv=Csv("dst")),
    Field("dport", U16, "the RST's destination port", c="dport", decode=INT, csv=Csv("dport", "int")),
    Field("state", str, "TCP state name of the socket (`ESTABLISHED`, `SYN_SENT`, ...); `\"\"` for a reset "
          "sent with no socket", c="state", decode=names("tcp_states", zero=""), raw="state_raw",
          csv=Csv("state"), label="STATE"),
    Field("state_raw", U8, "the kernel's value of `state`", c="state", decode=INT),
    Field("reason", str | None, "`enum sk_rst_reason` name (sent resets on 6.10+)", c="reason",
          decode=names("rst_reasons"), when="EVF_REASON", raw="reason_raw", csv=Csv("kernel_reason")),
    Field("reason_raw", U32 | None, "the kernel's value of `reason`", c="reason", decode=INT, when="EVF_REASON"),
    Field("has_sock", bool, "a local socket was involved (false: no-socket reset)", c="flags",
          decode=bit(EVF_HAS_SOCK)),
    Field("cookie", U64 | None, "socket cookie (`SO_COOKIE`, `ss -e`): with BTF tracepoints on 5.12+ always, "
          "generated by the kernel if the socket had none yet; with raw tracepoints (and before 5.12, where BTF "
          "programs cannot make one) only where the socket already has one", c="cookie", decode=INT, when="nonzero", csv=Csv("cookie", "int")),
    Field("syn", bool | None, "sent no-socket reset: the triggering segment had SYN (a refused connect)",
          c="trigger_flags", decode=bit(TCP_FLAG_SYN), when="EVF_TRIGGER & !EVF_HAS_SOCK", raw="trigger_flags"),
    Field("trigger_flags", U8 | None, "raw TCP flags byte of the triggering segment (sent resets)",
          c="trigger_flags", decode=INT, when="EVF_TRIGGER"),
    Field("idle_ms", U64 | None, "socket resets: time since the last data or ACK **received** before the reset "
          "(the write that met the forgotten state does not count)", unit="ms", c="idle_jiffies",
          decode=JIFFIES_MS, when="EVF_IDLE", csv=Csv("idle_s", "ms_as_s", doc="`idle_ms` in seconds"),
          label="IDLE"),
    Field("keepalive", bool | None, "SO_KEEPALIVE set on the socket (null: no socket)", c="flags",
          decode=bit(EVF_KEEPALIVE), when="EVF_KA"),
    Field("ka_time_s", U32 | None, "effective keepalive time (per-socket value, else the socket's namespace "
          "sysctl)", unit="s", c="ka_time", decode=JIFFIES_S, when="EVF_KA",
          csv=Csv("keepalive_s", "int", only_if="keepalive", doc="`ka_time_s` where `keepalive` is on")),
    Field("ka_intvl_s", U32 | None, "effective keepalive interval", unit="s", c="ka_intvl", decode=JIFFIES_S,
          when="EVF_KA"),
    Field("ka_probes", U8 | None, "effective keepalive probe count", c="ka_probes", decode=INT, when="EVF_KA"),
    Field("ka_per_socket", bool | None, "the socket overrides the namespace's keepalive time", c="flags",
          decode=bit(EVF_KA_PER_SOCK), when="EVF_KA"),
    Field("dev_netns", U32 | None, "no-socket reset: netns of the device that received the triggering packet "
          "(same as `netns`)", c="dev_netns", decode=INT, when="nonzero"),
    Field("pid", U32 | None, "owning process, learned at `connect()` or as `accept()` returns the socket (the "
          "process that accepted it); null when unknown (never a guess)", c="pid", decode=INT, when="EVF_OWNER",
          csv=Csv("pid", "int")),
    Field("comm", str | None, "the owning process's name", c="comm", decode=CSTRING, when="EVF_OWNER",
          csv=Csv("comm")),
    Field("cgroup", U64 | None, "cgroup v2 id (see `cgroup_of`)", c="cgroup", decode=INT,
          when="EVF_OWNER | EVF2_SK_CGROUP"),
    Field("cgroup_of", Literal["owner", "socket"] | None, "where `cgroup` came from: `\"owner\"` (the owning "
          "process's, with `pid`) or `\"socket\"` (no owner learned — a socket connected or accepted before "
          "tracing began, or one reset before it was accepted — so the cgroup the socket itself was created "
          "in; for an accepted socket, its listener's)", c="flags", decode=choice(EVF_OWNER, "owner", "socket"),
          when="EVF_OWNER | EVF2_SK_CGROUP", later=True),
    Field("pod", str | None, "the Kubernetes pod of `cgroup` (`…/pod<uid>/…` in either kubelet cgroup driver): "
          "`namespace/name` when the kubelet's `/var/log/pods/<namespace>_<name>_<uid>` exists, `uid:<uid>` "
          "otherwise; null outside Kubernetes or without a cgroup (tracer/pods.py)", c="cgroup", decode=POD,
          when="EVF_OWNER | EVF2_SK_CGROUP", csv=Csv("pod"), later=True),
))

CT_DROP = Kind("ct_drop", "a packet dropped by netfilter", value=EV_CT_DROP, fields=(
    _kind_field(), T,
    Field("netns", U32 | None, "network namespace inode where the packet was dropped", c="netns", decode=INT,
          when="nonzero"),
    Field("reason", str | None, "`enum skb_drop_reason` name (`NETFILTER_DROP`): the kernel's from 5.17, "
          "before that derived (`reason_derived`)", c="reason",
          decode=names("drop_reasons", derived=(EVF2_REASON_DERIVED, "NETFILTER_DROP")), raw="reason_raw"),
    Field("reason_raw", U32 | None, "the kernel's value of `reason`; null where it was derived (the kernel "
          "has no value for it)", c="reason", decode=INT, when="!EVF2_REASON_DERIVED"),
    Field("reason_derived", bool, "true where the kernel gives no reason (before 5.17): the packet was freed "
          "inside netfilter's verdict handling (`nf_hook_slow`, `nf_reinject`, `nft_do_chain`: their code "
          "ranges in the running kernel, from `/proc/kallsyms`), which later kernels report as `NETFILTER_DROP`",
          c="flags2", decode=bit(EVF2_REASON_DERIVED), later=True),
    Field("protocol", U16 | None, "L3 ethertype of the packet", c="rport", decode=INT),
    # The packet's own direction, as netfilter saw it where it was dropped
    # (tracer: skb_flow in bpf/rsttrace.bpf.c); null when not read.
    Field("family", Literal[4, 6] | None, "the packet's address family; null for a packet that is not IPv4 or "
          "IPv6", c="family", decode=FAMILY, when="EVF2_L3", later=True),
    Field("ip_proto", U8 | None, "the packet's L4 protocol (IPv4 `protocol`, IPv6 the fixed header's next "
          "header; 6 is TCP)", c="proto", decode=INT, when="EVF2_L3", later=True),
    Field("src", str | None, "the packet's source address, as netfilter saw it there", c="saddr", decode=ADDR,
          when="EVF2_L3", later=True),
    Field("sport", U16 | None, "the packet's TCP source port; null unless a TCP segment whose header was read "
          "(not after IPv6 extension headers, not in a later IPv4 fragment)", c="sport", decode=INT,
          when="EVF_TRIGGER", later=True),
    Field("dst", str | None, "the packet's destination address (on a router's forward path: after DNAT)",
          c="daddr", decode=ADDR, when="EVF2_L3", later=True),
    Field("dport", U16 | None, "the packet's TCP destination port; null as `sport`", c="dport", decode=INT,
          when="EVF_TRIGGER", later=True),
    Field("tcp_flags", U8 | None, "the segment's TCP flags byte (`0x02` SYN, `0x10` ACK, ...); null as `sport`",
          c="trigger_flags", decode=INT, when="EVF_TRIGGER", later=True),
))

CT_FULL = Kind("ct_full", "\"table full\" from the kernel log", value=EV_CT_FULL, fields=(
    _kind_field(), T,
    Field("netns", U32 | None, "namespace inode parsed from the message; null when absent", c="text",
          decode=FULL_NETNS),
    Field("text", str | None, "the log line", c="text", decode=TEXT),
))

IPVS_EXPIRE = Kind("ipvs_expire", "an IPVS entry expired (kernels with IPVS and kprobes)", value=EV_IPVS_EXPIRE,
                   fields=(
    _kind_field(), T,
    Field("netns", U32 | None, "from the entry's `struct netns_ipvs` where BTF describes it; where it does not, "
          "as on Debian's 6.1 and 6.12, the namespace on the kernel's namespace list whose IPVS instance is the "
          "entry's; on kernels without BTF for IPVS (before 5.11, e.g. Debian's 5.10) the entry's `struct "
          "netns_ipvs` as the running kernel's own headers lay it out; 0 where none is possible, and `rsttrace doctor` says why", c="netns", decode=INT),
    Field("protocol", U16 | None, "L4 protocol number", c="proto", decode=INT),
    Field("client", str | None, "client address", c="saddr", decode=ADDR),
    Field("cport", U16 | None, "client port", c="sport", decode=INT),
    Field("vaddr", str | None, "virtual (service) address", c="daddr", decode=ADDR),
    Field("vport", U16 | None, "virtual port", c="dport", decode=INT),
    Field("daddr", str | None, "real server address", c="raddr", decode=ADDR),
    Field("dport", U16 | None, "real server port", c="rport", decode=INT),
    Field("state", str | None, "IPVS connection state name", c="ipvs_state", decode=names("ipvs_states"),
          raw="state_raw"),
    Field("state_raw", U16 | None, "the kernel's value of `state`", c="ipvs_state", decode=INT),
))

CT_ALLOC_FAIL = Kind("ct_alloc_fail", "conntrack refused an entry (kernels with kprobes)", value=EV_CT_ALLOC_FAIL,
                     fields=(
    _kind_field(), T,
    Field("netns", U32 | None, "null: not known at the function's return", decode=NULL),
    Field("errno", U32 | None, "the error returned", c="reason", decode=INT),
))

#: The events the kernel sends, by enum rst_kind value.
EVENTS = (RESET, CT_DROP, CT_FULL, IPVS_EXPIRE, CT_ALLOC_FAIL)

# ---- records that do not come from struct rst_event --------------------------

# a firewall rule that answers with a reset (tracer/rules.py)
_RULE = obj("Rule", {"source": Literal["nft", "iptables"], "family": str, "table": str, "chain": str,
                     "handle": U64 | None, "text": str, "packets": U64 | None})

NAMESPACE = (
    Field("netns", U32, "inode (the kernel reuses it once the namespace is gone)"),
    Field("name", str | None, "name in `/run/netns`, `init` for the root namespace, `pid:N` otherwise "
          "(see *Names* below)"),
    Field("ct", dict[str, U64] | None, "`{count, max, buckets, drop, early_drop, invalid, insert_failed, found, "
          "search_restart, chaintoolong}` (summed over CPUs; counters are cumulative) or null"),
    Field("sysctl", dict[str, NUM] | None, "`{nf_conntrack_tcp_timeout_established, nf_conntrack_tcp_be_liberal, "
          "tcp_keepalive_time, tcp_keepalive_intvl, tcp_keepalive_probes, ...}` numeric values, missing keys "
          "when unreadable"),
    Field("ipvs", dict[str, NUM] | None, "`{tcp, tcpfin, udp}` seconds, or null where IPVS is absent"),
    Field("nat", bool | None, "true when the namespace has NAT rules (an nftables chain of type nat, or a "
          "legacy iptables nat table); null when unknown"),
    Field("tcp_sockets", U64 | None, "TCP sockets in the namespace (a namespace is listed when it has sockets, "
          "conntrack activity, NAT rules or reject rules read)"),
    Field("cookie", U64 | None, "the namespace's cookie (`SO_NETNS_COOKIE`, read from a socket made inside it): "
          "never reused while the host runs, so it tells this namespace from a later one with the same inode; "
          "null on kernels before 5.14"),
    Field("rules", list[_RULE] | None, "only in a namespace where netfilter dropped a packet in the last minute: "   # type: ignore[valid-type]
          "its firewall rules that answer with a TCP reset, in ruleset order (at most 64), each `{source: "
          "\"nft\"/\"iptables\", family, table, chain, handle (nft; null for iptables), text, packets (the "
          "rule's counter; null without one)}`; `[]` when it has none, null when the rules could not be read. "
          "Read at once after the namespace's first drop (a snapshot is taken then), then at most every 30 s "
          "while drops go on (tracer/rules.py: `nft -j list ruleset`, iptables-save for iptables-nft REJECT "
          "targets, iptables-legacy-save for legacy tables)"),
)

CTX = Kind("ctx", "context snapshot, on a period and on demand", fields=(
    _kind_field(), Field("t", TIME, "unix time of the snapshot", unit="s"),
    Field("namespaces", list[obj("Namespace", {f.name: f.type for f in NAMESPACE})],   # type: ignore[misc]
          "one object per namespace with sockets or conntrack (the table below)"),
))

RESET_AGG = Kind("reset_agg", "storm mode: resets of one key counted in the kernel in one interval (at most "
                 "`STORM_INTERVAL_S`, 1 s) instead of sent one by one; the key's first resets in the interval "
                 "(`sampled`, a bounded sample per CPU) came as `reset` records and are not in `count`",
                 fields=(
    _kind_field(), Field("t", TIME, "unix time of the last reset counted", unit="s"),
    Field("t_first", TIME, "unix time of the first reset counted", unit="s"),
    Field("count", U64, "resets counted (sent or received as `dir` says): each one a reset no `reset` record "
          "stands for"),
    Field("sampled", U64, "resets of the key in the interval that came in full as `reset` records"),
    Field("dir", Literal["sent", "recv"], "as in `reset`"),
    Field("netns", U32, "as in `reset`"),
    Field("family", Literal[4, 6], "as in `reset`"),
    Field("src", str, "as in `reset`"),
    Field("sport", U16, "the RST's source port, when it is the lower of the two (the service's), else 0: "
          "the other port, an ephemeral one, is not kept"),
    Field("dst", str, "as in `reset`"),
    Field("dport", U16, "the RST's destination port, when it is the lower of the two, else 0"),
    Field("state", str, "as in `reset`"),
    Field("state_raw", U8, "the kernel's value of `state`"),
    Field("reason", str | None, "as in `reset`"),
    Field("reason_raw", U32 | None, "the kernel's value of `reason`"),
    Field("has_sock", bool, "as in `reset`"),
    Field("syn", bool | None, "the triggering segment had SYN (a refused connect); null when the segment was not "
          "read (received resets)"),
))

#: Every kind of record between the header and the totals line.
RECORDS = EVENTS + (RESET_AGG, CTX)
KINDS = {k.name: k for k in RECORDS}

_PLAN_ENTRY = obj("PlanEntry", {"hook": str | None, "available": bool, "why": str | None})
_FILTERS = obj("Filters", {"ports": list[U16], "netns": list[U32]})

HEADER = (
    Field("schema", U32, f"the layout's version (this one: {SCHEMA_VERSION}); a reader refuses another"),
    Field("t", TIME, "unix time the recording began", unit="s"),
    Field("host", str | None, "host name"),
    Field("node", str | None, "the node's name: `record --node`, the agent's `NODE_NAME`, else the host name; "
          "a report over several recordings reads each node's as one stream and joins the two ends of a reset "
          "across nodes by it"),
    Field("boot_id", str | None, "`/proc/sys/kernel/random/boot_id`: recordings of one boot share its monotonic "
          "clock"),
    Field("monotonic", NUM | None, "`CLOCK_MONOTONIC` at `t`: event times are this clock converted with "
          "`t - monotonic`, so two recordings of one boot whose `t - monotonic` differ had the wall clock "
          "stepped between them", unit="s"),
    Field("kernel", str | None, "`uname -r`"),
    Field("tool", str | None, "rsttrace version"),
    Field("hz", U32 | None, "kernel HZ"),
    Field("transport", str | None, "`\"percpu\"`, `\"ringbuf\"` or `\"perfbuf\"`: how events came from the kernel"),
    Field("headers", str | None, "the kernel headers bcc compiled with, when not the running kernel's own"),
    Field("hooks", str | None, "`\"BTF tracepoints\"` or `\"raw tracepoints\"`, with the verifier's reason when "
          "BTF tracepoints were refused"),
    Field("attach_s", NUM | None, "seconds it took to compile, load and attach", unit="s"),
    Field("storm_rate", U32 | None, "storm mode: resets per second on a CPU above which the kernel counted resets "
          "per key (`reset_agg` records) and sent only a sample in full; 0: off (every reset in full); absent in "
          "recordings made before storm mode"),
    Field("mem_total", U64 | None, "the host's RAM (sizes a conntrack table fix)", unit="bytes"),
    Field("plan", dict[str, _PLAN_ENTRY] | None,   # type: ignore[valid-type]
          "signal → `{\"hook\": str|null, \"available\": bool, \"why\": str}`"),
    Field("filters", _FILTERS | None, "`{\"ports\": [...], \"netns\": [...]}`"),   # type: ignore[valid-type]
    Field("netns_names", dict[INODE_KEY, str] | None, "inode → name"),
    Field("netns_cookies", dict[INODE_KEY, U64 | None] | None, "inode → cookie of each namespace read at the "
          "start, listed in the first `ctx` or not; see `ctx.cookie`"),
)

TOTALS = (
    Field("t", TIME | None, "unix time the recording ended", unit="s"),
    Field("events", U64 | None, "events written"),
    Field("lost", U64 | None, "counted in the kernel: events the rings refused (full), plus program runs the "
          "kernel skipped because the same program was already running on that CPU"),
    Field("rescued", U64 | None, "BPF ring buffer only: events that came through the rescue ring because the "
          "main one refused them: read, not lost"),
    Field("kernel_events", U64 | None, "events read from the kernel"),
    Field("by_kind", dict[str, U64] | None, "kind → count"),
    Field("duration_s", NUM | None, "how long it recorded", unit="s"),
    Field("burst_held", U64 | None, "`rsttrace record`: events that came faster than `--burst-rate` and were "
          "kept raw, then written as text, in their place, when the rate fell or the recording ended"),
    Field("burst_peak_mb", NUM | None, "`rsttrace record`: the most held at once", unit="MB"),
    Field("burst_note", str | None, "where holding had to stop (the file beside the output could not take "
          "more: from then on events were written as they came, none lost)"),
)

# ---- the report's CSV ----------------------------------------------------------

#: Columns of the report that show no field of the record: the verdict's,
#: the same in every row of one incident, and the namespace's name.
REPORT_COLUMNS = {c.column: c for c in (
    Csv("cause", doc="the root cause (README: the causes)", source="verdict"),
    Csv("confidence", doc="`high`, `medium` or `low`", source="verdict"),
    Csv("evidence", doc="what was seen, in words", source="verdict"),
    Csv("fix", doc="exact commands first, then settings that live in a pod spec or a client pool",
        source="verdict"),
    Csv("incident", "int", doc="the sent and received resets of one incident share it", source="verdict"),
    Csv("netns_name", doc="the name of `netns`", source="names"),
    Csv("count", "int", doc="the resets the row stands for: 1 for a reset recorded in full, a `reset_agg`'s "
        "`count` for a storm's row (its ephemeral port empty)", source="count"),
    Csv("sender_netns", "int", doc="the namespace whose kernel sent the reset, when on this host",
        source="verdict"),
    Csv("receiver_netns", "int", doc="the namespace of the socket reset, when on this host", source="verdict"),
    Csv("node", doc="the node whose recording has the reset (its header's `node`, else `host`)", source="row"),
    Csv("peer_node", doc="a report over several nodes' recordings: the node at the other end of a reset joined "
        "across nodes (for a received reset the node that sent it, dropped its packet or expired its flow; "
        "for a sent one the node that received it); empty when not joined", source="row"),
)}

#: The report's columns, in order: one row per reset event.
CSV_ORDER = ("time", "direction", "netns", "pod", "pid", "comm", "src", "sport", "dst", "dport", "state",
             "kernel_reason", "idle_s", "keepalive_s", "cause", "confidence", "evidence", "fix",
             "incident", "netns_name", "sender_netns", "receiver_netns", "family", "cookie", "node", "peer_node",
             "count")


def csv_columns() -> list[tuple[Csv, Field | None]]:
    """(column, the reset field it shows or None for a report column), in
    CSV order."""
    by_col = {f.csv.column: f for f in RESET.fields if f.csv is not None}
    return [(by_col[c].csv, by_col[c]) if c in by_col else (REPORT_COLUMNS[c], None)   # type: ignore[misc]
            for c in CSV_ORDER]


# ---- `when`: the flags under which a field has a value ----------------------

_FLAG_NAMES = {v.c: ("flags", v) for v in FLAGS} | {v.c: ("flags2", v) for v in FLAGS2}


def flag_member(flag: CValue) -> str:
    """The member of struct rst_event that holds `flag`: flags or flags2."""
    return _FLAG_NAMES[flag.c][0]


def parse_when(text: str) -> tuple:
    """`EVF_A & !EVF_B | EVF2_C` as a tree: ("or", [("and", [terms])]),
    terms ("flag", member, value, negated) or ("nonzero", negated)."""
    alts = []
    for alt in text.split("|"):
        terms = []
        for tok in alt.split("&"):
            tok = tok.strip()
            neg = tok.startswith("!")
            name = tok.lstrip("!").strip()
            if name == "nonzero":
                terms.append(("nonzero", neg))
            elif name in _FLAG_NAMES:
                member, value = _FLAG_NAMES[name]
                terms.append(("flag", member, int(value), neg))
            else:
                raise ValueError(f"unknown flag {name!r} in {text!r}")
        alts.append(tuple(terms))
    return tuple(alts)


def _check() -> None:
    """The catalog's own consistency, at import: a misspelt member, flag or
    column fails here rather than in a recording."""
    for kind in EVENTS:
        seen = set()
        for f in kind.fields:
            assert f.name not in seen, f"{kind.name}.{f.name} twice"
            seen.add(f.name)
            assert f.decode is not None, f"{kind.name}.{f.name}: no decoding"
            assert f.c is None or f.c in MEMBERS, f"{kind.name}.{f.name}: no member {f.c}"
            if f.when:
                parse_when(f.when)
            if f.raw:
                assert f.raw in seen or any(g.name == f.raw for g in kind.fields), f"{f.raw}?"
            assert re.fullmatch(r"[a-z_][a-z0-9_]*", f.name), f.name
    cols = [c for c, _ in csv_columns()]
    assert len({c.column for c in cols}) == len(cols) == len(CSV_ORDER)
    missing = {f.csv.column for f in RESET.fields if f.csv} - set(CSV_ORDER)
    assert not missing, f"CSV columns not in CSV_ORDER: {missing}"


_check()
