"""Storm mode's aggregates decoded from the per-CPU hash's raw key and
values (bpf/rsttrace.h struct rst_agg_key / rst_agg_val), without root."""

from __future__ import annotations

import socket

import numpy as np

from rsttrace.schema import catalog as cat
import json

from rsttrace.schema.validate import decode_record
from rsttrace.tracer.events import AGG_KEY_DTYPE, AGG_VAL_DTYPE, Decoder

DEC = Decoder(hz=250, mono_to_unix=1_700_000_000.0, tcp_states={2: "SYN_SENT"},
              rst_reasons={1: "NO_SOCKET"})


def key(**kw) -> bytes:
    k = np.zeros(1, AGG_KEY_DTYPE)
    for name, value in kw.items():
        k[name] = np.void(value) if isinstance(value, bytes) else value
    return k.tobytes()


def values(*per_cpu: tuple[int, int, int, int]) -> bytes:
    return np.array(list(per_cpu), dtype=AGG_VAL_DTYPE).tobytes()


def v4(addr: str) -> bytes:
    return socket.inet_aton(addr) + bytes(12)


def test_a_refused_connect_storm_summed_over_cpus():
    k = key(saddr=v4("10.0.0.1"), daddr=v4("10.0.0.2"),
            netns=4026531840, reason=1, sport=3306, dir=int(cat.DIR_SENT), family=socket.AF_INET,
            flags=int(cat.EVF_REASON | cat.EVF_TRIGGER), aflags=int(cat.AGGF_SYN))
    # (count, first_ns, last_ns, sampled) on CPU 0 and 1; a CPU that counted
    # nothing has no times that count
    rec = DEC.aggregate(k, values((5, 2_000_000, 9_000_000, 8), (3, 1_000_000, 4_000_000, 8), (0, 0, 0, 2)))
    assert rec == {
        "kind": "reset_agg", "t": 1_700_000_000.009, "t_first": 1_700_000_000.001, "count": 8, "sampled": 18,
        "dir": "sent", "netns": 4026531840, "family": 4, "src": "10.0.0.1", "sport": 3306,
        "dst": "10.0.0.2", "dport": 0, "state": "", "state_raw": 0, "reason": "NO_SOCKET", "reason_raw": 1,
        "has_sock": False, "syn": True}
    assert decode_record(json.dumps(rec).encode()) == rec


def test_received_resets_have_no_reason_and_no_syn_bit():
    k = key(saddr=v4("10.0.0.2"), daddr=v4("10.0.0.1"),
            sport=3306, dir=int(cat.DIR_RECV), family=socket.AF_INET, state=2,
            flags=int(cat.EVF_HAS_SOCK))
    rec = DEC.aggregate(k, values((4, 1_000, 2_000, 8)))
    assert (rec["dir"], rec["state"], rec["reason"], rec["reason_raw"], rec["syn"], rec["has_sock"]) == \
        ("recv", "SYN_SENT", None, None, None, True)
    assert decode_record(json.dumps(rec).encode()) == rec


def test_ipv6_and_a_key_with_only_its_sample():
    a6 = socket.inet_pton(socket.AF_INET6, "fd00::5")
    k = key(saddr=a6, daddr=a6, dir=int(cat.DIR_SENT),
            family=socket.AF_INET6)
    assert DEC.aggregate(k, values((0, 0, 0, 3), (0, 0, 0, 1))) is None   # nothing beyond the sample
    rec = DEC.aggregate(k, values((1, 7_000, 7_000, 8)))
    assert (rec["family"], rec["src"], rec["count"]) == (6, "fd00::5", 1)
