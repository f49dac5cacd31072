"""vm tier: Debian's 5.10, 6.1 and 6.12 kernels booted under virtme-ng (TCG).

Each kernel boots once per session (module fixture in test_vm_kernels.py)
and runs the tracer's kernel tests and the IPVS lab inside. The tier takes
minutes, so `pytest tests` skips it (saying why) unless RSTTRACE_VM_TIER=1;
scripts/vm/test.sh provisions what it needs and sets it.
"""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config, items):
    why = None
    if os.environ.get("RSTTRACE_VM_TIER") != "1":
        why = "vm tier: run scripts/vm/test.sh (boots 5.10, 6.1 and 6.12 under virtme-ng; README: its time)"
    elif os.geteuid() != 0:
        why = "vm tier needs root (qemu, apt-get): run scripts/vm/test.sh with sudo"
    if why is None:
        return
    skip = pytest.mark.skip(reason=why)
    for item in items:
        if "vm" in item.keywords:
            item.add_marker(skip)
