import os

import pytest


def pytest_collection_modifyitems(config, items):
    # Kernel tests need root; in CI they run as root and must not skip.
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="kernel tier needs root (CI runs it as root)")
    for item in items:
        if "kernel" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def fix_env(tmp_path):
    """RSTTRACE_*_DIR sending every file `rsttrace fix` keeps (journal, lock,
    persisted values, the boot unit) under tmp_path, never /etc or /var."""
    return {f"RSTTRACE_{k}_DIR": str(tmp_path / k.lower())
            for k in ("STATE", "SYSCTL", "ETC", "MODPROBE", "SYSTEMD")}
