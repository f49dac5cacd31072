"""Synthetic recordings (docs/EVENTS.md) shaped like the namespace lab:
`cli` connects through `lb` (DNAT from a VIP, short conntrack established
timeout) to `srv`. Shared by the replay and TUI tests; holds no tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rsttrace.schema.recording import RecordingWriter

T0 = 1_700_000_000.0
CLI, LB, SRV = 4026532001, 4026532002, 4026532003
VIP, CLIENT, SERVER = "10.96.0.10", "10.0.1.2", "10.0.2.2"
EVIL_COMM = "[b red]x[/]"


def header(**over: Any) -> dict[str, Any]:
    h = {
        "kind": "header", "schema": 1, "t": T0, "host": "node-a", "kernel": "6.18.44-test",
        "tool": "0.1.0", "hz": 1000,
        "plan": {
            "reset_sent": {"hook": "tcp:tcp_send_reset", "available": True, "why": "tracepoint"},
            "reset_recv": {"hook": "tcp:tcp_receive_reset", "available": True, "why": "tracepoint"},
            "ct_drop": {"hook": "skb:kfree_skb", "available": True, "why": "tracepoint"},
            "ipvs_expire": {"hook": None, "available": False, "why": "no kprobes on this kernel"},
        },
        "filters": {"ports": [], "netns": []},
        "netns_names": {str(CLI): "cli", str(LB): "lb", str(SRV): "srv"},
    }
    h.update(over)
    return h


def ns_ctx(inode: int, name: str, *, est: int = 432000, ka: int = 7200, count: int = 3,
           mx: int = 262144, drop: int = 0, early: int = 0, invalid: int = 0,
           ipvs: dict[str, int] | None = None, nat: bool = False) -> dict[str, Any]:
    return {
        "netns": inode, "name": name,
        "ct": {"count": count, "max": mx, "buckets": 65536, "drop": drop, "early_drop": early,
               "invalid": invalid, "insert_failed": 0, "found": 0, "search_restart": 0,
               "chaintoolong": 0},
        "sysctl": {"nf_conntrack_tcp_timeout_established": est, "nf_conntrack_tcp_be_liberal": 0,
                   "tcp_keepalive_time": ka, "tcp_keepalive_intvl": 75, "tcp_keepalive_probes": 9},
        "ipvs": ipvs, "nat": nat,
    }


def ctx(t: float, **lb_over: Any) -> dict[str, Any]:
    return {"kind": "ctx", "t": t, "namespaces": [
        ns_ctx(CLI, "cli"), ns_ctx(LB, "lb", est=4, nat=True, **lb_over), ns_ctx(SRV, "srv")]}


def reset_pair(t: float, cport: int, *, idle_ms: int = 7000, comm: str = "mysql",
               pid: int = 1234, keepalive: bool = False) -> list[dict[str, Any]]:
    """The lab's idle reset: lb sends a no-socket reset from VIP:3306 and the
    client's socket receives it."""
    common = {"kind": "reset", "family": 4, "src": VIP, "sport": 3306, "dst": CLIENT, "dport": cport}
    sent = dict(common, t=t, dir="sent", netns=LB, state="", state_raw=0, reason="NO_SOCKET",
                reason_raw=1, has_sock=False, cookie=None, syn=False, trigger_flags=0x18,
                idle_ms=None, keepalive=None, ka_time_s=None, ka_intvl_s=None, ka_probes=None,
                ka_per_socket=None, dev_netns=LB, pid=None, comm=None, cgroup=None)
    recv = dict(common, t=t + 0.0001, dir="recv", netns=CLI, state="ESTABLISHED", state_raw=1,
                reason=None, reason_raw=None, has_sock=True, cookie=cport, syn=None,
                trigger_flags=None, idle_ms=idle_ms, keepalive=keepalive,
                ka_time_s=7200 if keepalive else None, ka_intvl_s=75 if keepalive else None,
                ka_probes=9 if keepalive else None, ka_per_socket=False, dev_netns=None,
                pid=pid, comm=comm, cgroup=1)
    return [sent, recv]


def refused(t: float, cport: int) -> list[dict[str, Any]]:
    """A connect to a port nothing listens on in srv: no_listener."""
    return [{"kind": "reset", "t": t, "dir": "sent", "netns": SRV, "family": 4,
             "src": SERVER, "sport": 3307, "dst": CLIENT, "dport": cport, "state": "",
             "state_raw": 0, "reason": "NO_SOCKET", "reason_raw": 1, "has_sock": False,
             "cookie": None, "syn": True, "trigger_flags": 0x02, "idle_ms": None,
             "keepalive": None, "ka_time_s": None, "ka_intvl_s": None, "ka_probes": None,
             "ka_per_socket": None, "dev_netns": SRV, "pid": None, "comm": None, "cgroup": None}]


def incident_records() -> list[dict[str, Any]]:
    """Three incidents: two keepalive resets (one from a process whose name
    looks like markup) and one refused connect, with context around them."""
    recs: list[dict[str, Any]] = [ctx(T0)]
    recs += reset_pair(T0 + 8.0, 40001)
    recs += refused(T0 + 9.0, 40100)
    recs.append(ctx(T0 + 10.0))
    recs += reset_pair(T0 + 12.0, 40002, comm=EVIL_COMM, pid=4321, idle_ms=9000)
    recs.append(ctx(T0 + 14.0))
    return recs


def write(path: Path, records: list[dict[str, Any]], *, lost: int = 0,
          hdr: dict[str, Any] | None = None) -> Path:
    w = RecordingWriter(path, hdr or header())
    w.write_many(records)
    w.close({"t": T0 + 20, "lost": lost, "duration_s": 20.0})
    return path


def storm_records(n: int, per_s: int = 1000) -> list[dict[str, Any]]:
    """`n` keepalive incidents, `per_s` a second, each on its own client port."""
    recs: list[dict[str, Any]] = [ctx(T0)]
    for i in range(n):
        recs += reset_pair(T0 + 8.0 + i / per_s, 10000 + i % 50000)
    recs.append(ctx(T0 + 8.0 + n / per_s + 2))
    return recs
