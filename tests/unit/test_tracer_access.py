"""What tracing needs of its process (tracer/access.py): the capability
check and its one-line messages, on /proc/PID/status texts."""

import pytest

from rsttrace.tracer import access

STATUS = "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t{m:016x}\nCapEff:\t{m:016x}\n"


def mask(*caps: str) -> int:
    bits = {n.cap: n.bit for n in (*access.NEEDS, access.MEMLOCK)}
    return sum(1 << bits[c] for c in caps)


def test_effective_caps_reads_capeff():
    assert access.effective_caps(STATUS.format(m=0x1fffffffff)) == 0x1fffffffff
    assert access.effective_caps("Name:\tx\n") == 0


@pytest.mark.parametrize("held,missing", [
    (("SYS_ADMIN", "SYS_PTRACE", "NET_ADMIN"), []),
    (("SYS_ADMIN", "NET_ADMIN"), ["SYS_PTRACE"]),
    (("SYS_PTRACE",), ["SYS_ADMIN", "NET_ADMIN"]),
    ((), ["SYS_ADMIN", "SYS_PTRACE", "NET_ADMIN"]),
])
def test_missing_capabilities_named_in_one_line(held, missing):
    caps = access.effective_caps(STATUS.format(m=mask(*held)))
    line = access.missing_caps_line(caps, access.needed("6.18.0", memlock_unlimited=False))
    if not missing:
        assert line is None
        return
    assert "\n" not in line
    assert line.endswith(f"add {', '.join(missing)} to the container's "
                         "securityContext.capabilities.add (or run it privileged)")
    for cap in ("SYS_ADMIN", "SYS_PTRACE", "NET_ADMIN"):
        assert (f"{cap} to " in line) == (cap in missing)


@pytest.mark.parametrize("release,unlimited,wants", [
    ("5.10.0-46-amd64", False, True),    # maps count against RLIMIT_MEMLOCK before 5.11
    ("5.10.0-46-amd64", True, False),    # ... unless it is unlimited already
    ("5.11.0", False, False),            # memory cgroup accounting from 5.11
    ("6.18.44-fc", False, False),
])
def test_sys_resource_only_where_memlock_limits_maps(release, unlimited, wants):
    assert (access.MEMLOCK in access.needed(release, unlimited)) == wants


def test_tracefs_and_btf_lines_name_the_mount():
    line = access.tracefs_line("tracefs not mounted and mount failed: mount: permission denied.\n"
                               "       dmesg(1) may have more information after failed mount "
                               "system call.")
    assert line == ("tracefs not mounted and mount failed: mount: permission denied: mount the "
                    "host's /sys/kernel/tracing into the container (read-only), or on the host: "
                    "mount -t tracefs nodev /sys/kernel/tracing")
    assert "mount the host's /sys/kernel/btf read-only" in access.btf_line()
