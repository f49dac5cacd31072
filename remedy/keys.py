"""What rsttrace can change, where it lives and which value is the stronger fix.

Ranges are rsttrace's sanity bounds (documented user-space limits such as
tcp(7)'s 32767 s cap on keepalive idle/interval), checked before anything is
written; the kernel's own checks still apply and a read-back catches any value
it silently clamps.
"""

from __future__ import annotations

from dataclasses import dataclass

KEEPALIVE_TIME = "net.ipv4.tcp_keepalive_time"
KEEPALIVE_INTVL = "net.ipv4.tcp_keepalive_intvl"
KEEPALIVE_PROBES = "net.ipv4.tcp_keepalive_probes"
CT_MAX = "net.netfilter.nf_conntrack_max"
CT_BUCKETS = "net.netfilter.nf_conntrack_buckets"
CT_ESTABLISHED = "net.netfilter.nf_conntrack_tcp_timeout_established"
CT_BE_LIBERAL = "net.netfilter.nf_conntrack_tcp_be_liberal"
IPVS_TCP = "ipvs.tcp"
IPVS_TCPFIN = "ipvs.tcpfin"
IPVS_UDP = "ipvs.udp"
IPVS_KEYS = (IPVS_TCP, IPVS_TCPFIN, IPVS_UDP)

# Conntrack stores timeouts in jiffies in an int; INT_MAX / 1000 keeps any
# HZ up to 1000 from overflowing.
_TIMEOUT_MAX = 2_147_483


@dataclass(frozen=True)
class KeySpec:
    key: str
    scope: str          # "global": one value per node (init netns); "netns": per namespace
    lo: int
    hi: int
    prefer: str         # "max" or "min": of two proposals, which one is the stronger fix
    kind: str = "sysctl"  # "sysctl" or "ipvs"
    explicit: bool = False  # a trade-off: applied only when the user asks for it
    unit: str = "s"

    def stronger(self, a: int, b: int) -> int:
        return max(a, b) if self.prefer == "max" else min(a, b)

    def at_least_as_strong(self, current: int, proposed: int) -> bool:
        """True when `current` already fixes what `proposed` asks for."""
        return current >= proposed if self.prefer == "max" else current <= proposed


_SPECS = {s.key: s for s in (
    KeySpec(CT_MAX, "global", 1024, 2**31 - 1, "max", unit="entries"),
    KeySpec(CT_BUCKETS, "global", 1024, 2**26, "max", unit="buckets"),
    KeySpec(CT_ESTABLISHED, "netns", 1, _TIMEOUT_MAX, "max"),
    KeySpec(CT_BE_LIBERAL, "netns", 0, 1, "max", explicit=True, unit=""),
    # tcp(7): TCP_KEEPIDLE and TCP_KEEPINTVL are capped at 32767 s, TCP_KEEPCNT at 127.
    KeySpec(KEEPALIVE_TIME, "netns", 1, 32767, "min"),
    KeySpec(KEEPALIVE_INTVL, "netns", 1, 32767, "min"),
    KeySpec(KEEPALIVE_PROBES, "netns", 1, 127, "min", unit="probes"),
    KeySpec(IPVS_TCP, "netns", 1, _TIMEOUT_MAX, "max", kind="ipvs"),
    KeySpec(IPVS_TCPFIN, "netns", 1, _TIMEOUT_MAX, "max", kind="ipvs"),
    KeySpec(IPVS_UDP, "netns", 1, _TIMEOUT_MAX, "max", kind="ipvs"),
)}

# Short names as they appear in ctx records (docs/EVENTS.md) and in other tools.
_ALIASES = {k.rsplit(".", 1)[1]: k for k in _SPECS if k.startswith("net.")}
_ALIASES.update({"ipvs.tcp_timeout": IPVS_TCP, "ipvs.tcpfin_timeout": IPVS_TCPFIN,
                 "ipvs.udp_timeout": IPVS_UDP, "ipvs.tcp_fin": IPVS_TCPFIN})


class UnknownKey(ValueError):
    pass


def canonical(key: str) -> str:
    key = key.strip().replace("/", ".")
    if key.startswith("proc.sys."):
        key = key[len("proc.sys."):]
    return _ALIASES.get(key, key)


def spec_for(key: str) -> KeySpec:
    """The spec of a changeable key; raises UnknownKey for anything else."""
    key = canonical(key)
    if key in _SPECS:
        return _SPECS[key]
    # Every other conntrack timeout is per namespace; longer never breaks a flow.
    if key.startswith("net.netfilter.nf_conntrack_") and "_timeout" in key:
        return KeySpec(key, "netns", 1, _TIMEOUT_MAX, "max")
    raise UnknownKey(
        f"rsttrace does not change {key!r}; it changes conntrack max/buckets/timeouts/"
        "be_liberal, tcp_keepalive_time/intvl/probes and ipvs.tcp/tcpfin/udp")


def sysctl_path(key: str) -> str:
    return "/proc/sys/" + canonical(key).replace(".", "/")
