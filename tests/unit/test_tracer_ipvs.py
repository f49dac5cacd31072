"""The IPVS timeouts codec (tracer/ipvsconfig.py), without IPVS: requests
encoded byte for byte, captured kernel replies decoded, and the exchange
(family resolved once, resolved again when it went away, errors named)
replayed against a socket that answers with captured bytes.

The replies were captured under Debian's 6.1 kernel in the vm tier
(tests/vm/test_vm_ipvs.py prints them): after `ipvsadm --set 901 121 301`,
`ipvsadm -Ln --timeout` printed "901 121 301". That kernel gave the IPVS
family the id 32 (0x20); the reply to GET_CONFIG carries the command
IPVS_CMD_SET_CONFIG (12), as ip_vs_genl_get_cmd writes it.
"""

from __future__ import annotations

import errno
import struct

import pytest
from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
from pyroute2.netlink.generic.ipvs import IPVS_CMD_GET_CONFIG, IPVS_CMD_SET_CONFIG

from rsttrace.tracer import ipvs, ipvsconfig as C

FAMILY = 0x20

# GET_CONFIG reply: nlmsghdr (44 bytes, type 0x20, seq 2, pid 128), genlmsghdr
# (cmd 12, version 1), TIMEOUT_TCP=901, TIMEOUT_TCP_FIN=121, TIMEOUT_UDP=301
GET_REPLY_61 = bytes.fromhex("2c0000002000000002000000800000000c01000008000400850300000800050079000000080006002d010000")


def nlmsgerr(code: int, seq: int, request: bytes) -> bytes:
    """struct nlmsgerr as the kernel sends it: an acknowledgement (0, with
    the request's header) or -errno (with the whole request)."""
    body = struct.pack("=i", -code) + (request[:16] if code == 0 else request)
    return struct.pack("=IHHII", 16 + len(body), 2, 0x100 if code == 0 else 0, seq, 0) + body


def family_reply(fid: int, seq: int) -> bytes:
    """CTRL_CMD_NEWFAMILY as the controller answers GETFAMILY (name and id
    first; the ops and groups that follow are not read)."""
    attrs = (struct.pack("=HH", 9, 2) + b"IPVS\0" + b"\0" * 3      # CTRL_ATTR_FAMILY_NAME
             + struct.pack("=HHH", 6, 1, fid) + b"\0" * 2)        # CTRL_ATTR_FAMILY_ID
    body = struct.pack("=BBH", 1, 2, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), 0x10, 0, seq, 0) + body


def test_the_timeout_attributes_follow_the_kernel_enum():
    # enum ipvs_cmd_attributes: UNSPEC, SERVICE, DEST, DAEMON, TIMEOUT_TCP, _FIN, UDP
    names = [n for n, _ in C.ipvs_config_msg.nla_map]
    assert [names.index(C.TIMEOUTS[k]) for k in ("tcp", "tcpfin", "udp")] == [4, 5, 6]
    assert {dict(C.ipvs_config_msg.nla_map)[a] for a in C.TIMEOUTS.values()} == {"uint32"}


def test_get_config_request_bytes():
    req = C.config_request(FAMILY, seq=7)
    # nlmsghdr: len 20, type = the family, NLM_F_REQUEST, seq 7, pid 0; genlmsghdr: cmd 13, version 1
    assert req == struct.pack("=IHHII", 20, FAMILY, NLM_F_REQUEST, 7, 0) + struct.pack("=BBH", 13, 1, 0)


def test_set_config_request_bytes():
    req = C.config_request(FAMILY, {"tcp": 3600, "tcpfin": 120, "udp": 300}, seq=9)
    assert struct.unpack_from("=IHHII", req) == (44, FAMILY, NLM_F_REQUEST | NLM_F_ACK, 9, 0)
    assert struct.unpack_from("=BBH", req, 16) == (IPVS_CMD_SET_CONFIG, 1, 0)
    # three u32 attributes TIMEOUT_TCP/_TCP_FIN/_UDP = 4/5/6 (include/uapi/linux/ip_vs.h)
    assert [struct.unpack_from("=HHI", req, off) for off in (20, 28, 36)] == [
        (8, 4, 3600), (8, 5, 120), (8, 6, 300)]


def test_only_the_timeouts_asked_are_sent():
    req = C.config_request(FAMILY, {"udp": 60})
    assert len(req) == 28 and struct.unpack_from("=HHI", req, 20) == (8, 6, 60)


def test_captured_get_config_reply_decodes():
    replies = C.parse_replies(GET_REPLY_61, FAMILY)
    assert replies[0]["cmd"] == IPVS_CMD_SET_CONFIG
    assert C.timeouts_of(replies) == {"tcp": 901, "tcpfin": 121, "udp": 301}


@pytest.mark.parametrize("values", [{"tcp": 900, "tcpfin": 120, "udp": 300}, {"tcp": 2**32 - 1},
                                    {"tcp": 5, "tcpfin": 2, "udp": 1}])
def test_what_set_encodes_get_decodes(values):
    # the kernel's reply to GET carries the same attributes a SET sends
    assert C.timeouts_of(C.parse_replies(C.config_request(FAMILY, values), FAMILY)) == values


def test_family_reply_decodes():
    assert C.family_id(C.parse_replies(family_reply(0x22, 1))) == 0x22


def test_an_error_reply_raises_its_errno():
    with pytest.raises(C.NetlinkError) as e:
        C.parse_replies(nlmsgerr(errno.ENOENT, 1, C.config_request(FAMILY, seq=1)), FAMILY)
    assert e.value.code == errno.ENOENT


def test_a_reply_without_timeouts_is_refused():
    with pytest.raises(C.IPVSError, match="no IPVS timeouts"):
        C.timeouts_of(C.parse_replies(C.config_request(FAMILY, {}), FAMILY))


class ReplaySocket:
    """Answers each request with the bytes `answer(request)` gives."""

    def __init__(self, answer):
        self.answer = answer
        self.sent: list[bytes] = []
        self._out: list[bytes] = []

    def send(self, data: bytes) -> int:
        self.sent.append(bytes(data))
        self._out.append(self.answer(bytes(data)))
        return len(data)

    def recv(self, n: int) -> bytes:
        return self._out.pop(0)


def seq_of(req: bytes) -> int:
    return struct.unpack_from("=IHHII", req)[3]


def kernel(fid: int, timeouts: dict[str, int]):
    """A kernel with the IPVS family at `fid` and these timeouts."""
    def answer(req: bytes) -> bytes:
        mtype, seq = struct.unpack_from("=IHHII", req)[1], seq_of(req)
        if mtype == 0x10:
            return family_reply(fid, seq)
        if mtype != fid:
            return nlmsgerr(errno.ENOENT, seq, req)
        cmd = req[16]
        if cmd == IPVS_CMD_SET_CONFIG:
            timeouts.update(C.timeouts_of(C.parse_replies(req, fid)))
            return nlmsgerr(0, seq, req)
        assert cmd == IPVS_CMD_GET_CONFIG
        reply = bytearray(C.config_request(fid, timeouts, seq))
        reply[16] = IPVS_CMD_SET_CONFIG     # as ip_vs_genl_get_cmd answers
        return bytes(reply)
    return answer


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(C, "_family", None)


def test_exchange_resolves_the_family_once(fresh):
    state = {"tcp": 900, "tcpfin": 120, "udp": 300}
    sock = ReplaySocket(kernel(0x20, state))
    assert C.timeouts_of(C._request(sock, None)) == state
    C._request(sock, {"tcp": 3600})
    assert C.timeouts_of(C._request(sock, None))["tcp"] == 3600 and state["tcp"] == 3600
    # GETFAMILY, GET, SET, GET: the family was asked for once
    assert [struct.unpack_from("=IHHII", r)[1] for r in sock.sent] == [0x10, 0x20, 0x20, 0x20]


def test_a_family_gone_is_resolved_again(fresh, monkeypatch):
    state = {"tcp": 900, "tcpfin": 120, "udp": 300}
    monkeypatch.setattr(C, "_family", 0x1f)          # cached before ip_vs was loaded again
    sock = ReplaySocket(kernel(0x21, state))
    assert C.timeouts_of(C._request(sock, None)) == state
    assert [struct.unpack_from("=IHHII", r)[1] for r in sock.sent] == [0x1f, 0x10, 0x21]


def test_no_ipvs_family_is_ipvs_unavailable(fresh):
    sock = ReplaySocket(lambda req: nlmsgerr(errno.ENOENT, seq_of(req), req))
    with pytest.raises(C.IPVSUnavailable, match="no 'IPVS' generic netlink family"):
        C._request(sock, None)


def test_a_refused_set_is_an_error(fresh):
    def answer(req):
        if req[4] == 0x10:
            return family_reply(0x20, seq_of(req))
        return nlmsgerr(errno.EINVAL, seq_of(req), req)
    with pytest.raises(C.IPVSError, match="IPVS refused the request"):
        C._request(ReplaySocket(answer), {"tcp": 0})


def test_absent_ipvs_is_none_and_never_asked(monkeypatch, tmp_path):
    monkeypatch.setattr(ipvs, "PROC_IP_VS", str(tmp_path / "ip_vs"))
    monkeypatch.setattr(C, "_socket", lambda: pytest.fail("asked the kernel"))
    assert ipvs.read_timeouts() is None
