"""Where rsttrace keeps its journal and persisted settings.

Each location can be moved with an environment variable (tests point them at a
temporary directory so they never write /etc or /var):
RSTTRACE_STATE_DIR (journal and lock), RSTTRACE_SYSCTL_DIR (99-rsttrace.conf),
RSTTRACE_ETC_DIR (per-namespace and IPVS values), RSTTRACE_MODPROBE_DIR
(hashsize), RSTTRACE_SYSTEMD_DIR (the unit that re-applies them at boot).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    state_dir: Path
    sysctl_dir: Path
    etc_dir: Path
    modprobe_dir: Path
    systemd_dir: Path

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Paths":
        env = dict(os.environ if env is None else env)
        return cls(Path(env.get("RSTTRACE_STATE_DIR", "/var/lib/rsttrace")),
                   Path(env.get("RSTTRACE_SYSCTL_DIR", "/etc/sysctl.d")),
                   Path(env.get("RSTTRACE_ETC_DIR", "/etc/rsttrace")),
                   Path(env.get("RSTTRACE_MODPROBE_DIR", "/etc/modprobe.d")),
                   Path(env.get("RSTTRACE_SYSTEMD_DIR", "/etc/systemd/system")))

    @property
    def journal(self) -> Path:
        return self.state_dir / "journal.json"

    @property
    def lock(self) -> Path:
        """Held (flock) by the one `rsttrace fix` that may change things."""
        return self.state_dir / "lock"

    @property
    def sysctl_conf(self) -> Path:
        return self.sysctl_dir / "99-rsttrace.conf"

    @property
    def netns_dir(self) -> Path:
        return self.etc_dir / "netns.d"

    @property
    def modprobe_conf(self) -> Path:
        return self.modprobe_dir / "99-rsttrace.conf"

    @property
    def unit(self) -> Path:
        return self.systemd_dir / "rsttrace-reapply.service"

    @property
    def unit_link(self) -> Path:
        return self.systemd_dir / "multi-user.target.wants" / "rsttrace-reapply.service"

    def managed(self, path: str) -> bool:
        """Whether `path` is one of the files rsttrace writes (and so may
        restore on rollback): the fixed ones, or a NAME.conf in netns.d."""
        p = Path(path)
        if p in (self.sysctl_conf, self.modprobe_conf, self.unit, self.unit_link):
            return True
        return p.parent == self.netns_dir and p.suffix == ".conf" and len(p.name) > len(".conf")
