"""Decoding raw events in batches, with the kernel's tables passed in."""

import json
import socket

import numpy as np
import pytest

from rsttrace.schema import catalog as cat
from rsttrace.tracer import events as ev
from rsttrace.tracer.events import EVENT_DTYPE, Decoder, parse_full_netns

DEC = Decoder(hz=250, mono_to_unix=1000.0, tcp_states={1: "ESTABLISHED", 2: "SYN_SENT"},
              rst_reasons={1: "NO_SOCKET"}, drop_reasons={12: "NETFILTER_DROP"})


def raw(**kw) -> np.ndarray:
    a = np.zeros(1, dtype=EVENT_DTYPE)
    for k, v in kw.items():
        a[k] = v
    return a


def test_layout_size_matches_header_comment():
    # 3 u64, 7 u32, 2 u16, 8 u8, 3x16 addresses, 2 u16 + pad u32, comm 16, text 96
    assert EVENT_DTYPE.itemsize == 24 + 28 + 4 + 8 + 48 + 8 + 16 + 96


def test_received_reset_on_a_socket():
    a = raw(ts_ns=2_500_000_000, kind=cat.EV_RESET, dir=cat.DIR_RECV, family=socket.AF_INET,
            netns=4026532000, sport=3306, dport=40000, state=1,
            flags=cat.EVF_HAS_SOCK | cat.EVF_IDLE | cat.EVF_KA | cat.EVF_KEEPALIVE | cat.EVF_OWNER,
            idle_jiffies=1750, ka_time=250 * 30, ka_intvl=250 * 5, ka_probes=3,
            pid=42, comm=b"mysql", cookie=99,
            saddr=np.void(bytes([10, 96, 0, 10]) + bytes(12)),
            daddr=np.void(bytes([10, 0, 1, 2]) + bytes(12)))
    (r,) = DEC.decode(a.tobytes())
    assert r["t"] == 1002.5
    assert (r["dir"], r["src"], r["sport"], r["dst"], r["dport"]) == ("recv", "10.96.0.10", 3306, "10.0.1.2", 40000)
    assert r["state"] == "ESTABLISHED" and r["idle_ms"] == 7000
    assert r["keepalive"] is True and r["ka_time_s"] == 30 and r["ka_intvl_s"] == 5 and r["ka_probes"] == 3
    assert (r["pid"], r["comm"], r["cookie"]) == (42, "mysql", 99)
    assert r["reason"] is None and r["syn"] is None


def test_comm_ends_at_its_nul():
    # the task's name as the kernel holds it: what follows the NUL is stale
    a = raw(kind=cat.EV_RESET, dir=cat.DIR_RECV, flags=cat.EVF_HAS_SOCK | cat.EVF_OWNER,
            pid=7, comm=b"sh\0ysqld-worker")
    (r,) = DEC.decode(a.tobytes())
    assert r["comm"] == "sh"


def test_sent_no_socket_reset_answering_a_syn_ipv6():
    src = socket.inet_pton(socket.AF_INET6, "fd00::1")
    a = raw(kind=cat.EV_RESET, dir=cat.DIR_SENT, family=socket.AF_INET6, netns=7, dev_netns=7,
            reason=1, flags=cat.EVF_REASON | cat.EVF_TRIGGER, trigger_flags=0x02,
            saddr=np.void(src), daddr=np.void(socket.inet_pton(socket.AF_INET6, "fd00::2")))
    (r,) = DEC.decode(a.tobytes())
    assert r["family"] == 6 and r["src"] == "fd00::1" and r["dst"] == "fd00::2"
    assert r["reason"] == "NO_SOCKET" and r["reason_raw"] == 1
    assert r["has_sock"] is False and r["syn"] is True and r["state"] == ""
    assert r["idle_ms"] is None and r["keepalive"] is None and r["pid"] is None


def test_unknown_reason_keeps_raw_value():
    a = raw(kind=cat.EV_RESET, dir=cat.DIR_SENT, family=socket.AF_INET, reason=77, flags=cat.EVF_REASON)
    (r,) = DEC.decode(a.tobytes())
    assert r["reason"] == "77" and r["reason_raw"] == 77


_NO_FLOW = {"family": None, "ip_proto": None, "src": None, "sport": None, "dst": None, "dport": None,
            "tcp_flags": None}


def _v4(a: str) -> np.void:
    return np.void(socket.inet_aton(a) + bytes(12))


def _v6(a: str) -> np.void:
    return np.void(socket.inet_pton(socket.AF_INET6, a))


def test_drop_full_and_batch():
    a = np.concatenate([
        raw(kind=cat.EV_CT_DROP, netns=5, reason=12, rport=0x0800),
        raw(kind=cat.EV_CT_FULL, text=b"nf_conntrack: nf_conntrack: table full in netns 4026532247, dropping packet"),
    ])
    d, f = DEC.decode(a.tobytes())
    assert d == {"kind": "ct_drop", "t": 1000.0, "netns": 5, "reason": "NETFILTER_DROP",
                 "reason_raw": 12, "reason_derived": False, "protocol": 0x0800} | _NO_FLOW
    assert f["kind"] == "ct_full" and f["netns"] == 4026532247


# a dropped packet as skb_flow (bpf/rsttrace.bpf.c) leaves it: its IP header
# read (EVF2_L3), its TCP header too (EVF_TRIGGER), in its own direction
@pytest.mark.parametrize("members,flow", [
    (dict(family=socket.AF_INET, proto=6, saddr=_v4("10.0.1.2"), daddr=_v4("10.0.2.2"), sport=40001,
          dport=3306, trigger_flags=0x02, flags=cat.EVF_REASON | cat.EVF_TRIGGER, flags2=cat.EVF2_L3),
     {"family": 4, "ip_proto": 6, "src": "10.0.1.2", "sport": 40001, "dst": "10.0.2.2", "dport": 3306,
      "tcp_flags": 0x02}),
    (dict(family=socket.AF_INET6, proto=6, saddr=_v6("fd00::2"), daddr=_v6("fd00:1::9"), sport=3306,
          dport=50000, trigger_flags=0x12, flags=cat.EVF_REASON | cat.EVF_TRIGGER, flags2=cat.EVF2_L3),
     {"family": 6, "ip_proto": 6, "src": "fd00::2", "sport": 3306, "dst": "fd00:1::9", "dport": 50000,
      "tcp_flags": 0x12}),
    # UDP: addresses, no ports
    (dict(family=socket.AF_INET, proto=17, saddr=_v4("10.0.1.2"), daddr=_v4("10.0.2.2"), sport=99,
          flags=cat.EVF_REASON, flags2=cat.EVF2_L3),
     {"family": 4, "ip_proto": 17, "src": "10.0.1.2", "sport": None, "dst": "10.0.2.2", "dport": None,
      "tcp_flags": None}),
    # not an IP packet (an ARP drop): nothing read
    (dict(flags=cat.EVF_REASON), _NO_FLOW),
])
def test_drop_carries_its_packets_flow(members, flow):
    a = raw(kind=cat.EV_CT_DROP, netns=5, reason=12, rport=0x0800, **members)
    (d,) = DEC.decode_array(a)
    assert {k: d[k] for k in flow} == flow
    assert d["protocol"] == 0x0800
    assert json.loads(DEC.encode_jsonl(a)) == d


def test_derived_drop_has_the_same_fields_without_a_raw_reason():
    # before 5.17: no reason from the kernel, none in the table either (the
    # tracepoint has no reason field); the program derived it from the site
    dec = Decoder(hz=250, mono_to_unix=1000.0)
    a = np.concatenate([raw(kind=cat.EV_CT_DROP, netns=5, rport=0x86dd, flags2=cat.EVF2_REASON_DERIVED),
                        raw(kind=cat.EV_CT_DROP, netns=6, reason=12)])
    d, n = dec.decode(a.tobytes())
    assert d == {"kind": "ct_drop", "t": 1000.0, "netns": 5, "reason": "NETFILTER_DROP",
                 "reason_raw": None, "reason_derived": True, "protocol": 0x86dd} | _NO_FLOW
    assert set(n) == set(d) and n["reason_derived"] is False and n["reason_raw"] == 12


def test_parse_full_netns():
    assert parse_full_netns("nf_conntrack: table full, dropping packet") is None
    assert parse_full_netns("table full in netns 12, dropping") == 12


def test_jsonl_text_equals_the_records():
    """The recorder writes encode_jsonl's text; it must say exactly what the
    dict records say, for every kind and odd strings (quotes in a comm)."""
    import json
    a = np.concatenate([
        raw(kind=cat.EV_RESET, dir=cat.DIR_RECV, family=socket.AF_INET, state=1, ts_ns=10**9,
            flags=cat.EVF_HAS_SOCK | cat.EVF_IDLE | cat.EVF_KA | cat.EVF_OWNER, comm=b'a"b\\c',
            idle_jiffies=3, pid=7, saddr=np.void(bytes([1, 2, 3, 4]) + bytes(12))),
        raw(kind=cat.EV_CT_DROP, netns=5, reason=12, ts_ns=2 * 10**9),
        raw(kind=cat.EV_CT_DROP, netns=5, ts_ns=3 * 10**9, flags2=cat.EVF2_REASON_DERIVED),
        raw(kind=cat.EV_RESET, dir=cat.DIR_SENT, family=socket.AF_INET6, reason=1,
            flags=cat.EVF_REASON | cat.EVF_TRIGGER, trigger_flags=0x14,
            saddr=np.void(socket.inet_pton(socket.AF_INET6, "fd00::9"))),
        raw(kind=cat.EV_CT_FULL, text=b"nf_conntrack: table full in netns 9, dropping packet"),
    ])
    records = DEC.decode_array(a)
    data = DEC.encode_jsonl(a)
    assert data.endswith(b"\n") and b"\0" not in data   # the padding is all gone
    lines = data.decode().split("\n")[:-1]
    assert [json.loads(x) for x in lines] == records
    assert [r["kind"] for r in records] == ["reset", "ct_drop", "ct_drop", "reset", "ct_full"]
    assert records[0]["comm"] == 'a"b\\c' and records[3]["src"] == "fd00::9"
    assert records[3]["syn"] is False and records[3]["trigger_flags"] == 0x14
    assert records[2]["reason_derived"] is True and records[2]["reason_raw"] is None


def _random_batch(seed: int, n: int) -> np.ndarray:
    """Events of every kind in random order, with random flags (so rows of
    one kind differ in which fields are valid) and values."""
    rng = np.random.default_rng(seed)
    a = np.zeros(n, dtype=EVENT_DTYPE)
    a["kind"] = rng.choice([cat.EV_RESET] * 6 + [cat.EV_CT_DROP, cat.EV_CT_FULL, cat.EV_IPVS_EXPIRE,
                                                 cat.EV_CT_ALLOC_FAIL], n)
    a["dir"] = rng.integers(1, 3, n)
    a["flags"] = rng.integers(0, 256, n)
    a["flags2"] = rng.integers(0, 8, n)
    a["family"] = rng.choice([socket.AF_INET, socket.AF_INET6], n)
    a["ts_ns"] = rng.integers(0, 10**15, n)
    for name, top in (("cookie", 2**63), ("sport", 2**16), ("dport", 2**16), ("pid", 2**31),
                      ("idle_jiffies", 2**31), ("state", 13), ("reason", 20), ("netns", 2**32),
                      ("cgroup", 2**40), ("ka_probes", 256), ("trigger_flags", 256)):
        a[name] = rng.integers(0, top, n, dtype=np.uint64) * rng.integers(0, 2, n)  # half zero
    a["saddr"] = [np.void(rng.bytes(16)) for _ in range(n)]
    a["comm"] = rng.choice([b"mysqld", b"app", b""], n)
    a["text"] = b"nf_conntrack: table full in netns 7, dropping packet"
    return a


def test_jsonl_text_equals_the_records_for_mixed_batches():
    """Rows are built in groups of one kind and flags (a field the same in
    a whole group is written once): whatever the mix, the text says what
    the records say, in ring order, and times keep their microseconds."""
    import json
    for seed in range(20):
        a = _random_batch(seed, 300)
        records = DEC.decode_array(a)
        assert [json.loads(x) for x in DEC.encode_jsonl(a).decode().split("\n")[:-1]] == records
        assert [r["t"] for r in records] == [(1000 * 10**6 + t // 1000) / 1e6 for t in a["ts_ns"].tolist()]
    # one group only, and a group of one row
    a = _random_batch(1, 40)
    a["kind"], a["dir"], a["flags"], a["flags2"] = cat.EV_RESET, cat.DIR_SENT, cat.EVF_REASON, 0
    a[7]["flags"] = cat.EVF_HAS_SOCK
    for batch in (a[:7], a):
        assert [json.loads(x) for x in DEC.encode_jsonl(batch).decode().split("\n")[:-1]] == DEC.decode_array(batch)


def test_digits_of_whole_columns():
    from rsttrace.tracer.events import _digits
    v = np.array([0, 7, 10, 99, 12345, 2**64 - 1], dtype=np.uint64)
    rows = [bytes(r).replace(b"\0", b"") for r in _digits(v)]
    assert rows == [str(x).encode() for x in v.tolist()]
    assert _digits(v).shape[1] == 20
    assert [bytes(r) for r in _digits(np.array([5, 123456]), pad=6)] == [b"000005", b"123456"]
    assert _digits(np.array([3]), min_width=4).tolist() == [[0, 0, 0, ord("3")]]
    with pytest.raises(ValueError):
        _digits(np.array([-1]))


def test_columns_of_one_value_and_of_many_decode_alike():
    """A column that is the same in every row of a batch skips the sort of
    distinct values: it must name each row as a mixed column does."""
    import json
    one = np.concatenate([raw(kind=cat.EV_RESET, dir=cat.DIR_RECV, family=socket.AF_INET, state=2,
                              flags=cat.EVF_HAS_SOCK | cat.EVF_OWNER, pid=9, comm=b"mysqld",
                              saddr=np.void(bytes([10, 0, 0, 7]) + bytes(12)), sport=p)
                          for p in range(40000, 40005)])
    mixed = one.copy()
    mixed["comm"][0], mixed["saddr"][0], mixed["state"][0] = b"app", np.void(bytes(16)), 1
    for batch in (one, mixed):
        records = DEC.decode_array(batch)
        assert [json.loads(x) for x in DEC.encode_jsonl(batch).decode().split("\n")[:-1]] == records
        assert [(r["src"], r["comm"], r["state"]) for r in records[1:]] == \
            [("10.0.0.7", "mysqld", "SYN_SENT")] * 4
    assert (records[0]["src"], records[0]["comm"], records[0]["state"]) == ("0.0.0.0", "app", "ESTABLISHED")


def test_take_copies_rows_as_numpy_would():
    from rsttrace.tracer.bpfsys import percpu_slot_dtype
    from rsttrace.tracer.events import take
    a = np.zeros(6, dtype=EVENT_DTYPE)
    a["ts_ns"], a["comm"], a["sport"] = np.arange(6) * 7, b"x", np.arange(6) + 100
    idx = np.array([4, 0, 4, 2])
    assert take(a, idx).tobytes() == a[idx].tobytes()
    assert take(a[::2], np.array([2, 0])).tobytes() == a[::2][[2, 0]].tobytes()  # not contiguous
    slots = np.zeros(6, dtype=percpu_slot_dtype(EVENT_DTYPE))
    slots["ev"], slots["seq"] = a, 9
    got = take(slots, idx, "ev")
    assert got.dtype == EVENT_DTYPE and got.tobytes() == a[idx].tobytes()
