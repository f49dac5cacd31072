"""Other kernels under virtme-ng: Debian's 5.10, 6.1 and 6.12, with IPVS and kprobes.

This machine's kernel has neither IPVS nor kprobes. Debian 12 ships two
kernel lines that have both, and Debian 11 a third (5.10, fetched from
Debian 11's archive with a source list used for that download only), each
with its exact headers (bcc compiles against them). `fetch()` downloads the
image and headers packages with apt-get and unpacks them (dpkg -x, nothing
is installed) under /var/cache/rsttrace-vm/<release>/root; `run()` boots that kernel with
virtme-ng on a read-only view of this machine's filesystem and runs one
command in it, returning its exit code and output.

Inside the guest virtme-ng puts a tmpfs over /var/cache (and over
/lib/modules, with a link to the kernel's modules), so the guest's first
step is to lift that tmpfs again: the unpacked kernel then appears at the
same absolute path as on the host, and the `build`/`source` links made here
next to its modules lead bcc to its headers.

KVM is not used: on this machine class qemu fails on MSR setup with it, and
TCG boots the guest in a few seconds (BPF compiles ~50x slower, still fine).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CACHE = Path("/var/cache/rsttrace-vm")
# kernel line -> (the meta-package whose dependency names its newest
# release, the Debian archive it comes from: None for this machine's own
# sources, else a key of ARCHIVES)
KERNEL_LINES = {
    "5.10": ("linux-image-amd64", "bullseye"),
    "6.1": ("linux-image-amd64", None),
    "6.12": ("linux-image-6.12-amd64", None),
}
# Archives other than this machine's, used only to download a kernel: apt
# runs with a source list, package lists and cache of their own under
# CACHE/apt-<name>, so the machine's sources and package state stay as they
# are and nothing from there is installed.
ARCHIVES = {
    "bullseye": ("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
                 "http://deb.debian.org/debian bullseye main\n"
                 "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
                 "http://deb.debian.org/debian-security bullseye-security main\n"),
}
# an archive's package lists are read again after this long
ARCHIVE_LISTS_MAX_AGE_S = 6 * 3600
REPO = Path(__file__).resolve().parent.parent
GUEST_MEMORY = "2G"
GUEST_CPUS = 2
BOOT_TIMEOUT_S = 1500.0
BOOT_ATTEMPTS = 3


class VMError(Exception):
    """The VM could not be prepared or run; the message says what to do."""


@dataclass
class Kernel:
    line: str       # a key of KERNEL_LINES
    release: str    # uname -r inside the guest, e.g. 6.1.0-56-amd64

    @property
    def root(self) -> Path:
        return CACHE / self.release / "root"

    @property
    def image(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def moddir(self) -> Path:
        return self.root / "lib" / "modules" / self.release

    @property
    def headers(self) -> Path:
        return self.root / "usr" / "src" / f"linux-headers-{self.release}"

    @property
    def ready(self) -> bool:
        return (self.image.is_file() and (self.moddir / "modules.dep").is_file()
                and (self.moddir / "build").is_symlink() and (self.headers / ".config").is_file())


@dataclass
class Result:
    kernel: Kernel
    returncode: int
    output: str
    seconds: float
    # boots that died before the command started, each with its console
    boot_failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def _run(cmd: list[str], timeout: float = 600.0, cwd: Path | None = None) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except FileNotFoundError:
        raise VMError(f"{cmd[0]} not found: run scripts/vm/provision.sh (it installs what the VM needs)") from None
    except subprocess.TimeoutExpired:
        raise VMError(f"`{shlex.join(cmd)}` did not finish in {timeout:.0f} s") from None
    if p.returncode != 0:
        raise VMError(f"`{shlex.join(cmd)}` failed: {(p.stderr or p.stdout).strip()[-600:]}")
    return p.stdout


def apt_options(archive: str | None) -> list[str]:
    """apt-get/apt-cache options for `archive` (ARCHIVES): its own source
    list (and no /etc/apt/sources.list.d), package lists and cache. [] for
    this machine's own sources."""
    if archive is None:
        return []
    base = CACHE / f"apt-{archive}"
    for d in (base / "lists" / "partial", base / "cache" / "archives" / "partial"):
        d.mkdir(parents=True, exist_ok=True)
    sources = base / "sources.list"
    if not sources.is_file() or sources.read_text() != ARCHIVES[archive]:
        sources.write_text(ARCHIVES[archive])
    return ["-o", f"Dir::Etc::SourceList={sources}", "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={base / 'lists'}", "-o", f"Dir::Cache={base / 'cache'}"]


def _update_archive(archive: str, opts: list[str]) -> None:
    """Read `archive`'s package lists, unless read within
    ARCHIVE_LISTS_MAX_AGE_S (a vm tier run asks twice: provisioning, then
    the tests)."""
    # apt dates the lists it fetched as the server does: a stamp of our own
    stamp = CACHE / f"apt-{archive}" / "updated"
    try:
        if time.time() - stamp.stat().st_mtime < ARCHIVE_LISTS_MAX_AGE_S:
            return
    except OSError:
        pass
    _run(["apt-get", "-q", *opts, "update"], timeout=600)
    stamp.touch()


def resolve(line: str) -> Kernel:
    """The newest Debian release of a kernel line, from the apt metadata
    (`apt-cache depends` of the line's meta-package)."""
    if line not in KERNEL_LINES:
        raise VMError(f"unknown kernel {line!r}: choose one of {', '.join(KERNEL_LINES)}")
    meta, archive = KERNEL_LINES[line]
    opts = apt_options(archive)
    if archive is not None:
        _update_archive(archive, opts)
    out = _run(["apt-cache", *opts, "depends", meta], timeout=60)
    m = re.search(r"Depends:\s+linux-image-(\S+-amd64)\b", out)
    if not m:
        raise VMError(f"apt-cache knows no release for {meta}: run `apt-get update` "
                      f"(Debian {archive or 'bookworm'} sources are needed)")
    k = Kernel(line, m.group(1))
    if not k.release.startswith(line + "."):
        raise VMError(f"{meta} names {k.release}, not a {line} kernel")
    return k


def cached(line: str) -> Kernel | None:
    """A kernel of this line already unpacked (newest first), without apt."""
    if not CACHE.is_dir():
        return None
    # 6.1's releases look like 6.1.0-56-amd64, 6.12's 6.12.57+deb12-amd64:
    # the line and a dot, then a number, so "6.1." never takes 6.12's
    pat = re.compile(rf"^{re.escape(line)}\.\d+[-+]")
    found = [Kernel(line, d.name) for d in CACHE.iterdir() if pat.match(d.name)]
    found = [k for k in found if k.ready]
    return max(found, key=lambda k: [int(x) for x in re.findall(r"\d+", k.release)], default=None)


def fetch(line: str, say=lambda m: None) -> Kernel:
    """Download and unpack a kernel line's image and headers (idempotent)."""
    if os.geteuid() != 0:
        raise VMError("preparing a VM kernel needs root (apt-get, depmod): run it with sudo")
    k = resolve(line)
    if k.ready:
        return k
    opts = apt_options(KERNEL_LINES[line][1])
    debs = CACHE / k.release / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    pkgs = [f"linux-image-{k.release}", f"linux-headers-{k.release}",
            "linux-headers-" + k.release.removesuffix("-amd64") + "-common"]
    have = {p.name.split("_")[0] for p in debs.glob("*.deb")}
    want = [p for p in pkgs if p not in have]
    if want:
        say(f"downloading {', '.join(want)}")
        _run(["apt-get", *opts, "download", *want], timeout=1200, cwd=debs)
    tmp = Path(tempfile.mkdtemp(prefix="root.", dir=CACHE / k.release))
    try:
        for deb in sorted(debs.glob("*.deb")):
            _run(["dpkg-deb", "-x", str(deb), str(tmp)], timeout=600)
        if k.root.exists():
            shutil.rmtree(k.root)
        tmp.rename(k.root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not k.image.is_file():
        raise VMError(f"{k.image} missing after unpacking: the image package changed layout")
    say(f"depmod {k.release}")
    _run(["depmod", "-b", str(k.root), k.release], timeout=300)
    # bcc compiles against /lib/modules/<release>/build (and source). The
    # links are absolute and valid both here and in the guest, where this
    # cache shows at the same path.
    common = k.root / "usr" / "src" / ("linux-headers-" + k.release.removesuffix("-amd64") + "-common")
    for name, target in (("build", k.headers), ("source", common)):
        link = k.moddir / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    for d in debs.glob("*.deb"):   # unpacked: the packages are not needed again
        d.unlink()
    if not k.ready:
        raise VMError(f"kernel {k.release} incomplete after unpacking under {k.root}")
    return k


def kernel_for(line: str, say=lambda m: None, offline_ok: bool = True) -> Kernel:
    """A ready kernel of this line: fetched, or from the cache when apt has
    no network."""
    try:
        return fetch(line, say)
    except VMError:
        k = cached(line) if offline_ok else None
        if k is None:
            raise
        return k


def vng_binary() -> str:
    # the venv's console script sits next to its python
    cand = Path(sys.executable).parent / "vng"
    if cand.exists():
        return str(cand)
    found = shutil.which("vng")
    if not found:
        raise VMError("virtme-ng is not installed: run scripts/vm/provision.sh "
                      "(pip install virtme-ng into the venv, qemu-system-x86 from Debian)")
    return found


# Run first inside the guest, as root, before the user's command. The
# command's output and exit code go to a directory shared with the host
# (virtme-ng's own stdio ports need udev in the guest, which this machine
# class does not have; the console still shows the output live).
GUEST_SCRIPT = """\
: > {out}/started
umount /var/cache 2>/dev/null   # virtme-ng's tmpfs hides the unpacked kernel
if ! test -d {moddir}/kernel; then
    echo "rsttrace-vm: {moddir} not visible in the guest" > {out}/output; echo 97 > {out}/rc; exit 97
fi
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing
mkdir -p /run/netns
# loaded before the command: under emulation a module's first load (nftables
# with NAT above all) can outlast a lab command's time limit
modprobe -a ip_vs nf_conntrack nf_tables nft_chain_nat
cd {repo}
export PYTHONDONTWRITEBYTECODE=1 RSTTRACE_VM_KERNEL={line} RSTTRACE_VM_OUT={out}
( {command}
) 2>&1 | tee {out}/output
echo "${{PIPESTATUS[0]}}" > {out}/rc.tmp && mv {out}/rc.tmp {out}/rc
"""
KMSG = re.compile(r"^\[\s*\d+\.\d+\] ")


def guest_script(k: Kernel, command: str, out: Path) -> str:
    q = shlex.quote
    return GUEST_SCRIPT.format(moddir=q(str(k.moddir)), repo=q(str(REPO)), line=k.line,
                               out=q(str(out)), command=command)


def run(k: Kernel, command: str, timeout_s: float = BOOT_TIMEOUT_S,
        memory: str = GUEST_MEMORY, cpus: int = GUEST_CPUS, stream=None) -> Result:
    """Boot `k`, run the shell `command` as root in the repository, power off.
    `stream`, when given, receives the guest's console output line by line
    (kernel log lines left out).

    A guest kernel that dies while booting, before the command has started
    (a panic in early boot under TCG: once in CI's ~30 boots so far, none in
    54 boots here), is booted again, up to BOOT_ATTEMPTS boots in all, all
    within `timeout_s`; each such boot is in `Result.boot_failures`. A
    guest that dies after the command started is an error at once: the
    command may be what brought it down."""
    if os.geteuid() != 0:
        raise VMError("booting a VM kernel needs root: run it with sudo")
    if not k.ready:
        raise VMError(f"kernel {k.release} is not prepared: run `scripts/vm/provision.sh` "
                      f"or lab.vm.fetch({k.line!r}) first")
    for tool, pkg in (("qemu-system-x86_64", "qemu-system-x86"), ("busybox", "busybox-static")):
        if shutil.which(tool) is None:
            raise VMError(f"{tool} not found: apt-get install {pkg} (scripts/vm/provision.sh does it)")
    t0 = time.monotonic()
    failures: list[str] = []
    while True:
        out = Path(tempfile.mkdtemp(prefix="rsttrace-vm-", dir="/tmp"))
        try:
            code, console = _boot(k, command, out, t0, timeout_s, memory, cpus, stream)
            try:
                rc = int((out / "rc").read_text().strip())
            except (OSError, ValueError):
                why = f"the {k.release} guest ended (vng exit {code})"
                if (out / "started").exists():
                    raise VMError(f"{why} while running the command; console: {_tail(console)}") from None
                failures.append(f"{why} while booting: {_tail(console)}")
                if len(failures) < BOOT_ATTEMPTS:
                    continue
                raise VMError(f"{why} while booting, before the command started, "
                              f"{len(failures)} times; console: {_tail(console)}") from None
            try:
                output = (out / "output").read_text(errors="replace")
            except OSError:
                output = ""
            return Result(k, rc, output, time.monotonic() - t0, failures)
        finally:
            shutil.rmtree(out, ignore_errors=True)


def _boot(k: Kernel, command: str, out: Path, t0: float, timeout_s: float, memory: str,
          cpus: int, stream) -> tuple[int | None, list[str]]:
    """One boot, to end by `t0 + timeout_s`: vng's exit code and the
    console's lines."""
    script = out / "guest.sh"
    script.write_text(guest_script(k, command, out))
    cmd = [vng_binary(), "--run", str(k.image), "--disable-kvm", "--user", "root",
           "--memory", memory, "--cpus", str(cpus), "--cwd", str(REPO), "--rwdir", str(out),
           "--force-9p", "--verbose", "--exec", f"bash {shlex.quote(str(script))}"]
    console: list[str] = []
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, errors="replace",
                                start_new_session=True, env=_env())
    except OSError as e:
        raise VMError(f"cannot start virtme-ng: {e}") from None
    deadline = t0 + timeout_s
    try:
        _pump(proc, deadline, console, stream)
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise VMError(f"the {k.release} guest did not finish in {timeout_s:.0f} s "
                      f"(last output: {_tail(console)})") from None
    except BaseException:
        _kill(proc)
        raise
    return proc.returncode, console


# the lines of a kernel oops or panic that say what happened and where
OOPS = re.compile(r"BUG:|Oops|general protection|Kernel panic|RIP: |unable to handle|"
                  r"invalid opcode|Call Trace")


def _tail(console: list[str], n: int = 8) -> str:
    """The console's last lines, after the lines of an oops or panic if it
    has one (those scroll away behind the register dump)."""
    oops = [line.strip() for line in console if OOPS.search(line)][:6]
    last = [line.strip() for line in console[-n:] if line.strip() not in oops]
    return " | ".join(oops + last)[-1600:]


def _env() -> dict[str, str]:
    # vng calls virtme-run by name: the venv's bin must be on PATH
    env = dict(os.environ)
    env["PATH"] = str(Path(vng_binary()).parent) + os.pathsep + env.get("PATH", "/usr/bin:/bin")
    return env


def _pump(proc: subprocess.Popen, deadline: float, lines: list[str], stream) -> None:
    """Read the guest's output until it ends or the deadline passes (a
    reader thread, so a silent hung guest cannot block past the deadline)."""
    import threading

    def reader() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if stream is not None and not KMSG.match(line):
                stream(line)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(max(0.0, deadline - time.monotonic()))
    if t.is_alive():
        raise subprocess.TimeoutExpired("vng", 0)


def _kill(proc: subprocess.Popen) -> None:
    """qemu runs in the session started for vng: stop the whole group."""
    try:
        os.killpg(proc.pid, 9)
    except ProcessLookupError:
        pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
