"""A small reader for the kernel's BTF (/sys/kernel/btf/vmlinux).

The BPF programs read kernel structs by offset, and those offsets (and enum
values such as SKB_DROP_REASON_NETFILTER_DROP) differ between kernels and
from any installed headers (PLATFORM.md: 6.1 headers on a 6.18 kernel give
wrong layouts and wrong enum values). So every offset and enum value comes
from here, at run time, and is passed to the program with -D.

Only what rsttrace needs is decoded: struct/union members (with nested and
anonymous members resolved), enum values. The type section is walked once to
index where each type starts; names are matched by their string offset, so
no string is decoded that is not asked for.
"""

from __future__ import annotations

import functools
import os
import struct
from array import array
from dataclasses import dataclass

import numpy as np

BTF_MAGIC = 0xEB9F

# BTF_KIND_* (include/uapi/linux/btf.h); these are part of the stable BTF
# format, not of any kernel's internals.
KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM = 1, 2, 3, 4, 5, 6
KIND_FWD, KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT = 7, 8, 9, 10, 11
KIND_FUNC, KIND_FUNC_PROTO, KIND_VAR, KIND_DATASEC, KIND_FLOAT = 12, 13, 14, 15, 16
KIND_DECL_TAG, KIND_TYPE_TAG, KIND_ENUM64 = 17, 18, 19

# Bytes that follow the 12-byte common header, per kind: (fixed, per vlen item).
_EXTRA = {
    KIND_INT: (4, 0), KIND_ARRAY: (12, 0), KIND_STRUCT: (0, 12), KIND_UNION: (0, 12),
    KIND_ENUM: (0, 8), KIND_FUNC_PROTO: (0, 8), KIND_VAR: (4, 0), KIND_DATASEC: (0, 12),
    KIND_DECL_TAG: (4, 0), KIND_ENUM64: (0, 12),
}
_MODIFIERS = (KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG)


class BTFError(Exception):
    pass


@dataclass(frozen=True)
class Member:
    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int  # 0 when not a bitfield


class BTF:
    def __init__(self, data: bytes, base: "BTF | None" = None):
        magic, version, flags, hdr_len, type_off, type_len, str_off, str_len = \
            struct.unpack_from("<HBBIIIII", data, 0)
        if magic != BTF_MAGIC:
            raise BTFError("not a BTF blob (bad magic)")
        self._data = data
        self._types_start = hdr_len + type_off
        self._types_end = self._types_start + type_len
        self._str_start = hdr_len + str_off
        self._strings = data[self._str_start:self._str_start + str_len]
        self.base = base
        # Split BTF (modules) continues the base's type ids and string offsets.
        self._first_id = (base._next_id if base else 1)
        self._str_base = (len(base._strings) if base else 0)
        # file offset and name offset of each type, index = id - first_id
        self._offsets = array("I")
        self._names = array("I")
        self._index()
        self._next_id = self._first_id + len(self._offsets)

    @classmethod
    def load(cls, path: str = "/sys/kernel/btf/vmlinux", base: "BTF | None" = None) -> "BTF":
        try:
            with open(path, "rb") as fh:
                return cls(fh.read(), base)
        except OSError as e:
            raise BTFError(f"cannot read BTF at {path}: {e.strerror}") from None

    def _index(self) -> None:
        data, pos, end = self._data, self._types_start, self._types_end
        offsets, names = self._offsets, self._names
        unpack = struct.unpack_from
        extra = _EXTRA
        while pos < end:
            offsets.append(pos)
            name_off, info = unpack("<II", data, pos)
            names.append(name_off)
            kind = (info >> 24) & 0x1F
            fixed, per = extra.get(kind, (0, 0))
            pos += 12 + fixed + per * (info & 0xFFFF)

    # -- raw access -------------------------------------------------------
    def _str(self, off: int) -> str:
        if off < self._str_base and self.base is not None:
            return self.base._str(off)
        off -= self._str_base
        end = self._strings.index(b"\0", off)
        return self._strings[off:end].decode()

    def _owner(self, type_id: int) -> "BTF":
        btf: BTF = self
        while type_id < btf._first_id:
            if btf.base is None:
                raise BTFError(f"type id {type_id} out of range")
            btf = btf.base
        return btf

    def _header(self, type_id: int) -> tuple[int, int, int, int, int]:
        """(file offset, name_off, kind, vlen, size_or_type) of a type."""
        btf = self._owner(type_id)
        pos = btf._offsets[type_id - btf._first_id]
        name_off, info, size_type = struct.unpack_from("<III", btf._data, pos)
        return pos, name_off, (info >> 24) & 0x1F, info & 0xFFFF, size_type

    def kind(self, type_id: int) -> int:
        return self._header(type_id)[2]

    def name(self, type_id: int) -> str:
        btf = self._owner(type_id)
        return btf._str(self._header(type_id)[1])

    def find(self, name: str, kinds: tuple[int, ...]) -> int:
        """Type id of the first type called `name` with one of `kinds`."""
        for btf in self._chain():
            needle = b"\0" + name.encode() + b"\0"
            i = btf._strings.find(needle)
            offs = []
            while i >= 0:
                offs.append(i + 1 + btf._str_base)
                i = btf._strings.find(needle, i + 1)
            if not offs:
                continue
            # the types with that name, in id order (a vectorised scan)
            names = np.frombuffer(btf._names, dtype=np.uint32)
            for idx in np.flatnonzero(np.isin(names, offs)).tolist():
                info = struct.unpack_from("<I", btf._data, btf._offsets[idx] + 4)[0]
                if ((info >> 24) & 0x1F) in kinds:
                    return btf._first_id + idx
        raise BTFError(f"no type {name!r} in BTF")

    def _chain(self) -> list["BTF"]:
        # A module's own types first, then the base's.
        out, btf = [], self
        while btf is not None:
            out.append(btf)
            btf = btf.base
        return out

    def resolve(self, type_id: int) -> int:
        """Skip typedefs and qualifiers."""
        while True:
            _, _, kind, _, size_type = self._header(type_id)
            if kind not in _MODIFIERS:
                return type_id
            type_id = size_type

    def members(self, type_id: int) -> list[Member]:
        btf = self._owner(type_id)
        pos, _, kind, vlen, _ = self._header(type_id)
        info = struct.unpack_from("<I", btf._data, pos + 4)[0]
        if kind not in (KIND_STRUCT, KIND_UNION):
            raise BTFError(f"type {type_id} is not a struct or union")
        kflag = info >> 31
        out = []
        for i in range(vlen):
            name_off, mtype, off = struct.unpack_from("<III", btf._data, pos + 12 + 12 * i)
            bsize = 0
            if kflag:
                bsize, off = off >> 24, off & 0xFFFFFF
            out.append(Member(btf._str(name_off) if name_off else "", mtype, off, bsize))
        return out

    def size(self, type_id: int) -> int:
        type_id = self.resolve(type_id)
        _, _, kind, _, size_type = self._header(type_id)
        if kind in (KIND_INT, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64, KIND_FLOAT):
            return size_type
        if kind == KIND_PTR:
            return 8
        if kind == KIND_ARRAY:
            btf = self._owner(type_id)
            pos = btf._offsets[type_id - btf._first_id]
            elem, _, nelems = struct.unpack_from("<III", btf._data, pos + 12)
            return self.size(elem) * nelems
        raise BTFError(f"no size for type {type_id} (kind {kind})")

    def _member(self, type_id: int, name: str) -> tuple[int, Member] | None:
        """(bit offset, member) of `name` in a struct, searching anonymous members."""
        for m in self.members(self.resolve(type_id)):
            if m.name == name:
                return m.bit_offset, m
            if not m.name:
                sub = self.resolve(m.type_id)
                if self.kind(sub) in (KIND_STRUCT, KIND_UNION):
                    hit = self._member(sub, name)
                    if hit is not None:
                        return m.bit_offset + hit[0], hit[1]
        return None

    def _walk(self, struct_name: str, path: str) -> tuple[int, Member]:
        """(bit offset, last member) of `struct_name.path`, nested and
        anonymous members resolved."""
        type_id = self.find(struct_name, (KIND_STRUCT, KIND_UNION))
        bits, member = 0, None
        for part in path.split("."):
            hit = self._member(type_id, part)
            if hit is None:
                raise BTFError(f"struct {struct_name} has no member {path!r} ({part!r} missing)")
            bits += hit[0]
            member = hit[1]
            type_id = member.type_id
        assert member is not None
        return bits, member

    def field(self, struct_name: str, path: str) -> tuple[int, int]:
        """(byte offset, byte size) of `struct_name.path`, e.g.
        field("sock", "__sk_common.skc_net")."""
        bits, member = self._walk(struct_name, path)
        if member.bitfield_size or bits % 8:
            raise BTFError(f"{struct_name}.{path} is a bitfield, which a byte offset cannot name")
        return bits // 8, self.size(member.type_id)

    def proto_params(self, type_id: int) -> list[int]:
        """Parameter type ids of a FUNC_PROTO."""
        btf = self._owner(type_id)
        pos, _, kind, vlen, _ = self._header(type_id)
        if kind != KIND_FUNC_PROTO:
            raise BTFError(f"type {type_id} is not a function prototype")
        return [struct.unpack_from("<II", btf._data, pos + 12 + 8 * i)[1] for i in range(vlen)]

    def type_name(self, type_id: int) -> str:
        """C spelling of a type without qualifiers: 'struct sock *', 'int'."""
        if type_id == 0:
            return "void"
        _, name_off, kind, _, size_type = self._header(type_id)
        if kind in (KIND_CONST, KIND_VOLATILE, KIND_RESTRICT, KIND_TYPE_TAG):
            return self.type_name(size_type)
        if kind == KIND_PTR:
            return self.type_name(size_type) + " *"
        name = self.name(type_id)
        prefix = {KIND_STRUCT: "struct ", KIND_UNION: "union ", KIND_ENUM: "enum ",
                  KIND_ENUM64: "enum "}.get(kind, "")
        return prefix + name

    def enum(self, enum_name: str) -> dict[str, int]:
        """name -> value of every enumerator of `enum enum_name`."""
        type_id = self.find(enum_name, (KIND_ENUM, KIND_ENUM64))
        btf = self._owner(type_id)
        pos, _, kind, vlen, _ = self._header(type_id)
        info = struct.unpack_from("<I", btf._data, pos + 4)[0]
        signed = bool(info >> 31)
        out = {}
        for i in range(vlen):
            if kind == KIND_ENUM:
                name_off, val = struct.unpack_from("<Ii" if signed else "<II", btf._data, pos + 12 + 8 * i)
            else:
                name_off, lo, hi = struct.unpack_from("<III", btf._data, pos + 12 + 12 * i)
                val = (hi << 32) | lo
            out[btf._str(name_off)] = val
        return out


@functools.lru_cache(maxsize=1)
def load_vmlinux() -> BTF:
    """The running kernel's BTF, read once per process (it cannot change
    while the kernel runs; the probe and the program build both need it)."""
    return BTF.load("/sys/kernel/btf/vmlinux")


@functools.lru_cache(maxsize=4)
def load_module(name: str, base: BTF) -> BTF | None:
    """A module's split BTF (e.g. ip_vs), or None when the module is not
    loaded; read once per start (the probe and the program build both need
    it; `TraceSession.start` forgets it, as it does vmlinux's)."""
    path = f"/sys/kernel/btf/{name}"
    if not os.path.exists(path):
        return None
    return BTF.load(path, base=base)
