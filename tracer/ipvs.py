"""IPVS state for context records: its timeouts.

Timeouts come from generic netlink `IPVS_CMD_GET_CONFIG`, the request
`ipvsadm -Ln --timeout` makes, through the codec of tracer/ipvsconfig.py.
IPVS state is per namespace (every namespace has its own timeouts once the
module is loaded), and the request goes to the namespace of the calling
thread: the context collector enters each namespace with setns(2) on a
worker thread and calls `read_timeouts()` there.

That codec is pyroute2's, and importing pyroute2 costs time and memory
(docs/PERFORMANCE.md): it is imported on the first namespace that has
IPVS, so nodes without IPVS never pay it.
"""

from __future__ import annotations

import os

# Present (per namespace) only while the ip_vs module is loaded. Looked at
# first because resolving an unknown genetlink family may make the kernel
# try to load a module: reading context must never change the host.
PROC_IP_VS = "/proc/thread-self/net/ip_vs"


def present() -> bool:
    """IPVS is loaded and the calling thread's namespace has it."""
    return os.path.exists(PROC_IP_VS)


def read_timeouts() -> dict[str, int] | None:
    """IPVS tcp/tcpfin/udp timeouts (seconds) of the calling thread's
    namespace; None where IPVS is absent (not built or not loaded)."""
    if not present():
        return None
    from .ipvsconfig import IPVSError, get_config
    try:
        return get_config()
    except (OSError, IPVSError):
        # IPVS unloaded between the check and the request, or the
        # namespace is going away: absent, as far as this snapshot goes
        return None
