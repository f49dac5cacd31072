"""Decoding of `struct rst_event` (bpf/rsttrace.h) in batches.

`EVENT_DTYPE` is the one Python mirror of the C layout; a kernel test
checks it against what bcc compiled (size and every field offset). Raw
kernel values (state, reason) are decoded with the running kernel's own
tables (`Decoder`), never with numbers typed here.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

# Mirrors bpf/rsttrace.h; numpy's aligned layout follows C's rules.
EVENT_DTYPE = np.dtype([
    ("ts_ns", "<u8"), ("cookie", "<u8"), ("cgroup", "<u8"),
    ("netns", "<u4"), ("dev_netns", "<u4"), ("pid", "<u4"), ("reason", "<u4"),
    ("idle_jiffies", "<u4"), ("ka_time", "<u4"), ("ka_intvl", "<u4"),
    ("sport", "<u2"), ("dport", "<u2"),
    ("kind", "u1"), ("dir", "u1"), ("family", "u1"), ("state", "u1"),
    ("flags", "u1"), ("ka_probes", "u1"), ("trigger_flags", "u1"), ("proto", "u1"),
    ("saddr", "V16"), ("daddr", "V16"), ("raddr", "V16"),
    ("rport", "<u2"), ("ipvs_state", "<u2"), ("flags2", "u1"), ("_pad", "V3"),
    ("comm", "S16"), ("text", "S96"),
], align=True)

# enum rst_kind / rst_dir / EVF_* in bpf/rsttrace.h (our own ABI, not the kernel's)
EV_RESET, EV_CT_DROP, EV_CT_FULL, EV_IPVS_EXPIRE, EV_CT_ALLOC_FAIL = 1, 2, 3, 4, 5
DIR_SENT, DIR_RECV = 1, 2
EVF_HAS_SOCK, EVF_KEEPALIVE, EVF_KA_PER_SOCK = 0x01, 0x02, 0x04
EVF_IDLE, EVF_REASON, EVF_TRIGGER, EVF_OWNER, EVF_KA = 0x08, 0x10, 0x20, 0x40, 0x80
EVF2_SK_CGROUP, EVF2_REASON_DERIVED = 0x01, 0x02
# the reason a derived netfilter drop has on kernels that name it
# (docs/EVENTS.md: reason_derived)
DERIVED_DROP_REASON = "NETFILTER_DROP"
TCP_SYN_FLAG = 0x02  # RFC 793 header bit, not a kernel value

KINDS = {EV_RESET: "reset", EV_CT_DROP: "ct_drop", EV_CT_FULL: "ct_full",
         EV_IPVS_EXPIRE: "ipvs_expire", EV_CT_ALLOC_FAIL: "ct_alloc_fail"}


def take(arr: np.ndarray, idx: np.ndarray, field: str | None = None) -> np.ndarray:
    """arr[idx], or arr[field][idx], copied as rows of 8-byte words: ten
    times faster than numpy's copy of structured items."""
    dtype, at = (arr.dtype, 0) if field is None else arr.dtype.fields[field][:2]
    if arr.dtype.itemsize % 8 or at % 8 or dtype.itemsize % 8 or not arr.flags.c_contiguous:
        return (arr if field is None else arr[field])[idx]
    words = arr.view(np.uint64).reshape(len(arr), arr.dtype.itemsize // 8)
    return words[:, at // 8:(at + dtype.itemsize) // 8][idx].view(dtype).reshape(-1)


def _groups(arr: np.ndarray, key: np.ndarray) -> list[tuple[np.ndarray | None, int, np.ndarray]]:
    """The batch split by `key`: (rows in the batch, key, their events);
    rows None where one group is the whole batch."""
    present, inv = np.unique(key, return_inverse=True)
    if len(present) == 1:
        return [(None, int(present[0]), arr)]
    inv = inv.reshape(-1)
    out = []
    for g, k in enumerate(present.tolist()):
        idx = np.flatnonzero(inv == g)
        out.append((idx, k, take(arr, idx)))
    return out


def _addr(raw: bytes, family: int) -> str:
    if family == socket.AF_INET6:
        ip6 = ipaddress.IPv6Address(raw)
        return str(ip6.ipv4_mapped) if ip6.ipv4_mapped else str(ip6)
    return socket.inet_ntop(socket.AF_INET, raw[:4])


@dataclass
class Decoder:
    """Turns raw events into records (docs/EVENTS.md)."""
    hz: int
    mono_to_unix: float  # add to CLOCK_MONOTONIC seconds to get unix time
    tcp_states: dict[int, str] = field(default_factory=dict)   # 1 -> "ESTABLISHED"
    rst_reasons: dict[int, str] = field(default_factory=dict)  # 1 -> "NO_SOCKET"
    drop_reasons: dict[int, str] = field(default_factory=dict)  # 12 -> "NETFILTER_DROP"
    ipvs_states: dict[int, str] = field(default_factory=dict)
    # the owner's cgroup id -> its Kubernetes pod (tracer/pods.py), or None
    pod_of: Callable[[int], str | None] | None = None

    def decode(self, buf: bytes | bytearray | memoryview) -> list[dict]:
        return self.decode_array(np.frombuffer(buf, dtype=EVENT_DTYPE))

    def decode_array(self, arr: np.ndarray) -> list[dict]:
        """One dict per event (docs/EVENTS.md), in ring order."""
        return self._assemble(arr)

    def encode_jsonl(self, arr: np.ndarray) -> bytes:
        """The same records as JSON Lines (UTF-8, every line ending in a
        newline), without building dicts or a string per event: the
        recorder's hot path. Equal to json.dumps of `decode_array` (a unit
        test holds them to it).

        Events of one shape (kind, direction and flags: which fields are
        valid) become one matrix of bytes, a row per event: each field's
        text is a block of columns, NUL-padded to the group's widest value
        (numbers right-aligned, their digits computed for the whole column
        at once; values that repeat encoded once and broadcast), and a field
        the whole group has the same way is written once into the constant
        text between them. The rows go back to ring order in one matrix, and
        removing the padding (JSON text never holds a NUL byte) leaves
        exactly the compact lines."""
        if not len(arr):
            return b""
        shape = ((arr["kind"].astype(np.uint32) << 24) | (arr["dir"].astype(np.uint32) << 16)
                 | (arr["flags"].astype(np.uint32) << 8) | arr["flags2"])
        groups = [(idx, m) for idx, key, a in _groups(arr, shape)
                  if (m := self._kind_rows(key >> 24, a)) is not None]
        if not groups:
            return b""
        if groups[0][0] is None:
            rows = groups[0][1]
        else:
            rows = np.zeros((len(arr), max(m.shape[1] for _, m in groups)), np.uint8)
            for idx, m in groups:
                rows[idx, :m.shape[1]] = m
        return rows.tobytes().translate(None, b"\0")

    def _assemble(self, arr: np.ndarray) -> list[dict]:
        """Events of one kind are built together, then put back in ring
        order."""
        if not len(arr):
            return []
        groups = _groups(arr, arr["kind"])
        if groups[0][0] is None:
            return self._kind_dicts(groups[0][1], arr)
        out = np.empty(len(arr), dtype=object)
        keep = np.zeros(len(arr), dtype=bool)
        for idx, kind, a in groups:
            items = self._kind_dicts(kind, a)
            if items:
                out[idx] = items
                keep[idx] = True
        return out[keep].tolist()

    def _columns(self, kind: int, a: np.ndarray):
        build = {EV_RESET: self._reset, EV_CT_DROP: self._ct_drop, EV_CT_FULL: self._ct_full,
                 EV_IPVS_EXPIRE: self._ipvs, EV_CT_ALLOC_FAIL: self._alloc_fail}.get(kind)
        return None if build is None else build(a)

    def _kind_dicts(self, kind: int, a: np.ndarray) -> list[dict]:
        built = self._columns(kind, a)
        if built is None:
            return []
        keys, cols = built
        return [dict(zip(keys, row)) for row in zip(*(c.py for c in cols))]

    def _kind_rows(self, kind: int, a: np.ndarray) -> np.ndarray | None:
        """The group's lines as a NUL-padded byte matrix (see encode_jsonl)."""
        built = self._columns(kind, a)
        if built is None:
            return None
        keys, cols = built
        n = len(a)
        blocks, const = [], "{"
        for k, c in zip(keys, cols):
            const += f'"{k}":'
            same = c.const_json()
            if same is not None:
                const += same + ","
                continue
            blocks.append(_const_block(const, n))
            blocks.append(c.block())
            const = ","
        blocks.append(_const_block(const[:-1] + "}\n" if const.endswith(",") else const + "}\n", n))
        return np.concatenate(blocks, axis=1)

    # -- per kind: (keys, columns) -------------------------------------
    def _time(self, a: np.ndarray) -> "Col":
        """Unix time in whole microseconds: "s.uuuuuu" in the text, the
        same number as a float (both exact to the microsecond)."""
        us = (a["ts_ns"] // 1000).astype(np.int64) + round(self.mono_to_unix * 1e6)
        return Col(None, make_py=lambda: (us / 1e6).tolist(),
                   block=lambda: np.concatenate([_digits(us // 1_000_000), _const_block(".", len(us)),
                                                 _digits(us % 1_000_000, pad=6)], axis=1))

    def _reset(self, a: np.ndarray):
        n = len(a)
        f = a["flags"]
        has_sock = (f & EVF_HAS_SOCK) != 0
        idle = (f & EVF_IDLE) != 0
        ka = (f & EVF_KA) != 0
        owner = (f & EVF_OWNER) != 0
        sk_cg = (a["flags2"] & EVF2_SK_CGROUP) != 0
        has_cg = owner | sk_cg
        reason_ok = (f & EVF_REASON) != 0
        trig_ok = (f & EVF_TRIGGER) != 0
        fam = a["family"]
        v6 = fam == socket.AF_INET6
        st = a["state"]
        rr = a["reason"]
        trig = a["trigger_flags"]
        state_names = Categorical.lookup(st, lambda v: self.tcp_states.get(v, str(v)) if v else "")
        cols = [
            Col.const("reset", n), self._time(a),
            Categorical(np.where(a["dir"] == DIR_SENT, 0, 1), ["sent", "recv"]).col(),
            Col.ints(a["netns"]),
            Col.ints(np.where(v6, 6, 4)),
            _addresses(a["saddr"], v6), Col.ints(a["sport"]),
            _addresses(a["daddr"], v6), Col.ints(a["dport"]),
            state_names, Col.ints(st),
            Categorical.lookup(rr, lambda v: self.rst_reasons.get(v, str(v)), reason_ok),
            Col.ints(rr, reason_ok),
            Col.bools(has_sock),
            Col.ints(a["cookie"], a["cookie"] != 0),
            Col.bools((trig & TCP_SYN_FLAG) != 0, trig_ok & ~has_sock),
            Col.ints(trig, trig_ok),
            Col.ints(a["idle_jiffies"].astype(np.uint64) * 1000 // self.hz, idle),
            Col.bools((f & EVF_KEEPALIVE) != 0, ka),
            Col.ints(a["ka_time"] // self.hz, ka),
            Col.ints(a["ka_intvl"] // self.hz, ka),
            Col.ints(a["ka_probes"], ka),
            Col.bools((f & EVF_KA_PER_SOCK) != 0, ka),
            Col.ints(a["dev_netns"], a["dev_netns"] != 0),
            Col.ints(a["pid"], owner),
            Categorical.lookup(a["comm"], lambda b: b.split(b"\0", 1)[0].decode(errors="replace"), owner),
            Col.ints(a["cgroup"], has_cg),
            Categorical(np.where(owner, 0, 1), ["owner", "socket"], has_cg).col(),
            Categorical.lookup(a["cgroup"], self._pod, has_cg),
        ]
        return RESET_KEYS, cols

    def _pod(self, cgroup: int) -> str | None:
        return self.pod_of(cgroup) if self.pod_of is not None and cgroup else None

    def _ct_drop(self, a: np.ndarray):
        rr = a["reason"]
        # before 5.17 the kernel gives no reason: the program derived it
        # from where the packet was freed, and there is no raw value
        derived = (a["flags2"] & EVF2_REASON_DERIVED) != 0
        key = rr.astype(np.uint64) | (derived.astype(np.uint64) << np.uint64(32))
        return ("kind", "t", "netns", "reason", "reason_raw", "reason_derived", "protocol"), [
            Col.const("ct_drop", len(a)), self._time(a),
            Col.ints(a["netns"], a["netns"] != 0),
            Categorical.lookup(key, lambda v: DERIVED_DROP_REASON if v >> 32
                               else self.drop_reasons.get(v, str(v))),
            Col.ints(rr, ~derived), Col.bools(derived), Col.ints(a["sport"])]

    def _ct_full(self, a: np.ndarray):
        texts = [b.decode(errors="replace").strip() for b in a["text"].tolist()]
        return ("kind", "t", "netns", "text"), [
            Col.const("ct_full", len(a)), self._time(a),
            Col([parse_full_netns(t) for t in texts]), Col(texts)]

    def _ipvs(self, a: np.ndarray):
        v6 = a["family"] == socket.AF_INET6
        st = a["ipvs_state"]
        return ("kind", "t", "netns", "protocol", "client", "cport", "vaddr", "vport",
                "daddr", "dport", "state", "state_raw"), [
            Col.const("ipvs_expire", len(a)), self._time(a), Col.ints(a["netns"]),
            Col.ints(a["proto"]), _addresses(a["saddr"], v6), Col.ints(a["sport"]),
            _addresses(a["daddr"], v6), Col.ints(a["dport"]),
            _addresses(a["raddr"], v6), Col.ints(a["rport"]),
            Categorical.lookup(st, lambda v: self.ipvs_states.get(v, str(v))), Col.ints(st)]

    def _alloc_fail(self, a: np.ndarray):
        return ("kind", "t", "netns", "errno"), [
            Col.const("ct_alloc_fail", len(a)), self._time(a),
            Col([None] * len(a)), Col.ints(a["reason"])]


RESET_KEYS = ("kind", "t", "dir", "netns", "family", "src", "sport", "dst", "dport", "state",
              "state_raw", "reason", "reason_raw", "has_sock", "cookie", "syn", "trigger_flags",
              "idle_ms", "keepalive", "ka_time_s", "ka_intvl_s", "ka_probes", "ka_per_socket",
              "dev_netns", "pid", "comm", "cgroup", "cgroup_of", "pod")

_dumps = json.JSONEncoder(ensure_ascii=False).encode


class Col:
    """One column of a batch: Python values (None where invalid) and their
    JSON text, each made on first use (the recorder only needs the text,
    the live path only the values)."""

    __slots__ = ("_py", "_make_py", "_codes", "_texts", "_block")

    def __init__(self, py: list | None, make_py: Callable[[], list] | None = None,
                 codes: np.ndarray | None = None, texts: Callable[[], list] | None = None,
                 block: Callable[[], np.ndarray] | None = None):
        self._py, self._make_py = py, make_py
        # a column of few distinct values: codes into texts(), the JSON of
        # each (its text is made from them)
        self._codes, self._texts = codes, texts
        # numbers: their text made for the whole column at once (_digits)
        self._block = block

    def block(self) -> np.ndarray:
        """This column's JSON text as a NUL-padded byte matrix, a row each."""
        if self._block is not None:
            return self._block()
        if self._codes is not None:
            return _text_matrix(self._texts())[self._codes]
        # Python values (rare kinds): each one's JSON
        return _text_matrix([_dumps(v) for v in self.py])

    def const_json(self) -> str | None:
        """The JSON text every row has, when that is known cheaply (one
        distinct value), else None."""
        c = self._codes
        if c is not None and len(c) and c.min() == c.max():
            return self._texts()[int(c[0])]
        return None

    @property
    def py(self) -> list:
        if self._py is None:
            self._py = self._make_py()
        return self._py

    @classmethod
    def const(cls, value, n: int) -> "Col":
        text = _dumps(value)
        return cls([value] * n, codes=np.zeros(n, np.intp), texts=lambda: [text])

    @classmethod
    def ints(cls, values: np.ndarray, valid: np.ndarray | None = None) -> "Col":
        """Non-negative integers, null where not `valid`."""
        # one value (or none) in every row: written once into the line
        if valid is not None and not valid.any():
            return cls.const(None, len(values))
        if valid is None or valid.all():
            if len(values) and values.min() == values.max():
                return cls.const(int(values[0]), len(values))
            return cls(None, make_py=values.tolist, block=lambda: _digits(values))

        def block() -> np.ndarray:
            out = _digits(np.where(valid, values, 0), min_width=len(_NULL))
            out[~valid] = np.frombuffer(_NULL.ljust(out.shape[1], b"\0"), np.uint8)
            return out
        return cls(None, make_py=lambda: _with_nulls(values, valid), block=block)

    @classmethod
    def bools(cls, values: np.ndarray, valid: np.ndarray | None = None) -> "Col":
        codes = values.astype(np.intp) if valid is None else np.where(valid, values, 2)
        return cls(None, make_py=lambda: _BOOL_PY[codes].tolist(), codes=codes,
                   texts=_BOOL_JSON.tolist)


_NULL = b"null"
_POW10 = np.array([10 ** k for k in range(1, 20)], dtype=np.uint64)


def _digits(values: np.ndarray, pad: int = 0, min_width: int = 1) -> np.ndarray:
    """Non-negative integers in decimal, a row of ASCII digits each, right-
    aligned: NUL on the left (at least `min_width` columns), or with `pad`,
    zeros to that many digits. The whole column at once: one division by
    ten per digit position."""
    v = np.asarray(values)
    if v.dtype.kind == "i" and len(v) and v.min() < 0:
        raise ValueError("negative values have no digits here")
    v = v.astype(np.uint64)
    nd = np.searchsorted(_POW10, v, side="right") + 1 if len(v) else np.zeros(0, np.intp)
    wd = max(int(nd.max()) if len(v) else 1, pad)
    w = max(wd, min_width)
    out = np.zeros((len(v), w), np.uint8)
    x = v.copy()
    for j in range(w - 1, w - wd - 1, -1):
        out[:, j] = x % 10
        x //= 10
    out[:, w - wd:] += 48
    if not pad:
        out[np.arange(w) < (w - nd)[:, None]] = 0
    return out


def _text_matrix(texts: list[str]) -> np.ndarray:
    """Texts as rows of UTF-8 bytes, NUL-padded to the longest."""
    a = np.array([t.encode() for t in texts], dtype=bytes)
    return a.view(np.uint8).reshape(len(texts), a.dtype.itemsize)


def _const_block(text: str, n: int) -> np.ndarray:
    """The same text in each of n rows (a view, no copy)."""
    b = np.frombuffer(text.encode(), np.uint8)
    return np.broadcast_to(b, (n, len(b)))


_BOOL_PY = np.array([False, True, None], dtype=object)
_BOOL_JSON = np.array(["false", "true", "null"], dtype=object)


def _with_nulls(values: np.ndarray, valid: np.ndarray | None) -> list:
    py = values.tolist()
    if valid is not None and not valid.all():
        py = [v if ok else None for v, ok in zip(py, valid.tolist())]
    return py


class Categorical:
    """Values that repeat (addresses, state and reason names, comms): each
    distinct value is named and encoded once, then broadcast."""

    def __init__(self, codes: np.ndarray, categories: list, valid: np.ndarray | None = None):
        self.codes, self.categories, self.valid = codes, categories, valid

    @classmethod
    def lookup(cls, raw: np.ndarray, name, valid: np.ndarray | None = None) -> Col:
        uniq, inv = _distinct(raw)
        return cls(inv, [name(u) for u in uniq.tolist()], valid).col()

    def col(self) -> Col:
        cats = self.categories + [None]
        codes = self.codes
        if self.valid is not None and not self.valid.all():
            codes = np.where(self.valid, codes, len(cats) - 1)

        texts = functools.cache(lambda: [_dumps(c) for c in cats[:-1]] + ["null"])
        return Col(None, make_py=lambda: np.array(cats, dtype=object)[codes].tolist(),
                   codes=codes, texts=texts)


def _distinct(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values, each row's index into them); a column of one value
    (common within a shape group) needs no sort."""
    if len(raw) and (raw == raw[0]).all():
        return raw[:1], np.zeros(len(raw), np.intp)
    uniq, inv = np.unique(raw, return_inverse=True)
    return uniq, inv.reshape(-1)


def _addresses(raw: np.ndarray, v6: np.ndarray) -> Col:
    """16-byte address fields -> strings, each distinct address formatted once."""
    b = np.ascontiguousarray(raw).view(np.uint8).reshape(len(raw), 16)
    if not v6.any():
        uniq, inv = _distinct(b[:, :4].copy().view("<u4").reshape(-1))
        cats = [socket.inet_ntop(socket.AF_INET, int(u).to_bytes(4, "little")) for u in uniq.tolist()]
        return Categorical(inv, cats).col()
    keyed = np.where(v6[:, None], b, np.pad(b[:, :4], ((0, 0), (0, 12))))
    fam_key = np.concatenate([keyed, v6[:, None].astype(np.uint8)], axis=1)
    uniq, inv = np.unique(fam_key, axis=0, return_inverse=True)
    cats = [_addr(bytes(u[:16]), socket.AF_INET6 if u[16] else socket.AF_INET) for u in uniq]
    return Categorical(inv.reshape(-1), cats).col()


def parse_full_netns(text: str) -> int | None:
    """'nf_conntrack: table full in netns 4026532247, dropping packet' -> 4026532247"""
    marker = "in netns "
    i = text.find(marker)
    if i < 0:
        return None
    digits = ""
    for ch in text[i + len(marker):]:
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else None
