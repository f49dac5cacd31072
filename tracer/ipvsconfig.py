"""IPVS timeouts over generic netlink: IPVS_CMD_GET_CONFIG, the request
`ipvsadm -Ln --timeout` makes, and IPVS_CMD_SET_CONFIG, `ipvsadm --set`.

The codec is declarative, pyroute2's way: `ipvs_config_msg` is pyroute2's
IPVS message with the three timeout attributes typed as what the kernel
sends (u32 seconds; pyroute2 types them as raw bytes), so every number,
the attributes' order and the header layout come from pyroute2's tables
and none is written here. The context collector (tracer/context.py, via
tracer/ipvs.py) reads with it and the remedy engine writes with it.

The socket is a plain one opened by the calling thread, so it talks to
the namespace that thread is in: the context collector enters each
namespace with setns(2) on a worker thread and reads there, every
snapshot. What that costs per namespace is a socket and one request: the
family's id is resolved once per process (generic netlink families are
global, one id in every namespace) and again only when a request to it
fails because the family went away (ip_vs unloaded and loaded again).

Importing this module imports pyroute2; tracer/ipvs.py imports it only
where IPVS is loaded.
"""

from __future__ import annotations

import errno
import functools
import socket
from typing import Any

from pyroute2.netlink import (CTRL_CMD_GETFAMILY, GENL_ID_CTRL, NETLINK_GENERIC, NLM_F_ACK,
                              NLM_F_REQUEST, NLMSG_ERROR, ctrlmsg)
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic.ipvs import (GENL_NAME, GENL_VERSION, IPVS_CMD_GET_CONFIG,
                                           IPVS_CMD_SET_CONFIG, ipvsmsg)
from pyroute2.netlink.marshal import Marshal

# the short names rsttrace uses (ctx `ipvs`, remedy keys ipvs.tcp ...) -> attribute
TIMEOUTS = {"tcp": "IPVS_CMD_ATTR_TIMEOUT_TCP", "tcpfin": "IPVS_CMD_ATTR_TIMEOUT_TCP_FIN",
            "udp": "IPVS_CMD_ATTR_TIMEOUT_UDP"}
CTRL_VERSION = 1
REPLY_TIMEOUT_S = 2.0


class IPVSError(Exception):
    """A request the kernel refused or answered in a way not understood."""


class IPVSUnavailable(IPVSError):
    """This kernel (or namespace) has no IPVS."""


class ipvs_config_msg(ipvsmsg):
    """struct genlmsghdr and the IPVS_CMD_ATTR_* attributes of
    include/uapi/linux/ip_vs.h, as pyroute2's `ipvsmsg`, with

        IPVS_CMD_ATTR_TIMEOUT_TCP,      /* TCP connection timeout */
        IPVS_CMD_ATTR_TIMEOUT_TCP_FIN,  /* TCP FIN wait timeout */
        IPVS_CMD_ATTR_TIMEOUT_UDP,      /* UDP timeout */

    typed as the u32 seconds ip_vs_genl_set_config reads and
    ip_vs_genl_get_cmd writes."""
    nla_map = tuple((name, "uint32" if name in TIMEOUTS.values() else kind)
                    for name, kind in ipvsmsg.nla_map)


# Each exchange has a socket of its own: its two requests are numbered
# 1 (the family) and 2 (the configuration).
FAMILY_SEQ, CONFIG_SEQ = 1, 2
_family: int | None = None


def family_request(seq: int = 0) -> bytes:
    """CTRL_CMD_GETFAMILY for the IPVS family."""
    msg = ctrlmsg()
    msg["cmd"] = CTRL_CMD_GETFAMILY
    msg["version"] = CTRL_VERSION
    msg["attrs"].append(["CTRL_ATTR_FAMILY_NAME", GENL_NAME])
    return _encode(msg, GENL_ID_CTRL, NLM_F_REQUEST, seq)


def config_request(family: int, timeouts: dict[str, int] | None = None, seq: int = 0) -> bytes:
    """IPVS_CMD_GET_CONFIG, or with `timeouts` ({short name: seconds}; 0
    leaves one as it is) IPVS_CMD_SET_CONFIG asking for an acknowledgement."""
    msg = ipvs_config_msg()
    msg["version"] = GENL_VERSION
    if timeouts is None:
        msg["cmd"] = IPVS_CMD_GET_CONFIG
        return _encode(msg, family, NLM_F_REQUEST, seq)
    msg["cmd"] = IPVS_CMD_SET_CONFIG
    for short, value in timeouts.items():
        msg["attrs"].append([TIMEOUTS[short], int(value)])
    return _encode(msg, family, NLM_F_REQUEST | NLM_F_ACK, seq)


def _encode(msg: Any, msg_type: int, flags: int, seq: int) -> bytes:
    msg["header"]["type"] = msg_type
    msg["header"]["flags"] = flags
    msg["header"]["sequence_number"] = seq
    msg.encode()
    return bytes(msg.data)


def parse_replies(buf: bytes, family: int | None = None) -> list[Any]:
    """The messages in `buf`, decoded (IPVS ones with `ipvs_config_msg`,
    the controller's with pyroute2's `ctrlmsg`); an error reply raises
    NetlinkError with its errno."""
    marshal = Marshal()
    marshal.msg_map[GENL_ID_CTRL] = ctrlmsg
    if family is not None:
        marshal.msg_map[family] = ipvs_config_msg
    out = []
    for msg in marshal.parse(buf):
        err = msg["header"].get("error")
        if err is not None:
            raise err if isinstance(err, NetlinkError) else IPVSError(f"undecodable reply: {err}")
        out.append(msg)
    return out


def family_id(replies: list[Any]) -> int:
    for msg in replies:
        fid = msg.get_attr("CTRL_ATTR_FAMILY_ID")
        if fid is not None:
            return int(fid)
    raise IPVSError("no family id in the generic netlink controller's reply")


def timeouts_of(replies: list[Any]) -> dict[str, int]:
    """{tcp, tcpfin, udp} seconds of a GET_CONFIG reply. The kernel answers
    with a message whose command is IPVS_CMD_SET_CONFIG (ip_vs_genl_get_cmd),
    as it answers GET_SERVICE with NEW_SERVICE."""
    for msg in replies:
        if msg["header"]["type"] == NLMSG_ERROR:
            continue
        out = {short: int(v) for short, attr in TIMEOUTS.items()
               if (v := msg.get_attr(attr)) is not None}
        if out:
            return out
    raise IPVSError("no IPVS timeouts in the reply")


def _exchange(sock: socket.socket, req: bytes, seq: int, family: int | None, ack: bool) -> list[Any]:
    """Sends `req` and gathers the replies to it: the one answer, or (with
    `ack`) everything up to the acknowledgement."""
    sock.send(req)
    out: list[Any] = []
    while True:
        for msg in parse_replies(sock.recv(65536), family):
            if msg["header"]["sequence_number"] != seq:
                continue        # not ours (nothing else uses this socket; kept safe)
            if msg["header"]["type"] == NLMSG_ERROR:    # the acknowledgement (error 0)
                return out
            out.append(msg)
            if not ack:
                return out


@functools.lru_cache(maxsize=4)
def _get_request(family: int) -> bytes:
    # the same bytes for every namespace of every snapshot: encoded once
    return config_request(family, seq=CONFIG_SEQ)


def _request(sock: socket.socket, timeouts: dict[str, int] | None) -> list[Any]:
    global _family
    for attempt in (0, 1):
        if _family is None:
            try:
                _family = family_id(_exchange(sock, family_request(FAMILY_SEQ), FAMILY_SEQ, None, False))
            except NetlinkError as e:
                if e.code == errno.ENOENT:
                    raise IPVSUnavailable("IPVS is not in this kernel or namespace "
                                          "(no 'IPVS' generic netlink family)") from None
                raise IPVSError(f"resolving the IPVS family: {e}") from None
        req = _get_request(_family) if timeouts is None else config_request(_family, timeouts, CONFIG_SEQ)
        try:
            return _exchange(sock, req, CONFIG_SEQ, _family, timeouts is not None)
        except NetlinkError as e:
            # a family id gone (ENOENT) or taken by another family since
            # (EOPNOTSUPP): resolve it again, once
            if attempt == 0 and e.code in (errno.ENOENT, errno.EOPNOTSUPP):
                _family = None
                continue
            raise IPVSError(f"IPVS refused the request: {e}") from None
    raise AssertionError("unreachable")


def _socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
    try:
        sock.settimeout(REPLY_TIMEOUT_S)
        sock.bind((0, 0))
    except OSError:
        sock.close()
        raise
    return sock


def get_config() -> dict[str, int]:
    """The IPVS timeouts (tcp, tcpfin, udp seconds) of the calling thread's
    namespace; IPVSUnavailable where there is no IPVS."""
    with _socket() as sock:
        return timeouts_of(_request(sock, None))


def set_config(timeouts: dict[str, int]) -> None:
    """Sets IPVS timeouts of the calling thread's namespace ({short name:
    seconds}; the others stay as they are)."""
    if not timeouts:
        return
    with _socket() as sock:
        _request(sock, {k: int(v) for k, v in timeouts.items()})
