"""Attach-plan choices on fake kernels."""

import pytest

from rsttrace.tracer.kernel import parse_format
from rsttrace.tracer.probe import Capabilities, plan, transport

SEND_RESET_618 = ["daddr", "reason", "saddr", "skaddr", "skbaddr", "state"]
SEND_RESET_61 = ["daddr", "saddr", "skaddr", "skbaddr", "state"]


def caps(**kw) -> Capabilities:
    c = Capabilities(kernel="test", tracefs=True, btf=True, ringbuf=True, conntrack=True,
                     netfilter_drop_reason=12)
    c.tracepoints = {
        "tcp:tcp_send_reset": SEND_RESET_618,
        "tcp:tcp_receive_reset": ["skaddr", "sport"],
        "skb:kfree_skb": ["reason", "skbaddr"],
        "printk:console": ["msg"],
        "sock:inet_sock_set_state": ["newstate"],
        "tcp:tcp_destroy_sock": ["skaddr"],
    }
    c.kprobes_note = "kernel built without CONFIG_KPROBES"
    c.ipvs_note = "kernel built without IPVS"
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def test_modern_kernel_uses_tracepoints_only():
    p = plan(caps())
    assert p["reset_sent"].hook == "raw tracepoint tcp:tcp_send_reset"
    assert "HAVE_TP_SEND_RESET_REASON" in p["reset_sent"].defines
    assert p["reset_recv"].available and p["ct_drop"].available and p["ct_full"].available
    assert not p["ipvs_expire"].available and "IPVS" in p["ipvs_expire"].why


def test_btf_tracepoints_where_they_load():
    p = plan(caps(tp_btf=True))
    assert p["reset_sent"].hook == "BTF tracepoint tcp:tcp_send_reset"
    assert p["owner"].hook == "BTF tracepoint sock:inet_sock_set_state"
    # the perf-buffer fallback keeps raw tracepoints (bcc attaches those)
    assert plan(caps(tp_btf=True, ringbuf=False))["reset_sent"].hook.startswith("raw tracepoint")


ACCEPT_TPS = {"syscalls:sys_exit_accept4": ["ret"], "syscalls:sys_exit_accept": ["ret"]}


def test_accepted_sockets_owner_from_fexit_where_it_attaches():
    c = caps(tp_btf=True, fentry=True, accept_fields_note="")
    c.tracepoints.update(ACCEPT_TPS)
    p = plan(c)["owner"]
    assert p.hook == "BTF tracepoint sock:inet_sock_set_state + fexit inet_csk_accept"
    assert p.defines == ["HAVE_FEXIT_ACCEPT"]
    assert p.attach == [("fexit", "inet_csk_accept", "fexit__inet_csk_accept")]
    assert "accept()" in p.why and "no owner" not in p.why
    # raw tracepoints (perf buffer, or refused BTF ones): no fexit
    c.tp_btf = False
    assert "fexit" not in plan(c)["owner"].hook


def test_accepted_sockets_owner_from_syscall_tracepoints_only_when_asked():
    c = caps(fentry_note="fexit programs do not load or attach here (EPERM)", accept_fields_note="")
    c.tracepoints.update(ACCEPT_TPS)
    p = plan(c)["owner"]
    assert p.defines == [] and "accepted sockets have no owner" in p.why
    assert "EPERM" in p.why and "--accept-syscalls" in p.why
    c.accept_syscalls = True
    p = plan(c)["owner"]
    assert p.hook == ("raw tracepoint sock:inet_sock_set_state + tracepoint "
                      "syscalls:sys_exit_accept4/sys_exit_accept")
    assert p.defines == ["HAVE_TP_ACCEPT", "HAVE_TP_ACCEPT_PLAIN"] and "slower" in p.why
    # accept4 alone (architectures without the plain accept syscall)
    del c.tracepoints["syscalls:sys_exit_accept"]
    assert plan(c)["owner"].defines == ["HAVE_TP_ACCEPT"]


def test_accepted_sockets_without_a_hook_are_said_not_silent():
    p = plan(caps(accept_syscalls=True, accept_fields_note=""))["owner"]
    assert p.available and p.defines == [] and "CONFIG_FTRACE_SYSCALLS" in p.why
    c = caps(accept_syscalls=True, accept_fields_note="OFF_FDT_FD: fdtable has no member fd")
    c.tracepoints.update(ACCEPT_TPS)
    p = plan(c)["owner"]
    assert p.defines == [] and "accepted sockets have no owner" in p.why and "fdtable" in p.why


def test_old_kernel_with_kprobes_adds_send_reset_kprobes():
    c = caps(kprobes=True, kprobe_symbols={"tcp_v4_send_reset": True, "tcp_v6_send_reset": True})
    c.tracepoints["tcp:tcp_send_reset"] = SEND_RESET_61
    p = plan(c)
    assert "kprobe tcp_v4_send_reset" in p["reset_sent"].hook
    assert ("kprobe", "tcp_v6_send_reset", "kp_send_reset") in p["reset_sent"].attach


def test_old_kernel_without_kprobes_is_partial_not_silent():
    c = caps()
    c.tracepoints["tcp:tcp_send_reset"] = SEND_RESET_61
    p = plan(c)
    assert p["reset_sent"].available
    assert "PARTIAL" in p["reset_sent"].why and "no socket" in p["reset_sent"].why


def test_no_tracepoints_no_kprobes():
    p = plan(caps(tracepoints={}))
    for name in ("reset_sent", "reset_recv", "ct_drop", "ct_full", "owner"):
        assert not p[name].available, name
        assert p[name].why


def test_receive_reset_kprobe_fallback():
    c = caps(kprobes=True, kprobe_symbols={"tcp_reset": True})
    del c.tracepoints["tcp:tcp_receive_reset"]
    p = plan(c)
    assert p["reset_recv"].hook == "kprobe tcp_reset"


def test_no_btf_drop_reason():
    p = plan(caps(netfilter_drop_reason=None, btf=False))
    assert not p["ct_drop"].available and "NETFILTER_DROP" in p["ct_drop"].why


def test_ipvs_with_kprobes():
    c = caps(ipvs=True, ipvs_btf=True, kprobes=True, kprobe_symbols={"ip_vs_conn_expire": True})
    p = plan(c)
    assert p["ipvs_expire"].available and p["ipvs_expire"].attach[0][1] == "ip_vs_conn_expire"
    c = caps(ipvs=True, ipvs_note="IPVS loaded")
    assert "kprobes" in plan(c)["ipvs_expire"].why


def test_transport_prefers_percpu_rings_then_ring_buffer_then_perf_buffer():
    assert transport(caps(percpu_rings=True))[0] == "percpu"
    why = "4096 possible CPUs: a ring on each would take over 64 MiB"
    name, text = transport(caps(percpu_rings_note=why))
    assert name == "ringbuf" and why in text
    assert transport(caps(ringbuf=False))[0] == "perfbuf"


FORMAT = """name: tcp_send_reset
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:const void * skaddr;	offset:16;	size:8;	signed:0;
	field:__u8 saddr[28];	offset:32;	size:28;	signed:0;
	field:__data_loc char[] msg;	offset:8;	size:4;	signed:0;

print fmt: "x", __print_symbolic(REC->reason, { 0, "NOT_SPECIFIED" }, { 1, "NO_SOCKET" }), REC->state ? __print_symbolic(REC->state, { TCP_ESTABLISHED, "TCP_ESTABLISHED" }) : "UNKNOWN"
"""


def test_parse_format_fields_and_symbols():
    tp = parse_format("tcp", "tcp_send_reset", FORMAT)
    assert tp.fields == {"skaddr": (16, 8), "saddr": (32, 28), "msg": (8, 4)}
    assert tp.symbols["reason"] == {0: "NOT_SPECIFIED", 1: "NO_SOCKET"}
    assert "state" not in tp.symbols  # unresolved macro names are not guessed


def test_filters_compile_to_constant_comparisons():
    from rsttrace.tracer.loader import MAX_FILTER_VALUES, LoadError, filter_define
    assert filter_define("PORT_WANTED", [3306, 9, 3306], 0xFFFF) == \
        "-DPORT_WANTED(x)=((x)==9U||(x)==3306U)"
    with pytest.raises(LoadError, match="out of range"):
        filter_define("PORT_WANTED", [70000], 0xFFFF)
    with pytest.raises(LoadError, match="at most"):
        filter_define("NETNS_WANTED", list(range(MAX_FILTER_VALUES + 1)), 0xFFFFFFFF)
