"""IPVS timeouts over generic netlink (IPVS_CMD_GET_CONFIG / IPVS_CMD_SET_CONFIG).

pyroute2 knows the IPVS family, its commands and attribute order but types the
timeout attributes as raw bytes and has no config helper; `ipvs_config_msg`
reuses its attribute table (so no number is copied by hand) with the timeouts
typed as the kernel's u32 seconds.
"""

from __future__ import annotations

from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST, genlmsg
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic.ipvs import (
    GENL_NAME, GENL_VERSION, IPVS_CMD_GET_CONFIG, IPVS_CMD_SET_CONFIG, ipvsmsg)

ATTRS = {"tcp": "IPVS_CMD_ATTR_TIMEOUT_TCP", "tcpfin": "IPVS_CMD_ATTR_TIMEOUT_TCP_FIN",
         "udp": "IPVS_CMD_ATTR_TIMEOUT_UDP"}


class IPVSUnavailable(Exception):
    """This kernel (or namespace) has no IPVS."""


class ipvs_config_msg(genlmsg):
    prefix = "IPVS_CMD_ATTR_"
    # Only the three timeouts are used; the other attributes keep their
    # position (the kernel's enum order) but are never sent.
    nla_map = tuple((name, "uint32" if name in ATTRS.values() else "none")
                    for name, _ in ipvsmsg.nla_map)


def pack_set_config(timeouts: dict[str, int], *, seq: int = 0, pid: int = 0,
                    msg_type: int = 0) -> bytes:
    """The bytes of an IPVS_CMD_SET_CONFIG request; 0 leaves a timeout unchanged."""
    msg = ipvs_config_msg()
    msg["cmd"] = IPVS_CMD_SET_CONFIG
    msg["version"] = GENL_VERSION
    for short, value in timeouts.items():
        msg["attrs"].append([ATTRS[short], int(value)])
    msg["header"]["type"] = msg_type
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK
    msg["header"]["sequence_number"] = seq
    msg["header"]["pid"] = pid
    msg.encode()
    return bytes(msg.data)


def _socket():
    from pyroute2.netlink.generic import GenericNetlinkSocket
    sock = GenericNetlinkSocket()
    try:
        sock.bind(GENL_NAME, ipvs_config_msg)
    except NetlinkError as e:
        sock.close()
        raise IPVSUnavailable("IPVS is not in this kernel or namespace "
                              "(no 'IPVS' generic netlink family)") from e
    return sock


def get_config() -> dict[str, int]:
    sock = _socket()
    try:
        msg = ipvs_config_msg()
        msg["cmd"] = IPVS_CMD_GET_CONFIG
        msg["version"] = GENL_VERSION
        replies = list(sock.nlm_request(msg, msg_type=sock.prid, msg_flags=NLM_F_REQUEST))
        out: dict[str, int] = {}
        for r in replies:
            for short, attr in ATTRS.items():
                v = r.get_attr(attr)
                if v is not None:
                    out[short] = int(v)
        return out
    finally:
        sock.close()


def set_config(timeouts: dict[str, int]) -> None:
    sock = _socket()
    try:
        msg = ipvs_config_msg()
        msg["cmd"] = IPVS_CMD_SET_CONFIG
        msg["version"] = GENL_VERSION
        for short, value in timeouts.items():
            msg["attrs"].append([ATTRS[short], int(value)])
        list(sock.nlm_request(msg, msg_type=sock.prid,
                              msg_flags=NLM_F_REQUEST | NLM_F_ACK))
    finally:
        sock.close()


def available() -> bool:
    try:
        _socket().close()
        return True
    except IPVSUnavailable:
        return False
