"""The loader process started ahead of need (tracer/loader.py)."""

import os

import pytest

from rsttrace.tracer.loader import LoaderProcess, LoadError


def test_an_unused_loader_process_is_ended_by_close():
    lp = LoaderProcess()
    pid = lp._proc.pid
    lp.close()
    assert lp._proc.returncode is not None
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped: nothing left behind
    lp.close()  # twice is harmless


def test_a_loader_process_loads_once():
    lp = LoaderProcess()
    lp.close()
    with pytest.raises(LoadError, match="already"):
        lp.load(None)
