"""Read and write one namespace's values, from inside that namespace.

/proc/sys/net shows the sysctls of the namespace of the process that opens
it, and an IPVS netlink socket talks to its creator's namespace; so values
of another namespace are read and written by running this module there
(`nsenter --net=PATH python -m rsttrace.remedy.nsexec REQUEST`), while the
namespace rsttrace runs in calls the same functions directly.
Request and reply are one JSON object each. A request carrying the
planned namespace's `cookie` is refused (`moved`) in any other namespace.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rsttrace.remedy.keys import CT_BUCKETS, IPVS_KEYS, sysctl_path
from rsttrace.tracer.ipvs import present as ipvs_present
from rsttrace.tracer.netnsid import cookie_here

HASHSIZE = "/sys/module/nf_conntrack/parameters/hashsize"


def _read_int(path: str) -> int:
    with open(path, encoding="ascii") as f:
        return int(f.read().split()[0])


def _write(path: str, value: int) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(f"{int(value)}\n")


def buckets_via() -> str:
    """Where bucket count is writable: the sysctl (init netns, newer kernels)
    or the nf_conntrack `hashsize` module parameter."""
    try:
        if os.stat(sysctl_path(CT_BUCKETS)).st_mode & 0o200:
            return "sysctl"
    except FileNotFoundError:
        pass
    return "hashsize" if os.path.exists(HASHSIZE) else "none"


# IPVS is asked only where ip_vs is loaded (tracer/ipvs.py `present`): asking
# for its netlink family elsewhere may make the kernel load the module.
NO_IPVS = "IPVS is not in this kernel or namespace (the ip_vs module is not loaded)"


def read_values(keys: list[str]) -> dict[str, Any]:
    values: dict[str, int | None] = {}
    errors: dict[str, str] = {}
    ipvs_cfg: dict[str, int] | None = None
    ipvs_error = ""
    for key in keys:
        if key in IPVS_KEYS:
            if ipvs_cfg is None and not ipvs_error:
                if not ipvs_present():
                    ipvs_error = NO_IPVS
                else:
                    from rsttrace.tracer.ipvsconfig import IPVSError, get_config
                    try:
                        ipvs_cfg = get_config()
                    except (IPVSError, OSError) as e:
                        ipvs_error = str(e)
            values[key] = (ipvs_cfg or {}).get(key.split(".", 1)[1])
            if ipvs_error:
                errors[key] = ipvs_error
            continue
        try:
            values[key] = _read_int(sysctl_path(key))
        except FileNotFoundError:
            values[key] = None
            errors[key] = f"{key} does not exist in this kernel or namespace"
        except (OSError, ValueError) as e:
            values[key] = None
            errors[key] = f"cannot read {key}: {e}"
    return {"values": values, "errors": errors}


def write_value(key: str, value: int) -> dict[str, Any]:
    """Write, then read back from the kernel (the caller compares)."""
    try:
        if key in IPVS_KEYS:
            if not ipvs_present():
                return {"error": f"writing {key}={value} failed: {NO_IPVS}"}
            from rsttrace.tracer.ipvsconfig import get_config, set_config
            short = key.split(".", 1)[1]
            set_config({short: value})
            return {"readback": get_config().get(short)}
        if key == CT_BUCKETS and buckets_via() == "hashsize":
            _write(HASHSIZE, value)
            return {"readback": _read_int(HASHSIZE), "via": "hashsize"}
        path = sysctl_path(key)
        _write(path, value)
        return {"readback": _read_int(path)}
    except Exception as e:  # reported to the applier, which rolls back
        err = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        return {"error": f"writing {key}={value} failed: {err}"}


def handle(req: dict[str, Any]) -> dict[str, Any]:
    want = req.get("cookie")
    if want is not None:
        # Checked from inside: nsenter entered whatever the path leads to
        # now, and a namespace deleted since planning leaves its inode (and
        # a bind mount at its name) to the next one made.
        have = cookie_here()
        if have != want:
            return {"moved": True,
                    "error": f"this is no longer the namespace planned (cookie {have}, "
                             f"planned {want}): it was deleted and another took its place; "
                             "nothing was read or written"}
    op = req.get("op")
    if op == "read":
        return read_values(list(req["keys"]))
    if op == "write":
        return write_value(req["key"], int(req["value"]))
    if op == "ipvs_available":
        return {"available": ipvs_present()}
    return {"error": f"unknown op {op!r}"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    print(json.dumps(handle(json.loads(argv[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
