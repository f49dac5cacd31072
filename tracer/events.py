"""Decoding of `struct rst_event` (bpf/rsttrace.h) in batches.

`EVENT_DTYPE` is the one Python mirror of the C layout; a kernel test
checks it against what bcc compiled (size and every field offset). Raw
kernel values (state, reason) are decoded with the running kernel's own
tables (`Decoder`), never with numbers typed here.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field

import numpy as np

# Mirrors bpf/rsttrace.h; numpy's aligned layout follows C's rules.
EVENT_DTYPE = np.dtype([
    ("ts_ns", "<u8"), ("cookie", "<u8"), ("cgroup", "<u8"),
    ("netns", "<u4"), ("dev_netns", "<u4"), ("pid", "<u4"), ("reason", "<u4"),
    ("idle_jiffies", "<u4"), ("ka_time", "<u4"), ("ka_intvl", "<u4"),
    ("sport", "<u2"), ("dport", "<u2"),
    ("kind", "u1"), ("dir", "u1"), ("family", "u1"), ("state", "u1"),
    ("flags", "u1"), ("ka_probes", "u1"), ("trigger_flags", "u1"), ("proto", "u1"),
    ("saddr", "V16"), ("daddr", "V16"), ("raddr", "V16"),
    ("rport", "<u2"), ("ipvs_state", "<u2"), ("_pad", "<u4"),
    ("comm", "S16"), ("text", "S96"),
], align=True)

# enum rst_kind / rst_dir / EVF_* in bpf/rsttrace.h (our own ABI, not the kernel's)
EV_RESET, EV_CT_DROP, EV_CT_FULL, EV_IPVS_EXPIRE, EV_CT_ALLOC_FAIL = 1, 2, 3, 4, 5
DIR_SENT, DIR_RECV = 1, 2
EVF_HAS_SOCK, EVF_KEEPALIVE, EVF_KA_PER_SOCK = 0x01, 0x02, 0x04
EVF_IDLE, EVF_REASON, EVF_TRIGGER, EVF_OWNER, EVF_KA = 0x08, 0x10, 0x20, 0x40, 0x80
TCP_SYN_FLAG = 0x02  # RFC 793 header bit, not a kernel value

KINDS = {EV_RESET: "reset", EV_CT_DROP: "ct_drop", EV_CT_FULL: "ct_full",
         EV_IPVS_EXPIRE: "ipvs_expire", EV_CT_ALLOC_FAIL: "ct_alloc_fail"}


def _addr(raw: bytes, family: int) -> str:
    if family == socket.AF_INET6:
        ip6 = ipaddress.IPv6Address(raw)
        return str(ip6.ipv4_mapped) if ip6.ipv4_mapped else str(ip6)
    return socket.inet_ntop(socket.AF_INET, raw[:4])


@dataclass
class Decoder:
    """Turns raw events into records (docs/EVENTS.md)."""
    hz: int
    mono_to_unix: float  # add to CLOCK_MONOTONIC seconds to get unix time
    tcp_states: dict[int, str] = field(default_factory=dict)   # 1 -> "ESTABLISHED"
    rst_reasons: dict[int, str] = field(default_factory=dict)  # 1 -> "NO_SOCKET"
    drop_reasons: dict[int, str] = field(default_factory=dict)  # 12 -> "NETFILTER_DROP"
    ipvs_states: dict[int, str] = field(default_factory=dict)

    def decode(self, buf: bytes | bytearray | memoryview) -> list[dict]:
        arr = np.frombuffer(buf, dtype=EVENT_DTYPE)
        return self.decode_array(arr)

    def decode_array(self, arr: np.ndarray) -> list[dict]:
        if not len(arr):
            return []
        # Column-wise work in numpy; one dict per event at the end.
        t = (arr["ts_ns"] / 1e9 + self.mono_to_unix).round(6).tolist()
        kinds = arr["kind"].tolist()
        flags = arr["flags"].tolist()
        cols = {name: arr[name].tolist() for name in (
            "netns", "dev_netns", "pid", "reason", "sport", "dport", "dir", "family",
            "state", "ka_probes", "trigger_flags", "cookie", "cgroup", "proto", "rport",
            "ipvs_state")}
        idle_ms = (arr["idle_jiffies"].astype(np.uint64) * 1000 // self.hz).tolist()
        ka_time = (arr["ka_time"] // self.hz).tolist()
        ka_intvl = (arr["ka_intvl"] // self.hz).tolist()
        saddr, daddr = arr["saddr"].tolist(), arr["daddr"].tolist()
        out = []
        for i, kind in enumerate(kinds):
            f = flags[i]
            if kind == EV_RESET:
                fam = cols["family"][i]
                has_idle = bool(f & EVF_IDLE)
                has_ka = bool(f & EVF_KA)
                owner = bool(f & EVF_OWNER)
                trig = cols["trigger_flags"][i] if f & EVF_TRIGGER else None
                has_sock = bool(f & EVF_HAS_SOCK)
                rr = cols["reason"][i] if f & EVF_REASON else None
                st = cols["state"][i]
                out.append({
                    "kind": "reset", "t": t[i],
                    "dir": "sent" if cols["dir"][i] == DIR_SENT else "recv",
                    "netns": cols["netns"][i],
                    "family": 6 if fam == socket.AF_INET6 else 4,
                    "src": _addr(saddr[i], fam), "sport": cols["sport"][i],
                    "dst": _addr(daddr[i], fam), "dport": cols["dport"][i],
                    "state": self.tcp_states.get(st, str(st)) if st else "",
                    "state_raw": st,
                    "reason": (self.rst_reasons.get(rr, str(rr)) if rr is not None else None),
                    "reason_raw": rr,
                    "has_sock": has_sock,
                    "cookie": cols["cookie"][i] or None,
                    "syn": (bool(trig & TCP_SYN_FLAG) if trig is not None and not has_sock else None),
                    "trigger_flags": trig,
                    "idle_ms": idle_ms[i] if has_idle else None,
                    "keepalive": bool(f & EVF_KEEPALIVE) if has_ka else None,
                    "ka_time_s": ka_time[i] if has_ka else None,
                    "ka_intvl_s": ka_intvl[i] if has_ka else None,
                    "ka_probes": cols["ka_probes"][i] if has_ka else None,
                    "ka_per_socket": bool(f & EVF_KA_PER_SOCK) if has_ka else None,
                    "dev_netns": cols["dev_netns"][i] or None,
                    "pid": cols["pid"][i] if owner else None,
                    "comm": arr["comm"][i].decode(errors="replace") if owner else None,
                    "cgroup": cols["cgroup"][i] if owner else None,
                })
            elif kind == EV_CT_DROP:
                rr = cols["reason"][i]
                out.append({"kind": "ct_drop", "t": t[i], "netns": cols["netns"][i] or None,
                            "reason": self.drop_reasons.get(rr, str(rr)), "reason_raw": rr,
                            "protocol": cols["sport"][i]})
            elif kind == EV_CT_FULL:
                text = arr["text"][i].decode(errors="replace").strip()
                out.append({"kind": "ct_full", "t": t[i], "netns": parse_full_netns(text),
                            "text": text})
            elif kind == EV_IPVS_EXPIRE:
                fam = cols["family"][i]
                st = cols["ipvs_state"][i]
                out.append({"kind": "ipvs_expire", "t": t[i], "netns": cols["netns"][i],
                            "protocol": cols["proto"][i],
                            "client": _addr(saddr[i], fam), "cport": cols["sport"][i],
                            "vaddr": _addr(daddr[i], fam), "vport": cols["dport"][i],
                            "daddr": _addr(arr["raddr"][i].tobytes(), fam), "dport": cols["rport"][i],
                            "state": self.ipvs_states.get(st, str(st)), "state_raw": st})
            elif kind == EV_CT_ALLOC_FAIL:
                out.append({"kind": "ct_alloc_fail", "t": t[i], "netns": None,
                            "errno": cols["reason"][i]})
        return out


def parse_full_netns(text: str) -> int | None:
    """'nf_conntrack: table full in netns 4026532247, dropping packet' -> 4026532247"""
    marker = "in netns "
    i = text.find(marker)
    if i < 0:
        return None
    digits = ""
    for ch in text[i + len(marker):]:
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else None
