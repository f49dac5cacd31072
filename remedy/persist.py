"""Persisted form of applied values, so they survive a reboot.

- values of the node's own namespace that are sysctls (conntrack max/buckets,
  timeouts, keepalive): `/etc/sysctl.d/99-rsttrace.conf`, applied at boot by
  systemd-sysctl (or `sysctl --system`); "99-" so it is read after others;
- buckets on kernels where only the module parameter is writable:
  `/etc/modprobe.d/99-rsttrace.conf` (`options nf_conntrack hashsize=N`);
- values of a named namespace (`/run/netns/NAME`) and IPVS timeouts (not
  sysctls) of any namespace: `/etc/rsttrace/netns.d/NAME.conf` (`init.conf`
  for the node's own namespace, so a namespace named "init" is not
  persisted), `key = value` lines; `--reapply` reads NAME only as
  /run/netns/NAME, never as a process id or the node. The oneshot unit
  `rsttrace-reapply.service` runs `rsttrace fix --reapply` at boot; run it again
  (e.g. from the hook that creates a namespace) for namespaces made later;
- namespaces known only by a process (pods) are not persisted: their
  persistent form is the pod's `securityContext.sysctls` hand-over.
rsttrace writes only these files, each atomically, and `--rollback` restores
each one exactly as it was.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rsttrace.remedy import keys as K
from rsttrace.remedy.files import FileState, atomic_write, read_regular
from rsttrace.remedy.model import Plan
from rsttrace.remedy.paths import Paths

# netns.d/init.conf holds the values of the node's own namespace (the one
# rsttrace runs in); every other NAME.conf is the namespace /run/netns/NAME.
NODE_FILE = "init"

HEADER = ("# Written by rsttrace (`rsttrace fix`); undo with `rsttrace fix --rollback`.\n"
          "# Edits here are overwritten by the next `rsttrace fix`.\n")


def parse_conf(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;" or "=" not in line:
            continue
        k, v = line.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def render_conf(values: dict[str, str]) -> str:
    return HEADER + "".join(f"{k} = {v}\n" for k, v in sorted(values.items()))


def _merged(path: Path, updates: dict[str, int]) -> str:
    cur = parse_conf(read_regular(path)) if path.exists() or path.is_symlink() else {}
    cur.update({k: str(v) for k, v in updates.items()})
    return render_conf(cur)


def unit_text() -> str:
    return ("[Unit]\n"
            "Description=Re-apply rsttrace per-namespace and IPVS settings\n"
            "After=network-online.target systemd-sysctl.service\n"
            "Wants=network-online.target\n\n"
            "[Service]\nType=oneshot\n"
            f"ExecStart={sys.executable} -m rsttrace fix --reapply\n\n"
            "[Install]\nWantedBy=multi-user.target\n")


def render(plan: Plan, paths: Paths) -> tuple[dict[Path, str], list[str]]:
    """Files to write (path -> full new text) and notes about values not persisted."""
    sysctl: dict[str, int] = {}
    modprobe: dict[str, int] = {}
    per_ns: dict[str, dict[str, int]] = {}
    notes: list[str] = []
    for c in plan.changes:
        t = c.target
        if c.via == "hashsize":
            modprobe["hashsize"] = c.new
        elif t.local and c.via == "sysctl":
            sysctl[c.key] = c.new
        elif t.kind == "name" and t.ref == NODE_FILE:
            notes.append(f"{c.key} in {t.label} is not persisted: {NODE_FILE}.conf is the "
                         "node's own file; a namespace of that name cannot have one")
        elif t.local or t.kind == "name":
            per_ns.setdefault(NODE_FILE if t.local else t.ref, {})[c.key] = c.new
        else:
            notes.append(f"{c.key} in {t.label} is not persisted (a process's namespace "
                         "has no name to find it by after a reboot); use the pod snippet")
    files: dict[Path, str] = {}
    if sysctl:
        files[paths.sysctl_conf] = _merged(paths.sysctl_conf, sysctl)
    if modprobe:
        # Only read when nf_conntrack is a module; a built-in one needs
        # nf_conntrack.hashsize=N on the kernel command line instead.
        files[paths.modprobe_conf] = (HEADER + f"options nf_conntrack hashsize={modprobe['hashsize']}\n")
    for name, vals in per_ns.items():
        p = paths.netns_dir / f"{name}.conf"
        files[p] = _merged(p, vals)
    if per_ns:
        files[paths.unit] = unit_text()
    return files, notes


def write(files: dict[Path, str], paths: Paths) -> None:
    for p, text in files.items():
        atomic_write(p, text)
    if paths.unit in files and not paths.unit_link.is_symlink():
        # What `systemctl enable` does, without needing a running systemd.
        paths.unit_link.parent.mkdir(parents=True, exist_ok=True)
        paths.unit_link.symlink_to(paths.unit)


def touched(files: dict[Path, str], paths: Paths) -> list[Path]:
    out = list(files)
    if paths.unit in files:
        out.append(paths.unit_link)
    return out


def snapshot(files: dict[Path, str], paths: Paths) -> list[FileState]:
    return [FileState.capture(p) for p in touched(files, paths)]


def read_netns_confs(paths: Paths) -> tuple[dict[str, dict[str, int]], list[str]]:
    """NAME -> values of every netns.d/NAME.conf, and the files that could
    not be read (one line each)."""
    out: dict[str, dict[str, int]] = {}
    problems: list[str] = []
    if not paths.netns_dir.is_dir():
        return out, problems
    for p in sorted(paths.netns_dir.glob("*.conf")):
        try:
            text = read_regular(p)
        except OSError as e:
            problems.append(f"cannot read {p}: {e.strerror or e}")
            continue
        vals = {}
        for k, v in parse_conf(text).items():
            try:
                vals[K.canonical(k)] = int(v)
            except ValueError:
                continue
        out[p.name[:-len(".conf")]] = vals
    return out, problems

