"""Plan and layout choices for kernels before 6.10 (Debian's 6.1), from the
tracefs format captured in the vm tier; the BPF side runs there."""

from rsttrace.tracer.kernel import parse_format
from rsttrace.tracer.offsets import IPVS_OFFSETS, IPVS_OPTIONAL
from rsttrace.tracer.probe import Capabilities, plan

# /sys/kernel/tracing/events/tcp/tcp_send_reset/format on 6.1.0-56-amd64
SEND_RESET_61_FORMAT = """name: tcp_send_reset
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:const void * skbaddr;	offset:8;	size:8;	signed:0;
	field:const void * skaddr;	offset:16;	size:8;	signed:0;
	field:int state;	offset:24;	size:4;	signed:1;
	field:__u16 sport;	offset:28;	size:2;	signed:0;
	field:__u16 dport;	offset:30;	size:2;	signed:0;
	field:__u16 family;	offset:32;	size:2;	signed:0;
	field:__u8 saddr[4];	offset:34;	size:4;	signed:0;
	field:__u8 daddr[4];	offset:38;	size:4;	signed:0;
	field:__u8 saddr_v6[16];	offset:42;	size:16;	signed:0;
	field:__u8 daddr_v6[16];	offset:58;	size:16;	signed:0;
"""


def caps_61(kprobes: bool) -> Capabilities:
    c = Capabilities(kernel="6.1.0-56-amd64", tracefs=True, btf=True, ringbuf=True, conntrack=True,
                     netfilter_drop_reason=5, kprobes=kprobes, ipvs=True, ipvs_btf=True)
    tp = parse_format("tcp", "tcp_send_reset", SEND_RESET_61_FORMAT)
    c.tracepoints = {"tcp:tcp_send_reset": sorted(tp.fields),
                     "tcp:tcp_receive_reset": ["skaddr", "sport"]}
    if kprobes:
        c.kprobe_symbols = {s: True for s in ("tcp_v4_send_reset", "tcp_v6_send_reset",
                                              "ip_vs_conn_expire")}
    return c


def test_61_send_reset_has_no_reason():
    # raw tracepoints read the socket and segment through BTF offsets, so
    # the 6.1 tracefs layout needs no define of its own; only the reason is absent
    for kprobes in (True, False):
        p = plan(caps_61(kprobes))
        assert "HAVE_TP_SEND_RESET_REASON" not in p["reset_sent"].defines


def test_61_adds_kprobes_for_no_socket_resets_and_ipvs():
    p = plan(caps_61(True))
    assert ("kprobe", "tcp_v4_send_reset", "kp_send_reset") in p["reset_sent"].attach
    assert ("kprobe", "tcp_v6_send_reset", "kp_send_reset") in p["reset_sent"].attach
    assert p["ipvs_expire"].available and p["ipvs_expire"].hook == "kprobe ip_vs_conn_expire"


def test_netns_of_ipvs_is_optional():
    # Debian's ip_vs BTF has no struct netns_ipvs: it must not block loading
    assert "OFF_NETNS_IPVS_NET" in IPVS_OPTIONAL and "OFF_NETNS_IPVS_NET" not in IPVS_OFFSETS
