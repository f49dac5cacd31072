"""IPVS_CMD_GET_CONFIG: request encoding and reply parsing, without IPVS.

Replies are built the way the kernel builds them (ip_vs_genl_get_cmd puts
three u32 attributes after the generic netlink header) and cross-checked
against pyroute2's own encoder, which is independent of ours. The captured
reply is a real one from Debian's 6.1 kernel under the vm tier.
"""

from __future__ import annotations

import errno
import struct

import pytest
from pyroute2.netlink import CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME, NLM_F_REQUEST
from pyroute2.netlink.generic.ipvs import (GENL_VERSION, IPVS_CMD_GET_CONFIG, IPVS_CMD_SET_CONFIG,
                                           ipvsmsg)

from rsttrace.tracer import ipvs

FAMILY = 0x1D  # any dynamic generic netlink id

# Captured under Debian's 6.1.0-56 (vm tier) after `ipvsadm --set 901 121 301`;
# `ipvsadm -Ln --timeout` printed "901 121 301". Family id 32, and the
# reply's command is IPVS_CMD_SET_CONFIG (12), not GET_CONFIG.
CAPTURED_61 = bytes.fromhex("2c0000002000000002000000800000000c01000008000400850300000800050079000000080006002d010000")


def reply(cmd: int, attrs: list[tuple[int, bytes]], family: int = FAMILY) -> bytes:
    body = struct.pack("=BBH", cmd, GENL_VERSION, 0) + b"".join(ipvs.pack_attr(t, p) for t, p in attrs)
    return struct.pack("=IHHII", 16 + len(body), family, 0, 2, 4242) + body


def u32(v: int) -> bytes:
    return struct.pack("=I", v)


def test_attribute_numbers_follow_the_kernel_enum():
    # enum ipvs_cmd_attributes: UNSPEC, SERVICE, DEST, DAEMON, TIMEOUT_TCP, _FIN, UDP
    names = [n for n, _ in ipvsmsg.nla_map]
    assert [names[ipvs.nl().TIMEOUT_ATTRS[k]] for k in ("tcp", "tcpfin", "udp")] == [
        "IPVS_CMD_ATTR_TIMEOUT_TCP", "IPVS_CMD_ATTR_TIMEOUT_TCP_FIN", "IPVS_CMD_ATTR_TIMEOUT_UDP"]


def test_request_equals_pyroute2_encoding():
    msg = ipvsmsg()
    msg["cmd"] = IPVS_CMD_GET_CONFIG
    msg["version"] = GENL_VERSION
    msg["header"]["type"] = FAMILY
    msg["header"]["flags"] = NLM_F_REQUEST
    msg["header"]["sequence_number"] = 7
    msg.encode()
    assert ipvs.pack_request(FAMILY, IPVS_CMD_GET_CONFIG, GENL_VERSION, seq=7) == bytes(msg.data)


@pytest.mark.parametrize("tcp,fin,udp", [(900, 120, 300), (7200, 120, 300), (5, 2, 1), (2**32 - 1, 0, 0)])
def test_parse_config(tcp, fin, udp):
    t = ipvs.nl().TIMEOUT_ATTRS
    buf = reply(IPVS_CMD_SET_CONFIG, [(t["tcp"], u32(tcp)), (t["tcpfin"], u32(fin)), (t["udp"], u32(udp))])
    assert ipvs.parse_config(buf) == {"tcp": tcp, "tcpfin": fin, "udp": udp}


def test_parse_captured_reply():
    assert ipvs.parse_config(CAPTURED_61) == {"tcp": 901, "tcpfin": 121, "udp": 301}
    assert CAPTURED_61[16] == IPVS_CMD_SET_CONFIG


def test_parse_config_order_and_unknown_attrs_do_not_matter():
    t = ipvs.nl().TIMEOUT_ATTRS
    buf = reply(IPVS_CMD_GET_CONFIG, [(t["udp"], u32(300)), (30, b"xyz"), (t["tcp"], u32(900)),
                                      (t["tcpfin"], u32(120))])
    assert ipvs.parse_config(buf) == {"tcp": 900, "tcpfin": 120, "udp": 300}


def test_parse_config_agrees_with_pyroute2_decoder():
    t = ipvs.nl().TIMEOUT_ATTRS
    buf = reply(IPVS_CMD_GET_CONFIG, [(t["tcp"], u32(901)), (t["tcpfin"], u32(121)), (t["udp"], u32(301))])
    msg = ipvsmsg(buf)
    msg.decode()
    # pyroute2 types the timeouts as "hex": raw bytes as text, "85:03:00:00"
    raw = msg.get_attr("IPVS_CMD_ATTR_TIMEOUT_TCP")
    assert int.from_bytes(bytes.fromhex(raw.replace(":", "")), "little") == ipvs.parse_config(buf)["tcp"]


def test_parse_family_id():
    body = [(CTRL_ATTR_FAMILY_NAME, b"IPVS\0"), (CTRL_ATTR_FAMILY_ID, struct.pack("=H", 0x22))]
    assert ipvs.parse_family_id(reply(1, body, family=0x10)) == 0x22


def test_netlink_error_names_the_errno():
    payload = struct.pack("=i", -errno.ENOENT) + b"\0" * 16
    buf = struct.pack("=IHHII", 16 + len(payload), 2, 0, 1, 0) + payload
    with pytest.raises(ipvs.IPVSError, match="No such file"):
        ipvs.parse_family_id(buf)


def _cut_attr() -> bytes:
    # a message whose only attribute claims 64 bytes but carries 4
    body = struct.pack("=BBH", IPVS_CMD_GET_CONFIG, GENL_VERSION, 0) + struct.pack("=HH", 64, 4) + u32(900)
    return struct.pack("=IHHII", 16 + len(body), FAMILY, 0, 1, 0) + body


@pytest.mark.parametrize("buf,what", [
    (struct.pack("=IHHII", 200, FAMILY, 0, 1, 0), "malformed netlink message"),
    (_cut_attr(), "malformed netlink attribute"),
])
def test_malformed_replies_raise(buf, what):
    with pytest.raises(ipvs.IPVSError, match=what):
        ipvs.parse_config(buf)


def test_reply_without_timeouts_raises():
    with pytest.raises(ipvs.IPVSError, match="no IPVS timeouts"):
        ipvs.parse_config(reply(IPVS_CMD_GET_CONFIG + 2, [(4, u32(1))]))


def test_absent_ipvs_is_none(monkeypatch, tmp_path):
    monkeypatch.setattr(ipvs, "PROC_IP_VS", str(tmp_path / "ip_vs"))
    assert ipvs.read_timeouts() is None
    assert ipvs.services() == []
