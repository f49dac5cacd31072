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


def test_tcp_state_values_come_from_the_kernels_table(monkeypatch):
    from rsttrace.tracer import kernel, loader
    table = {1: "TCP_ESTABLISHED", 2: "TCP_SYN_SENT", 6: "TCP_TIME_WAIT", 7: "TCP_CLOSE",
             12: "TCP_NEW_SYN_RECV"}
    monkeypatch.setattr(kernel, "tcp_states", lambda: table)
    assert loader.tcp_state_defines() == ["-DTCP_SYN_SENT_=2", "-DTCP_CLOSE_=7",
                                          "-DTCP_TIME_WAIT_=6", "-DTCP_NEW_SYN_RECV_=12"]
    del table[7]
    with pytest.raises(LoadError, match="TCP_CLOSE"):
        loader.tcp_state_defines()
