"""The few bpf(2) and ring-buffer operations the tracer needs after loading,
without bcc: bcc (and the LLVM inside it) stays in the short-lived loader
process, so the long-running consumer keeps a small footprint.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct

import numpy as np

from .events import take

_libc = ctypes.CDLL(None, use_errno=True)
NR_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine, 321)
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_OBJ_GET_INFO_BY_FD = 15

# include/uapi/linux/bpf.h: ring buffer record header bits (stable UAPI)
BPF_RINGBUF_BUSY_BIT = 1 << 31
BPF_RINGBUF_DISCARD_BIT = 1 << 30
BPF_RINGBUF_HDR_SZ = 8


class BPFSysError(OSError):
    pass


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    ret = _libc.syscall(NR_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise BPFSysError(err, os.strerror(err))
    return ret


def possible_cpus() -> int:
    """Per-CPU maps hold one value per *possible* CPU."""
    text = open("/sys/devices/system/cpu/possible").read().strip()
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n += (int(hi) if hi else int(lo)) - int(lo) + 1
    return n


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes:
    kbuf = ctypes.create_string_buffer(key, len(key))
    vbuf = ctypes.create_string_buffer(value_size)
    # union bpf_attr { u32 map_fd; u64 key; u64 value; u64 flags; }
    attr = (ctypes.c_uint64 * 4)()
    attr[0] = fd
    attr[1] = ctypes.addressof(kbuf)
    attr[2] = ctypes.addressof(vbuf)
    _bpf(BPF_MAP_LOOKUP_ELEM, attr)
    return vbuf.raw


def map_update(fd: int, key: bytes, value: bytes) -> None:
    kbuf = ctypes.create_string_buffer(key, len(key))
    vbuf = ctypes.create_string_buffer(value, len(value))
    attr = (ctypes.c_uint64 * 4)()   # flags 0: BPF_ANY
    attr[0] = fd
    attr[1] = ctypes.addressof(kbuf)
    attr[2] = ctypes.addressof(vbuf)
    _bpf(BPF_MAP_UPDATE_ELEM, attr)


def map_delete(fd: int, key: bytes) -> None:
    kbuf = ctypes.create_string_buffer(key, len(key))
    attr = (ctypes.c_uint64 * 4)()
    attr[0] = fd
    attr[1] = ctypes.addressof(kbuf)
    _bpf(BPF_MAP_DELETE_ELEM, attr)


def map_keys(fd: int, key_size: int) -> list[bytes]:
    """Every key of a hash map, as it is now (keys added meanwhile may or
    may not be among them)."""
    out: list[bytes] = []
    cur = None
    nbuf = ctypes.create_string_buffer(key_size)
    while True:
        attr = (ctypes.c_uint64 * 4)()
        attr[0] = fd
        if cur is not None:
            kbuf = ctypes.create_string_buffer(cur, key_size)
            attr[1] = ctypes.addressof(kbuf)
        attr[2] = ctypes.addressof(nbuf)
        try:
            _bpf(BPF_MAP_GET_NEXT_KEY, attr)
        except BPFSysError as e:
            if e.errno == errno.ENOENT:
                return out
            raise
        cur = nbuf.raw
        out.append(cur)


class _ProgLoadAttr(ctypes.Structure):
    """union bpf_attr as BPF_PROG_LOAD reads it (stable UAPI, up to
    attach_prog_fd; the kernel takes the rest as zero)."""
    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32),
                ("insns", ctypes.c_uint64), ("license", ctypes.c_uint64),
                ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32),
                ("prog_flags", ctypes.c_uint32), ("prog_name", ctypes.c_char * 16),
                ("prog_ifindex", ctypes.c_uint32), ("expected_attach_type", ctypes.c_uint32),
                ("prog_btf_fd", ctypes.c_uint32), ("func_info_rec_size", ctypes.c_uint32),
                ("func_info", ctypes.c_uint64), ("func_info_cnt", ctypes.c_uint32),
                ("line_info_rec_size", ctypes.c_uint32), ("line_info", ctypes.c_uint64),
                ("line_info_cnt", ctypes.c_uint32), ("attach_btf_id", ctypes.c_uint32),
                ("attach_prog_fd", ctypes.c_uint32), ("_rest", ctypes.c_uint8 * 64)]


def load_btf_tracepoint(insns: bytes, name: str, btf_id: int, abi: dict[str, int],
                        log_size: int = 1 << 20, attach_type: str = "BPF_TRACE_RAW_TP") -> int:
    """Load `insns` as a BTF tracepoint program (BPF_PROG_TYPE_TRACING,
    attach type BPF_TRACE_RAW_TP) for the tracepoint whose btf_trace_*
    typedef is `btf_id`; with attach_type BPF_TRACE_FEXIT, for the return of
    the kernel function whose BTF FUNC is `btf_id`. `abi` holds the enum
    values, read from BTF by the caller. On refusal the verifier's last
    words are in the error."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    attr = _ProgLoadAttr()
    attr.prog_type = abi["BPF_PROG_TYPE_TRACING"]
    attr.expected_attach_type = abi[attach_type]
    attr.attach_btf_id = btf_id
    attr.insn_cnt = len(insns) // 8
    attr.insns = ctypes.addressof(code)
    attr.license = ctypes.addressof(lic)
    attr.prog_name = name.encode()[:15]
    try:
        return _bpf(abi["BPF_PROG_LOAD"], attr)
    except OSError as first:
        log = ctypes.create_string_buffer(log_size)  # again, with the verifier's log
        attr.log_level, attr.log_size, attr.log_buf = 1, log_size, ctypes.addressof(log)
        try:
            return _bpf(abi["BPF_PROG_LOAD"], attr)
        except OSError:
            tail = log.value.decode(errors="replace").strip().splitlines()[-6:]
            raise BPFSysError(first.errno, f"{first.strerror}: " + " | ".join(tail)) from None


# include/uapi/linux/bpf.h: a call instruction's src_reg for a kfunc call
BPF_PSEUDO_KFUNC_CALL = 2
_BPF_CALL = 0x85  # BPF_JMP | BPF_CALL


def as_kfunc_calls(insns: bytes, kfuncs: list[int] | tuple[int, ...]) -> bytes:
    """`insns` with every helper call whose number is one of `kfuncs` (BTF
    FUNC ids of vmlinux kfuncs) made a call of that kfunc: the programs
    write a kfunc call as a helper call with the kfunc's id, which bcc
    compiles but cannot mark. offsets.rdonly_cast_ids makes sure such an
    id is above every helper's number, so no helper call is taken for one."""
    wanted = set(kfuncs)
    out = bytearray(insns)
    for i in range(0, len(out) - 7, 8):
        if (out[i] == _BPF_CALL and out[i + 1] >> 4 == 0
                and int.from_bytes(out[i + 4:i + 8], "little", signed=True) in wanted):
            out[i + 1] = (out[i + 1] & 0x0F) | (BPF_PSEUDO_KFUNC_CALL << 4)  # off 0: vmlinux
    return bytes(out)


def attach_btf_tracepoint(prog_fd: int, abi: dict[str, int]) -> int:
    """Attach a loaded BTF tracepoint program; the returned descriptor keeps
    it attached (BPF_RAW_TRACEPOINT_OPEN with no name: the program's
    attach_btf_id names the tracepoint, or the function of an fexit)."""
    # union bpf_attr { u64 name; u32 prog_fd; ... }
    attr = (ctypes.c_uint64 * 3)()
    attr[1] = prog_fd
    return _bpf(abi["BPF_RAW_TRACEPOINT_OPEN"], attr)


def prog_info(fd: int, size: int) -> bytes:
    """The first `size` bytes of a program's struct bpf_prog_info (field
    offsets from BTF)."""
    info = ctypes.create_string_buffer(size)
    # union bpf_attr { u32 bpf_fd; u32 info_len; u64 info; }
    attr = (ctypes.c_uint32 * 4)()
    attr[0] = fd
    attr[1] = len(info)
    ptr = ctypes.addressof(info)
    attr[2], attr[3] = ptr & 0xFFFFFFFF, ptr >> 32
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    return info.raw


def prog_info_u64(fd: int, offset: int) -> int:
    """A u64 of a program's struct bpf_prog_info, at `offset` (from BTF)."""
    return struct.unpack_from("<Q", prog_info(fd, offset + 8), offset)[0]


def enable_stats(cmd: int, stats_type: int) -> int:
    """bpf(BPF_ENABLE_STATS): the kernel counts every program's runs and
    their time while the returned descriptor is open; closing it (or the
    process ending) turns that off again. `cmd` and `stats_type` are the
    kernel's enum values (bpf_cmd, bpf_stats_type) from BTF."""
    return _bpf(cmd, (ctypes.c_uint32 * 1)(stats_type))


def percpu_u64_sums(fd: int, keys: range) -> list[int]:
    """Per-CPU u64 array: the sum over CPUs of each key."""
    n = possible_cpus()
    out = []
    for key in keys:
        raw = map_lookup(fd, struct.pack("<I", key), 8 * n)
        out.append(sum(struct.unpack(f"<{n}Q", raw)))
    return out


def percpu_u64_sum(fd: int, key: int = 0) -> int:
    n = possible_cpus()
    raw = map_lookup(fd, struct.pack("<I", key), 8 * n)
    return sum(struct.unpack(f"<{n}Q", raw))


class RingReader:
    """Reads a BPF ring buffer map through its mmap'ed pages, a batch at a
    time, with no callback per event.

    Layout (kernel/bpf/ringbuf.c): page 0 holds consumer_pos (writable by
    us); page 1 producer_pos; then the data area, mapped twice in a row so
    a record that wraps is contiguous. Every record here is one
    `struct rst_event`, so a batch is a strided numpy view.
    """

    def __init__(self, map_fd: int, data_size: int, record_dtype: np.dtype):
        self.page = mmap.PAGESIZE
        self.size = data_size
        self.mask = data_size - 1
        self.rec_len = record_dtype.itemsize
        # each record: 8-byte header, then the event, rounded up to 8
        self.stride = (BPF_RINGBUF_HDR_SZ + self.rec_len + 7) & ~7
        self.dtype = np.dtype({"names": ["len", "ev"],
                               "formats": ["<u4", record_dtype],
                               "offsets": [0, BPF_RINGBUF_HDR_SZ],
                               "itemsize": self.stride})
        self._cons = mmap.mmap(map_fd, self.page, mmap.MAP_SHARED,
                               mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._prod = mmap.mmap(map_fd, self.page + 2 * data_size, mmap.MAP_SHARED,
                               mmap.PROT_READ, offset=self.page)
        self._data = np.frombuffer(self._prod, dtype=np.uint8, offset=self.page)

    def close(self) -> None:
        self._data = None
        for m in (self._cons, self._prod):
            try:
                m.close()
            except BufferError:
                pass

    def read(self, max_records: int = 1 << 20) -> np.ndarray:
        """Committed records since the last call, copied out (the space is
        released to the kernel before returning)."""
        cons = struct.unpack_from("<Q", self._cons, 0)[0]
        prod = struct.unpack_from("<Q", self._prod, 0)[0]
        avail = min((prod - cons) // self.stride, max_records)
        if avail <= 0:
            return np.empty(0, dtype=self.dtype.fields["ev"][0])
        start = cons & self.mask
        view = np.frombuffer(self._data, dtype=self.dtype, count=avail, offset=start)
        lens = view["len"]
        busy = np.flatnonzero(lens & BPF_RINGBUF_BUSY_BIT)
        n = int(busy[0]) if len(busy) else avail
        batch = view["ev"][:n].copy()
        discard = (lens[:n] & BPF_RINGBUF_DISCARD_BIT) != 0
        if discard.any():
            batch = batch[~discard]
        struct.pack_into("<Q", self._cons, 0, cons + n * self.stride)
        return batch



def percpu_slot_dtype(record_dtype: np.dtype) -> np.dtype:
    """struct pc_slot (bpf/rsttrace.bpf.c): seq, pos, then the event."""
    return np.dtype({"names": ["seq", "pos", "ev"], "formats": ["<u8", "<u8", record_dtype],
                     "offsets": [0, 8, 16], "itemsize": (16 + record_dtype.itemsize + 7) & ~7})


# struct pc_pos: one 64-byte line per CPU
PERCPU_POS_DTYPE = np.dtype({"names": ["head", "tail"], "formats": ["<u8", "<u8"],
                             "offsets": [0, 8], "itemsize": 64})


class PerCPURingReader:
    """Reads the programs' per-CPU rings (bpf/rsttrace.bpf.c, USE_PCRING):
    `ring` holds cpus x slots slots of {seq, pos, event}, `pos` a {head,
    tail} line per CPU; `open` maps them from their array maps.

    A slot at position p is complete once its seq is p + 1; each CPU's
    slots are taken from its tail up to the first incomplete one (a
    program still writing it), copied out, and the tail is moved past them,
    which hands the slots back. The batch is put in time order across CPUs.
    """

    def __init__(self, ring: np.ndarray, pos: np.ndarray, slots: int, maps=()):
        self._ring, self._pos, self.slots = ring, pos, slots
        self.record_dtype = ring.dtype.fields["ev"][0]
        self._maps = list(maps)
        self._first = 0   # the CPU read first; moves on when a read is cut short

    @classmethod
    def open(cls, ring_fd: int, pos_fd: int, cpus: int, slots: int,
             record_dtype: np.dtype) -> "PerCPURingReader":
        slot = percpu_slot_dtype(record_dtype)
        page = mmap.PAGESIZE
        ring_map = mmap.mmap(ring_fd, -(-slot.itemsize * cpus * slots // page) * page,
                             mmap.MAP_SHARED, mmap.PROT_READ)
        pos_map = mmap.mmap(pos_fd, -(-PERCPU_POS_DTYPE.itemsize * cpus // page) * page,
                            mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        return cls(np.frombuffer(ring_map, dtype=slot, count=cpus * slots),
                   np.frombuffer(pos_map, dtype=PERCPU_POS_DTYPE, count=cpus), slots,
                   (ring_map, pos_map))

    def close(self) -> None:
        self._ring = self._pos = None
        for m in self._maps:
            try:
                m.close()
            except BufferError:
                pass
        self._maps = []

    def read(self, max_records: int = 1 << 20) -> np.ndarray:
        """Published events since the last call, copied out (their slots
        are handed back to the programs before returning). The slots to
        take are found first; their events are then copied once, already in
        time order and without those the programs' filters refused."""
        heads = self._pos["head"].copy()
        tails = self._pos["tail"]
        if (heads == tails).all():
            # nothing published: the common case between storms, read fifty
            # times a second (a few microseconds instead of some eighty)
            return np.empty(0, dtype=self.record_dtype)
        taken = []    # (cpu, new tail)
        spans = []    # slot numbers to copy, per CPU
        budget = max_records
        pending = np.flatnonzero(heads != tails)
        # from where the last cut-short read stopped, so a CPU with more than
        # a batch waiting cannot starve the others
        pending = np.roll(pending, -int(np.searchsorted(pending, self._first)))
        self._first = 0
        seq = self._ring["seq"]
        for cpu in pending:
            if budget <= 0:
                self._first = int(cpu)
                break
            tail = int(tails[cpu])
            n = min(int(heads[cpu]) - tail, budget)
            base = int(cpu) * self.slots
            slots = base + (np.arange(tail, tail + n, dtype=np.uint64) % self.slots).astype(np.intp)
            done = seq[slots] == np.arange(tail + 1, tail + n + 1, dtype=np.uint64)
            if not done.all():
                n = int(np.argmin(done))
                slots = slots[:n]
            if n:
                spans.append(slots)
                taken.append((cpu, tail + n))
                budget -= n
        if not spans:
            return np.empty(0, dtype=self.record_dtype)
        slots = np.concatenate(spans) if len(spans) > 1 else spans[0]
        ev = self._ring["ev"]
        slots = slots[ev["kind"][slots] != 0]   # refused by the program's own filters
        if len(spans) > 1:
            slots = slots[np.argsort(ev["ts_ns"][slots], kind="stable")]
        batch = take(self._ring, slots, "ev")
        for cpu, tail in taken:
            tails[cpu] = tail
        return batch
