"""Facts about the running kernel: tracefs, tracepoint formats and their
symbolic tables, kernel headers for bcc, HZ, kprobe-able symbols.
"""

from __future__ import annotations

import bisect
import functools
import glob
import gzip
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

TRACEFS = Path("/sys/kernel/tracing")


class KernelError(Exception):
    pass


def ensure_tracefs() -> tuple[bool, str]:
    """Mount tracefs when it is missing (it is not mounted at boot on some
    kernels). Returns (available, note)."""
    if (TRACEFS / "events").is_dir():
        return True, "tracefs mounted"
    if os.geteuid() != 0:
        return False, "tracefs not mounted (needs root to mount)"
    r = subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)],
                       capture_output=True, text=True)
    if r.returncode == 0 and (TRACEFS / "events").is_dir():
        return True, f"tracefs was not mounted: mounted it at {TRACEFS}"
    return False, (f"tracefs is not mounted at {TRACEFS} and mounting it failed "
                   f"({r.stderr.strip() or f'mount exit {r.returncode}'}): mount the host's {TRACEFS} "
                   "into the container (a hostPath volume), or give it CAP_SYS_ADMIN to mount it")


@dataclass
class Tracepoint:
    group: str
    name: str
    fields: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (offset, size)
    symbols: dict[str, dict[int, str]] = field(default_factory=dict)  # field -> value -> name

    @property
    def full(self) -> str:
        return f"{self.group}:{self.name}"


_FIELD_RE = re.compile(r"field:(?P<decl>[^;]+);\s*offset:(?P<off>\d+);\s*size:(?P<size>\d+);")
_SYM_RE = re.compile(r"__print_symbolic\(REC->(\w+),\s*((?:\{\s*-?\d+,\s*\"[^\"]*\"\s*\},?\s*)+)\)")
_PAIR_RE = re.compile(r"\{\s*(-?\d+),\s*\"([^\"]*)\"\s*\}")


def parse_format(group: str, name: str, text: str) -> Tracepoint:
    tp = Tracepoint(group, name)
    for m in _FIELD_RE.finditer(text):
        decl = m.group("decl").strip()
        fname = re.split(r"[\s*]+", re.sub(r"\[[^\]]*\]", "", decl).strip())[-1]
        if fname.startswith("common_"):
            continue
        tp.fields[fname] = (int(m.group("off")), int(m.group("size")))
    for m in _SYM_RE.finditer(text):
        table = {int(v): s for v, s in _PAIR_RE.findall(m.group(2))}
        tp.symbols.setdefault(m.group(1), {}).update(table)
    return tp


def tracepoint(group: str, name: str) -> Tracepoint | None:
    path = TRACEFS / "events" / group / name / "format"
    try:
        return parse_format(group, name, path.read_text())
    except OSError:
        return None


def tcp_states() -> dict[int, str]:
    """The kernel's TCP states, value -> name ("TCP_ESTABLISHED"), from its
    own table in the tracefs format of sock:inet_sock_set_state (or of
    tcp:tcp_send_reset); empty when neither has one."""
    for group, name, fld in (("sock", "inet_sock_set_state", "newstate"),
                             ("tcp", "tcp_send_reset", "state")):
        tp = tracepoint(group, name)
        table = tp.symbols.get(fld, {}) if tp else {}
        if table:
            return table
    return {}


def kernel_config() -> dict[str, str]:
    """CONFIG_* values from /proc/config.gz or /boot/config-$(uname -r)."""
    text = ""
    try:
        with gzip.open("/proc/config.gz", "rt") as fh:
            text = fh.read()
    except OSError:
        try:
            text = Path(f"/boot/config-{os.uname().release}").read_text()
        except OSError:
            return {}
    out = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            k, v = line.split("=", 1)
            out[k] = v.strip('"')
    return out


def kernel_hz(config: dict[str, str] | None = None) -> int:
    """The kernel's HZ, to turn jiffies into time. From the kernel config;
    without one, measured from the jiffies counter in /proc/timer_list."""
    config = kernel_config() if config is None else config
    if "CONFIG_HZ" in config:
        return int(config["CONFIG_HZ"])

    def jiffies() -> int:
        with open("/proc/timer_list") as fh:
            for line in fh:
                if line.startswith("jiffies:"):
                    return int(line.split()[1])
        raise KernelError("no jiffies in /proc/timer_list")
    t0, j0 = time.monotonic(), jiffies()
    time.sleep(0.2)
    t1, j1 = time.monotonic(), jiffies()
    rate = (j1 - j0) / (t1 - t0)
    return min((100, 250, 300, 1000), key=lambda hz: abs(hz - rate))


@dataclass
class Headers:
    build: str | None
    source: str | None
    note: str


def find_headers(release: str | None = None, fix: bool = True) -> Headers:
    """bcc compiles against /lib/modules/$(uname -r)/build. When the running
    kernel has no headers package (as here: a custom 6.18), use the newest
    installed Debian headers and link them in place. Safe because the
    programs take every struct offset and enum value from BTF, and
    tracepoint structs from tracefs: the headers only supply generic types."""
    release = release or os.uname().release
    moddir = Path("/lib/modules") / release
    build = moddir / "build"
    if build.exists():
        target = build.resolve()
        note = f"kernel headers for {release} at {target}"
        if release not in target.name:
            note = (f"no headers for {release}: using {target.name} (linked at {build}); "
                    "offsets and enum values come from BTF")
        return Headers(str(target), str((moddir / "source").resolve())
                       if (moddir / "source").exists() else None, note)
    candidates = sorted(glob.glob("/usr/src/linux-headers-*-amd64") +
                        glob.glob("/usr/src/linux-headers-*-arm64"),
                        key=_version_key, reverse=True)
    for arch_dir in candidates:
        common = re.sub(r"-(amd64|arm64)$", "-common", arch_dir)
        if not Path(common).is_dir():
            continue
        if not fix:
            return Headers(arch_dir, common, f"no headers for {release}; would use {arch_dir}")
        if os.geteuid() != 0:
            return Headers(None, None, f"no headers for {release}; {arch_dir} is installed "
                           "but linking it needs root")
        moddir.mkdir(parents=True, exist_ok=True)
        for link, target in ((build, arch_dir), (moddir / "source", common)):
            if not link.exists():
                if link.is_symlink():
                    link.unlink()
                link.symlink_to(target)
        return Headers(arch_dir, common,
                       f"no headers for {release}: using {Path(arch_dir).name} "
                       f"(linked {build} -> {arch_dir}); offsets come from BTF")
    return Headers(None, None, f"no kernel headers for {release} and none installed: "
                   "apt-get install linux-headers-amd64")


def exact_headers(release: str | None = None, modules: Path = Path("/lib/modules")) -> Path | None:
    """The headers of exactly the running kernel, where bcc compiles
    (/lib/modules/<release>/build), or None. Only those describe its
    structs as it was built: they count only when their generated
    utsrelease.h names this release (find_headers links another version's
    headers there when this kernel has none of its own)."""
    release = release or os.uname().release
    build = modules / release / "build"
    try:
        text = (build / "include" / "generated" / "utsrelease.h").read_text()
    except OSError:
        return None
    m = re.search(r'^#define UTS_RELEASE "([^"]*)"', text, re.MULTILINE)
    return build.resolve() if m and m.group(1) == release else None


def header_file(name: str, release: str | None = None, modules: Path = Path("/lib/modules")) -> Path | None:
    """include/<name> of the headers bcc compiles against for `release`:
    in /lib/modules/<release>/build or, as Debian splits its headers, in
    the -common tree its `source` link names."""
    moddir = modules / (release or os.uname().release)
    for tree in ("build", "source"):
        if (moddir / tree / "include" / name).is_file():
            return (moddir / tree / "include" / name).resolve()
    return None


def _version_key(path: str) -> tuple[int, ...]:
    m = re.search(r"linux-headers-(\d+)\.(\d+)\.(\d+)-(\d+)", path)
    return tuple(int(x) for x in m.groups()) if m else (0,)


def kprobes_available(config: dict[str, str]) -> tuple[bool, str]:
    if config and config.get("CONFIG_KPROBES") != "y":
        return False, "kernel built without CONFIG_KPROBES"
    if not (TRACEFS / "kprobe_events").exists():
        return False, "no kprobe_events in tracefs"
    return True, "kprobes available"


@functools.lru_cache(maxsize=16)
def ksym_address(name: str, path: str = "/proc/kallsyms") -> int | None:
    """The address of kernel symbol `name` (a function or, on kernels built
    with CONFIG_KALLSYMS_ALL, a variable), or None where it is not listed
    or its address is hidden (kptr_restrict, not root). Read once per
    process (the kernel makes the whole list, ~0.15 s; the probe and the
    program build both ask)."""
    try:
        with open(path) as fh:
            text = fh.read()
    except OSError:
        return None
    m = re.search(rf"^([0-9a-f]+) \w {re.escape(name)}$", text, re.MULTILINE)
    address = int(m.group(1), 16) if m else 0
    return address or None


@functools.lru_cache(maxsize=4)
def ksym_ranges(names: tuple[str, ...], path: str = "/proc/kallsyms") -> dict[str, tuple[int, int]]:
    """Where the kernel functions `names` lie: name -> (start, end), start
    their symbol's address and end the next symbol's, for each that
    /proc/kallsyms lists with an address (hidden ones, kptr_restrict or not
    root, are left out). A function's cold part (`NAME.cold`, code the
    compiler moved out of line) counts as a range of its own. Read once per
    process: kernel text does not move."""
    try:
        with open(path) as fh:
            text = fh.read()
    except OSError:
        return {}
    starts: dict[str, int] = {}
    for name in names:
        for sym in (name, f"{name}.cold"):
            m = re.search(rf"^([0-9a-f]+) [tT] {re.escape(sym)}(?:\t\[\w+\])?$", text, re.MULTILINE)
            if m and int(m.group(1), 16):
                starts[sym] = int(m.group(1), 16)
    if not starts:
        return {}
    # every symbol's address, in order: a function ends where the next one starts
    addrs = sorted({int(a, 16) for a in re.findall(r"^([0-9a-f]+) ", text, re.MULTILINE)})
    out = {}
    for sym, start in starts.items():
        i = bisect.bisect_right(addrs, start)
        if i < len(addrs):
            out[sym] = (start, addrs[i])
    return out


def kprobe_symbols(names) -> dict[str, bool]:
    """Which of `names` can take a kprobe (listed as traceable, or at least
    as a kernel symbol: not inlined). Each list is read at most once, and
    only while names are missing (a guest under emulation takes most of a
    second per read)."""
    found = dict.fromkeys(names, False)
    for path in (TRACEFS / "available_filter_functions", Path("/proc/kallsyms")):
        if all(found.values()):
            break
        try:
            with open(path) as fh:
                for line in fh:
                    parts = line.split()
                    sym = parts[0] if path.name.startswith("available") else (parts[2] if len(parts) > 2 else "")
                    if found.get(sym) is False:
                        found[sym] = True
        except OSError:
            continue
    return found
