"""Decoding of `struct rst_event` (bpf/rsttrace.h) in batches.

`EVENT_DTYPE` is the one Python mirror of the C layout, made from the
field catalog (rsttrace.schema.catalog: a unit test parses the header and
compares, a kernel test compares what bcc compiled: size and every field
offset). Records are built field by field as the catalog lists them: its
member, how it is decoded, when it is null. Raw kernel values (state,
reason) are decoded with the running kernel's own tables (`Decoder`),
never with numbers typed here.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from rsttrace.schema import catalog as cat
from rsttrace.schema.catalog import Field

# numpy's aligned layout follows C's rules (a unit test holds it to the
# offsets computed from the header)
EVENT_DTYPE = np.dtype([(m.name, m.numpy) for m in cat.EVENT], align=True)

# storm mode's per-CPU hash (bpf/rsttrace.h struct rst_agg_key / rst_agg_val)
AGG_KEY_DTYPE = np.dtype([(m.name, m.numpy) for m in cat.AGG_KEY], align=True)
AGG_VAL_DTYPE = np.dtype([(m.name, m.numpy) for m in cat.AGG_VAL], align=True)

#: enum rst_kind value -> the record's kind
KINDS = {int(k.value): k.name for k in cat.EVENTS}   # type: ignore[arg-type]


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

    def aggregate(self, key: bytes, values: bytes) -> dict | None:
        """The `reset_agg` record (docs/EVENTS.md) of one storm-mode key and
        its per-CPU values (as the kernel gives them for a per-CPU hash: one
        value per possible CPU); None when no reset was counted under it
        (only its sample came, as full events)."""
        k = np.frombuffer(key, AGG_KEY_DTYPE, count=1)[0]
        v = np.frombuffer(values, AGG_VAL_DTYPE)
        hit = v["count"] > 0
        count = int(v["count"].sum())
        if not count:
            return None
        fam = int(k["family"])
        flags = int(k["flags"])
        reason = int(k["reason"]) if flags & cat.EVF_REASON else None
        state = int(k["state"])
        return {
            "kind": "reset_agg",
            "t": self._unix(int(v["last_ns"][hit].max())),
            "t_first": self._unix(int(v["first_ns"][hit].min())),
            "count": count, "sampled": int(v["sampled"].sum()),
            "dir": "sent" if k["dir"] == cat.DIR_SENT else "recv",
            "netns": int(k["netns"]),
            "family": 6 if fam == socket.AF_INET6 else 4,
            "src": _addr(k["saddr"].tobytes(), fam), "sport": int(k["sport"]),
            "dst": _addr(k["daddr"].tobytes(), fam), "dport": int(k["dport"]),
            "state": self.tcp_states.get(state, str(state)) if state else "",
            "state_raw": state,
            "reason": None if reason is None else self.rst_reasons.get(reason, str(reason)),
            "reason_raw": reason,
            "has_sock": bool(flags & cat.EVF_HAS_SOCK),
            "syn": bool(k["aflags"] & cat.AGGF_SYN) if flags & cat.EVF_TRIGGER else None,
        }

    def _unix(self, ns: int) -> float:
        """A bpf_ktime_get_ns() time as unix seconds to the microsecond, as
        `t` of the events is made."""
        return (ns // 1000 + round(self.mono_to_unix * 1e6)) / 1e6

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
        plan = _PLANS.get(kind)
        if plan is None:
            return None
        g = _Group(self, a)
        return plan[0], [build(g, f, g.valid(when, f.c)) for build, f, when in plan[1]]

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

    def _time(self, a: np.ndarray) -> "Col":
        """Unix time in whole microseconds: "s.uuuuuu" in the text, the
        same number as a float (both exact to the microsecond)."""
        us = (a["ts_ns"] // 1000).astype(np.int64) + round(self.mono_to_unix * 1e6)
        return Col(None, make_py=lambda: (us / 1e6).tolist(),
                   block=lambda: np.concatenate([_digits(us // 1_000_000), _const_block(".", len(us)),
                                                 _digits(us % 1_000_000, pad=6)], axis=1))

    def _pod(self, cgroup: int) -> str | None:
        return self.pod_of(cgroup) if self.pod_of is not None and cgroup else None


class _Group:
    """One group of events being decoded (one kind, mostly one shape): the
    masks of the catalog's `when` conditions and the address family, each
    computed once for all the fields that need them."""

    def __init__(self, dec: Decoder, a: np.ndarray):
        self.dec, self.a, self.n = dec, a, len(a)
        self._masks: dict[tuple, np.ndarray] = {}
        self._v6: np.ndarray | None = None
        self._texts: list[str] | None = None

    def valid(self, when: tuple | None, member: str | None) -> np.ndarray | None:
        """Where a field has a value (None: everywhere), by its `when`."""
        if when is None:
            return None
        m = self._masks.get((when, member))
        if m is None:
            m = self._masks[(when, member)] = self._eval(when, member)
        return m

    def _eval(self, when: tuple, member: str | None) -> np.ndarray:
        a = self.a
        out = None
        for alt in when:
            both = None
            for term in alt:
                if term[0] == "nonzero":
                    m = a[member] != 0
                else:
                    m = (a[term[1]] & term[2]) != 0
                if term[-1]:
                    m = ~m
                both = m if both is None else both & m
            out = both if out is None else out | both
        assert out is not None
        return out

    @property
    def v6(self) -> np.ndarray:
        if self._v6 is None:
            self._v6 = self.a["family"] == socket.AF_INET6
        return self._v6

    @property
    def texts(self) -> list[str]:
        if self._texts is None:
            self._texts = [b.decode(errors="replace").strip() for b in self.a["text"].tolist()]
        return self._texts


Valid = np.ndarray | None


def _names(g: _Group, f: Field, valid: Valid) -> "Col":
    d = f.decode
    table: dict[int, str] = getattr(g.dec, d.arg)
    zero = d.zero
    if zero is None:
        name = lambda v: table.get(v, str(v))          # noqa: E731
    else:
        name = lambda v: table.get(v, str(v)) if v else zero   # noqa: E731
    raw = g.a[f.c]
    if d.flag is None:
        return Categorical.lookup(raw, name, valid)
    # a name the program derived (the kernel has no value for it): the flag
    # above the 32-bit raw value keys it apart from every kernel value
    flagged = (g.a[cat.flag_member(d.flag)] & d.flag) != 0
    key = raw.astype(np.uint64) | (flagged.astype(np.uint64) << np.uint64(32))
    return Categorical.lookup(key, lambda v: d.yes if v >> 32 else name(v), valid)


def _enum(g: _Group, f: Field, valid: Valid) -> "Col":
    raw, pairs = g.a[f.c], f.decode.arg
    codes = np.full(len(raw), -1, np.intp)
    for i, (v, _) in enumerate(pairs):
        codes[raw == v] = i
    if (codes < 0).any():   # a value the header does not name: shown as its number
        names = {int(v): n for v, n in pairs}
        return Categorical.lookup(raw, lambda v: names.get(v, str(v)), valid)
    return Categorical(codes, [n for _, n in pairs], valid).col()


def _choice(g: _Group, f: Field, valid: Valid) -> "Col":
    d = f.decode
    return Categorical(np.where((g.a[f.c] & d.arg) != 0, 0, 1), [d.yes, d.no], valid).col()


def _cstring(b: bytes) -> str:
    # the task's name as the kernel holds it: what follows the NUL is stale
    return b.split(b"\0", 1)[0].decode(errors="replace")


# decode op (rsttrace.schema.catalog.Decode) -> its column
_BUILD: dict[str, Callable[[_Group, Field, Valid], "Col"]] = {
    "kind": lambda g, f, v: Col.const(KINDS[int(g.a["kind"][0])], g.n),
    "time": lambda g, f, v: g.dec._time(g.a),
    "int": lambda g, f, v: Col.ints(g.a[f.c], v),
    "jiffies_ms": lambda g, f, v: Col.ints(g.a[f.c].astype(np.uint64) * 1000 // g.dec.hz, v),
    "jiffies_s": lambda g, f, v: Col.ints(g.a[f.c] // g.dec.hz, v),
    "bit": lambda g, f, v: Col.bools((g.a[f.c] & f.decode.arg) != 0, v),
    "names": _names,
    "enum": _enum,
    "choice": _choice,
    "addr": lambda g, f, v: _addresses(g.a[f.c], g.v6, v),
    "family": lambda g, f, v: Col.ints(np.where(g.v6, 6, 4), v),
    "cstring": lambda g, f, v: Categorical.lookup(g.a[f.c], _cstring, v),
    "text": lambda g, f, v: Col(g.texts),
    "full_netns": lambda g, f, v: Col([parse_full_netns(t) for t in g.texts]),
    "pod": lambda g, f, v: Categorical.lookup(g.a[f.c], g.dec._pod, v),
    "null": lambda g, f, v: Col([None] * g.n),
}

# enum rst_kind value -> (keys, [(builder, field, parsed `when`)]): each
# kind's record, field by field, as the catalog lists them
_PLANS = {int(k.value): (k.keys, [(_BUILD[f.decode.op], f,   # type: ignore[union-attr, arg-type]
                                   cat.parse_when(f.when) if f.when else None) for f in k.fields])
          for k in cat.EVENTS}

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


def _addresses(raw: np.ndarray, v6: np.ndarray, valid: Valid = None) -> Col:
    """16-byte address fields -> strings, each distinct address formatted
    once; null where not `valid`."""
    b = np.ascontiguousarray(raw).view(np.uint8).reshape(len(raw), 16)
    if not v6.any():
        uniq, inv = _distinct(b[:, :4].copy().view("<u4").reshape(-1))
        cats = [socket.inet_ntop(socket.AF_INET, int(u).to_bytes(4, "little")) for u in uniq.tolist()]
        return Categorical(inv, cats, valid).col()
    keyed = np.where(v6[:, None], b, np.pad(b[:, :4], ((0, 0), (0, 12))))
    fam_key = np.concatenate([keyed, v6[:, None].astype(np.uint8)], axis=1)
    uniq, inv = np.unique(fam_key, axis=0, return_inverse=True)
    cats = [_addr(bytes(u[:16]), socket.AF_INET6 if u[16] else socket.AF_INET) for u in uniq]
    return Categorical(inv.reshape(-1), cats, valid).col()


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
