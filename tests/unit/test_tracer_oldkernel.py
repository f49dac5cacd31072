"""Plan and layout choices for kernels before 6.10 (Debian's 6.1), from the
tracefs format captured in the vm tier; the BPF side runs there."""

from rsttrace.tracer.kernel import parse_format
from rsttrace.tracer.btf import BTFError
from rsttrace.tracer.offsets import NETNS_LIST_SYMBOL, KernelLayout, ipvs_netns
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


class LayoutBTF:
    """BTF that knows only the given struct members: {(struct, member): offset}."""

    def __init__(self, members):
        self.members = members

    def field(self, struct_name, path):
        if (struct_name, path) not in self.members:
            raise BTFError(f"struct {struct_name} has no member {path!r}")
        return self.members[(struct_name, path)], 8


NET = {("net", "ipvs"): 4032, ("net", "list"): 16}


def test_ipvs_expiry_namespace_from_netns_ipvs_where_btf_has_it():
    out = KernelLayout()
    note, head = ipvs_netns(LayoutBTF(NET), LayoutBTF({("netns_ipvs", "net"): 24}), out,
                            lambda name: 0xffffffff82000000)
    assert head is None and out.defines == {"OFF_NETNS_IPVS_NET": 24}
    assert "struct netns_ipvs" in note


def test_ipvs_expiry_namespace_by_walking_the_namespace_list_on_debian():
    # Debian's 6.1 and 6.12: no struct netns_ipvs anywhere; struct net has
    # `ipvs` (IPVS is a module) and kallsyms lists the list's head
    out, asked = KernelLayout(), []
    note, head = ipvs_netns(LayoutBTF(NET), LayoutBTF({}), out,
                            lambda name: asked.append(name) or 0xffffffff82a0b540)
    assert head == 0xffffffff82a0b540 and asked == [NETNS_LIST_SYMBOL]
    assert out.defines == {"OFF_NET_IPVS": 4032, "OFF_NET_LIST": 16}
    assert "namespace list" in note
    # the address is for the compiler only, never part of the recorded layout
    assert 0xffffffff82a0b540 not in out.defines.values()


def test_ipvs_expiry_namespace_unknown_says_why():
    out = KernelLayout()
    note, head = ipvs_netns(LayoutBTF(NET), LayoutBTF({}), out, lambda name: None)
    assert head is None and out.defines == {} and "kallsyms" in note and "unknown" in note
    note, head = ipvs_netns(LayoutBTF({("net", "list"): 16}), LayoutBTF({}), out, lambda name: 1)
    assert head is None and out.defines == {} and "OFF_NET_IPVS" in note


def test_ksym_address_reads_kallsyms(tmp_path):
    from rsttrace.tracer.kernel import ksym_address
    f = tmp_path / "kallsyms"
    f.write_text("ffffffff81000000 T _text\n"
                 "ffffffff82a0b540 D net_namespace_list\n"
                 "ffffffffc0a01000 t ip_vs_conn_expire\t[ip_vs]\n"
                 "0000000000000000 D init_net\n")
    assert ksym_address("net_namespace_list", str(f)) == 0xffffffff82a0b540
    assert ksym_address("net_namespace", str(f)) is None       # whole names only
    assert ksym_address("init_net", str(f)) is None            # hidden (kptr_restrict)
    assert ksym_address("net_namespace_list", str(tmp_path / "none")) is None


# /sys/kernel/tracing/events/skb/kfree_skb/format on 5.10.0-46-amd64: no reason (5.17+)
KFREE_SKB_510_FORMAT = """name: kfree_skb
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:void * skbaddr;	offset:8;	size:8;	signed:0;
	field:void * location;	offset:16;	size:8;	signed:0;
	field:unsigned short protocol;	offset:24;	size:2;	signed:0;
"""


def caps_510(**kw) -> Capabilities:
    c = caps_61(kprobes=True)
    c.kernel, c.netfilter_drop_reason, c.ipvs_btf = "5.10.0-46-amd64", None, False
    c.tracepoints["skb:kfree_skb"] = sorted(parse_format("skb", "kfree_skb", KFREE_SKB_510_FORMAT).fields)
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def test_510_netfilter_drops_derived_from_where_the_packet_was_freed():
    p = plan(caps_510(nf_drop_sites=["nf_hook_slow", "nf_reinject"]))["ct_drop"]
    assert p.available and p.hook.endswith("skb:kfree_skb")
    assert p.defines == ["CT_DROP_DERIVED"]
    assert "nf_hook_slow" in p.why and "kallsyms" in p.why and "reason_derived" in p.why
    # no address for the hook walk (kptr_restrict): not derived, and why
    p = plan(caps_510(nf_drop_note="nf_hook_slow has no address in /proc/kallsyms"))["ct_drop"]
    assert not p.available and "before 5.17" in p.why and "kallsyms" in p.why
    # a kernel with the reason never derives it
    c = caps_61(kprobes=False)
    c.tracepoints["skb:kfree_skb"] = ["location", "protocol", "reason", "skbaddr"]
    p = plan(c)["ct_drop"]
    assert p.available and "CT_DROP_DERIVED" not in p.defines and "= 5" in p.why


def test_510_ipvs_layout_from_exact_headers_else_unavailable_with_why():
    hdr = "/usr/src/linux-headers-5.10.0-46-amd64"
    p = plan(caps_510(ipvs_headers=hdr, ipvs_layout_note=f"struct ip_vs_conn ... headers ({hdr})"))
    h = p["ipvs_expire"]
    assert h.available and h.hook == "kprobe ip_vs_conn_expire" and hdr in h.why
    assert h.defines == ["WANT_KPROBE_IPVS_EXPIRE"]   # the same program: offsets as -D
    note = ("struct ip_vs_conn layout unknown: no BTF for ip_vs (module BTF came with 5.11), and "
            "no headers of exactly 5.10.0-46-amd64 in /lib/modules/5.10.0-46-amd64/build")
    h = plan(caps_510(ipvs_layout_note=note))["ipvs_expire"]
    assert not h.available and h.why == note


def test_ksym_ranges_end_at_the_next_symbol(tmp_path):
    from rsttrace.tracer.kernel import ksym_ranges
    f = tmp_path / "kallsyms"
    # listed out of address order (modules come after the core kernel)
    f.write_text("ffffffff81000000 T _text\n"
                 "ffffffff817aec00 T nf_hook_slow\n"
                 "ffffffff817aec00 t nf_hook_slow_alias\n"
                 "ffffffff817aecb0 T nf_hook_slow_list\n"
                 "ffffffff81c00100 t nf_hook_slow.cold\n"
                 "ffffffffc0a01000 t nf_reinject\t[nfnetlink_queue]\n"
                 "ffffffffc0a00000 t nfqnl_recv\t[nfnetlink_queue]\n"
                 "ffffffffc0a010f0 t nfqnl_put\t[nfnetlink_queue]\n"
                 "ffffffff81c00180 T next_cold\n"
                 "0000000000000000 T nf_queue\n")
    r = ksym_ranges(("nf_hook_slow", "nf_reinject", "nf_queue", "absent"), str(f))
    assert r == {"nf_hook_slow": (0xffffffff817aec00, 0xffffffff817aecb0),
                 "nf_hook_slow.cold": (0xffffffff81c00100, 0xffffffff81c00180),
                 "nf_reinject": (0xffffffffc0a01000, 0xffffffffc0a010f0)}   # nf_queue: hidden
    assert ksym_ranges(("nf_hook_slow",), str(tmp_path / "none")) == {}


def test_nf_drop_sites_become_comparisons_with_constants():
    from rsttrace.tracer.offsets import nf_drop_site_define
    d = nf_drop_site_define({"b": (0x30, 0x40), "a": (0x10, 0x20)})
    assert d == "-DNF_DROP_SITE(x)=(((x)>=0x10ULL&&(x)<0x20ULL)||((x)>=0x30ULL&&(x)<0x40ULL))"
    site = eval("lambda x: " + d.split("=", 1)[1].replace("ULL", "").replace("&&", " and ")
                .replace("||", " or "))
    assert [site(x) for x in (0xf, 0x10, 0x1f, 0x20, 0x35, 0x40)] == [False, True, True, False, True, False]


def _headers_tree(root, release, uts):
    build = root / release / "build"
    (build / "include" / "generated").mkdir(parents=True)
    (build / "include" / "generated" / "utsrelease.h").write_text(f'#define UTS_RELEASE "{uts}"\n')
    return build


def test_exact_headers_only_where_they_name_the_release(tmp_path):
    from rsttrace.tracer.kernel import exact_headers, header_file
    rel = "5.10.0-46-amd64"
    build = _headers_tree(tmp_path, rel, rel)
    assert exact_headers(rel, tmp_path) == build.resolve()
    # another version's headers linked there (find_headers does so where a
    # kernel has none of its own): not this kernel's layout
    _headers_tree(tmp_path, "6.18.44-fc", "6.1.0-57-amd64")
    assert exact_headers("6.18.44-fc", tmp_path) is None
    assert exact_headers("5.4.0-1-amd64", tmp_path) is None
    # Debian splits its headers: arch part in build, the rest in source
    src = tmp_path / rel / "source" / "include" / "net"
    src.mkdir(parents=True)
    (src / "ip_vs.h").write_text("struct ip_vs_conn;\n")
    assert header_file("net/ip_vs.h", rel, tmp_path) == (src / "ip_vs.h").resolve()
    assert header_file("net/none.h", rel, tmp_path) is None


def test_a_layout_function_is_read_only_when_it_returns_a_constant():
    from rsttrace.tracer.loader_child import returned_constant
    # r0 = 72; exit  (what `return __builtin_offsetof(...)` compiles to)
    ret72 = bytes([0xb7, 0x00, 0, 0]) + (72).to_bytes(4, "little") + bytes([0x95]) + bytes(7)
    assert returned_constant(ret72) == 72
    assert returned_constant(ret72[:8]) is None                                   # no exit
    assert returned_constant(bytes([0xb7, 0x01]) + ret72[2:]) is None             # into r1
    assert returned_constant(bytes([0xbf]) + ret72[1:]) is None                   # r0 = a register
    assert returned_constant(ret72 + ret72) is None                               # more than that


def test_doctor_names_where_each_layout_comes_from():
    from rsttrace.commands.doctor import layouts
    c = caps_61(kprobes=True)
    c.ipvs_layout_note = "struct ip_vs_conn from BTF (module ip_vs)"
    assert layouts(c) == ("kernel structs from BTF (/sys/kernel/btf/vmlinux); IPVS: struct ip_vs_conn "
                          "from BTF (module ip_vs)")
    hdr = ("struct ip_vs_conn and struct netns_ipvs from this kernel's own headers (/usr/src/linux-"
           "headers-5.10.0-46-amd64; no BTF for ip_vs (module BTF came with 5.11))")
    assert layouts(caps_510(ipvs_layout_note=hdr)).endswith("IPVS: " + hdr)
    none = ("struct ip_vs_conn layout unknown: no BTF for ip_vs (module BTF came with 5.11), and no "
            "headers of exactly 5.10.0-46-amd64 in /lib/modules/5.10.0-46-amd64/build (install "
            "linux-headers-5.10.0-46-amd64)")
    assert layouts(caps_510(ipvs_layout_note=none)).endswith("IPVS: " + none)
    # IPVS not loaded, or no kprobes: not read, and why
    c = caps_61(kprobes=False)
    c.ipvs, c.ipvs_note = False, "IPVS built (m) but not loaded (modprobe ip_vs)"
    assert layouts(c).endswith("IPVS: not read (IPVS built (m) but not loaded (modprobe ip_vs))")
    c.btf = False
    assert layouts(c).startswith("kernel structs from nowhere: no BTF")
