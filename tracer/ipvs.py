"""IPVS state for context records: timeouts, services and destinations.

Timeouts come from generic netlink `IPVS_CMD_GET_CONFIG`, the request
`ipvsadm -Ln --timeout` makes. pyroute2 knows the IPVS family's commands and
attribute order but has no helper for it, so the request is built and the
reply parsed here: a netlink header, a generic netlink header, then three u32
attributes (tcp, tcpfin, udp seconds). Numbers (commands, attribute types)
are taken from pyroute2's tables, never typed here.

The socket is a plain stdlib one, opened by the calling thread, so it talks
to the namespace that thread is in: the context collector enters each
namespace with setns(2) on a worker thread and calls `read_timeouts()` there.
IPVS state is per namespace (every namespace has its own timeouts once the
module is loaded).
"""

from __future__ import annotations

import functools
import os
import socket
import struct
from dataclasses import dataclass, field

_NLMSG = struct.Struct("=IHHII")   # struct nlmsghdr
_GENL = struct.Struct("=BBH")      # struct genlmsghdr
_NLA = struct.Struct("=HH")        # struct nlattr
NLA_TYPE_MASK = 0x3FFF             # drops NLA_F_NESTED / NLA_F_NET_BYTEORDER
CTRL_VERSION = 1

NLMSG_ERROR = 2                    # include/uapi/linux/netlink.h, stable ABI


@functools.cache
def nl():
    """pyroute2's netlink numbers, imported on first use: the context
    collector imports this module, and pyroute2 costs ~0.1 s to import on
    hosts that have no IPVS at all."""
    from types import SimpleNamespace

    from pyroute2 import netlink as n
    from pyroute2.netlink.generic import ipvs as g
    names = [name for name, _ in g.ipvsmsg.nla_map]
    # attribute number of each timeout = its position in the kernel's enum,
    # which pyroute2's table mirrors
    attrs = {short: names.index(name) for short, name in (
        ("tcp", "IPVS_CMD_ATTR_TIMEOUT_TCP"), ("tcpfin", "IPVS_CMD_ATTR_TIMEOUT_TCP_FIN"),
        ("udp", "IPVS_CMD_ATTR_TIMEOUT_UDP"))}
    assert n.NLMSG_ERROR == NLMSG_ERROR
    return SimpleNamespace(
        FAMILY_ID=n.CTRL_ATTR_FAMILY_ID, FAMILY_NAME=n.CTRL_ATTR_FAMILY_NAME,
        GETFAMILY=n.CTRL_CMD_GETFAMILY, GENL_ID_CTRL=n.GENL_ID_CTRL,
        NETLINK_GENERIC=n.NETLINK_GENERIC, NLM_F_REQUEST=n.NLM_F_REQUEST,
        GENL_NAME=g.GENL_NAME, GENL_VERSION=g.GENL_VERSION,
        GET_CONFIG=g.IPVS_CMD_GET_CONFIG, SET_CONFIG=g.IPVS_CMD_SET_CONFIG, TIMEOUT_ATTRS=attrs)

# Present (per namespace) only while the ip_vs module is loaded. Looked at
# first because resolving an unknown genetlink family may make the kernel
# try to load a module: reading context must never change the host.
PROC_IP_VS = "/proc/thread-self/net/ip_vs"


class IPVSError(Exception):
    pass


def _align(n: int) -> int:
    return (n + 3) & ~3


def pack_attr(nla_type: int, payload: bytes) -> bytes:
    raw = _NLA.pack(_NLA.size + len(payload), nla_type) + payload
    return raw + b"\0" * (_align(len(raw)) - len(raw))


def pack_request(family: int, cmd: int, version: int, attrs: bytes = b"", seq: int = 1,
                 flags: int | None = None) -> bytes:
    flags = nl().NLM_F_REQUEST if flags is None else flags
    body = _GENL.pack(cmd, version, 0) + attrs
    return _NLMSG.pack(_NLMSG.size + len(body), family, flags, seq, 0) + body


def parse_attrs(buf: bytes) -> dict[int, bytes]:
    """Attributes of one message body: type -> payload."""
    out, pos = {}, 0
    while pos + _NLA.size <= len(buf):
        length, typ = _NLA.unpack_from(buf, pos)
        if length < _NLA.size or pos + length > len(buf):
            raise IPVSError(f"malformed netlink attribute at byte {pos}")
        out[typ & NLA_TYPE_MASK] = buf[pos + _NLA.size:pos + length]
        pos += _align(length)
    return out


def parse_messages(buf: bytes) -> list[tuple[int, bytes]]:
    """(type, payload after nlmsghdr) of each message; a netlink error
    reply raises IPVSError with the errno (ENOENT: no such family)."""
    out, pos = [], 0
    while pos + _NLMSG.size <= len(buf):
        length, typ, _flags, _seq, _pid = _NLMSG.unpack_from(buf, pos)
        if length < _NLMSG.size or pos + length > len(buf):
            raise IPVSError(f"malformed netlink message at byte {pos}")
        payload = buf[pos + _NLMSG.size:pos + length]
        if typ == NLMSG_ERROR:
            err = -struct.unpack_from("=i", payload, 0)[0]
            if err:
                raise IPVSError(f"netlink error: {os.strerror(err)}", err)
        else:
            out.append((typ, payload))
        pos += _align(length)
    return out


def parse_family_id(buf: bytes) -> int:
    fid = nl().FAMILY_ID
    for _typ, payload in parse_messages(buf):
        attrs = parse_attrs(payload[_GENL.size:])
        if fid in attrs:
            return struct.unpack_from("=H", attrs[fid])[0]
    raise IPVSError("no family id in the generic netlink controller's reply")


def parse_config(buf: bytes) -> dict[str, int]:
    """The reply to IPVS_CMD_GET_CONFIG -> {tcp, tcpfin, udp} seconds.
    The kernel answers a GET_CONFIG with a message whose command is
    IPVS_CMD_SET_CONFIG (ip_vs_genl_get_cmd), as it answers GET_SERVICE
    with NEW_SERVICE."""
    c = nl()
    for _typ, payload in parse_messages(buf):
        cmd = _GENL.unpack_from(payload)[0]
        if cmd not in (c.SET_CONFIG, c.GET_CONFIG):
            continue
        attrs = parse_attrs(payload[_GENL.size:])
        out = {short: struct.unpack_from("=I", attrs[n])[0]
               for short, n in c.TIMEOUT_ATTRS.items() if n in attrs and len(attrs[n]) >= 4}
        if out:
            return out
    raise IPVSError("no IPVS timeouts in the reply")


def _ask(sock: socket.socket, req: bytes) -> bytes:
    sock.send(req)
    return sock.recv(65536)


def read_timeouts() -> dict[str, int] | None:
    """IPVS tcp/tcpfin/udp timeouts (seconds) of the calling thread's
    namespace; None where IPVS is absent (not built or not loaded)."""
    if not os.path.exists(PROC_IP_VS):
        return None
    c = nl()
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, c.NETLINK_GENERIC) as s:
            s.settimeout(2.0)
            s.bind((0, 0))
            name = pack_attr(c.FAMILY_NAME, c.GENL_NAME.encode() + b"\0")
            family = parse_family_id(_ask(s, pack_request(c.GENL_ID_CTRL, c.GETFAMILY,
                                                          CTRL_VERSION, name)))
            return parse_config(_ask(s, pack_request(family, c.GET_CONFIG, c.GENL_VERSION, seq=2)))
    except (OSError, IPVSError):
        # IPVS unloaded between the check and the request, or the
        # namespace is going away: absent, as far as this snapshot goes
        return None


@dataclass
class Dest:
    addr: str
    port: int
    fwd_method: int
    weight: int
    active: int
    inactive: int


@dataclass
class Service:
    protocol: int
    addr: str
    port: int
    scheduler: str
    dests: list[Dest] = field(default_factory=list)


def services() -> list[Service]:
    """Virtual services and their real servers in the calling process's
    namespace, through pyroute2's IPVS socket. Empty where IPVS is absent."""
    if not os.path.exists(PROC_IP_VS):
        return []
    from pyroute2 import IPVS, IPVSDest, IPVSService
    out = []
    with IPVS() as sock:
        for msg in sock.service("dump"):
            svc = IPVSService.from_message(msg)
            s = Service(int(svc["protocol"]), str(svc["addr"]), int(svc["port"]),
                        str(svc.get("sched_name", "")))
            for dmsg in sock.dest("dump", service=svc):
                d = IPVSDest.from_message(dmsg)
                s.dests.append(Dest(str(d["addr"]), int(d["port"]), int(d.get("fwd_method", 0)),
                                    int(d.get("weight", 0)), int(d.get("active_conns", 0)),
                                    int(d.get("inact_conns", 0))))
            out.append(s)
    return out
