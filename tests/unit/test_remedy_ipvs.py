import struct

from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST

from rsttrace.remedy.ipvs import ipvs_config_msg, pack_set_config


def test_set_config_message_bytes():
    data = pack_set_config({"tcp": 3600, "tcpfin": 120, "udp": 300}, seq=7, pid=99, msg_type=0x20)
    # nlmsghdr: len, type, flags, seq, pid
    length, mtype, flags, seq, pid = struct.unpack_from("=IHHII", data, 0)
    assert length == len(data) == 16 + 4 + 3 * 8
    assert (mtype, flags, seq, pid) == (0x20, NLM_F_REQUEST | NLM_F_ACK, 7, 99)
    # genlmsghdr: cmd IPVS_CMD_SET_CONFIG (12 in include/uapi/linux/ip_vs.h), version 1
    assert struct.unpack_from("=BBH", data, 16) == (12, 1, 0)
    # Three u32 attributes IPVS_CMD_ATTR_TIMEOUT_TCP/_TCP_FIN/_UDP = 4/5/6 (same header).
    attrs = [struct.unpack_from("=HHI", data, off) for off in (20, 28, 36)]
    assert attrs == [(8, 4, 3600), (8, 5, 120), (8, 6, 300)]


def test_only_the_asked_timeout_is_sent():
    data = pack_set_config({"udp": 60})
    assert struct.unpack_from("=HHI", data, 20) == (8, 6, 60) and len(data) == 28


def test_reply_decodes_timeouts():
    data = bytearray(pack_set_config({"tcp": 900, "tcpfin": 120, "udp": 300}))
    msg = ipvs_config_msg(bytes(data))
    msg.decode()
    assert [msg.get_attr(a) for a in ("IPVS_CMD_ATTR_TIMEOUT_TCP", "IPVS_CMD_ATTR_TIMEOUT_TCP_FIN",
                                      "IPVS_CMD_ATTR_TIMEOUT_UDP")] == [900, 120, 300]
