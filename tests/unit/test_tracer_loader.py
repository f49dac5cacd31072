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


def _insn(code: int, regs: int, imm: int) -> bytes:
    return bytes([code, regs, 0, 0]) + imm.to_bytes(4, "little", signed=True)


def test_helper_calls_numbered_as_a_kfunc_become_kfunc_calls():
    """bcc compiles a kfunc call written as a call of helper number <the
    kfunc's BTF id>; the loader marks exactly those as kfunc calls (src_reg
    BPF_PSEUDO_KFUNC_CALL, vmlinux's), and nothing else."""
    from rsttrace.tracer.bpfsys import BPF_PSEUDO_KFUNC_CALL, as_kfunc_calls
    kfunc = 65477
    prog = b"".join([
        _insn(0xb7, 0x02, 1234),          # r2 = 1234
        _insn(0x85, 0x00, kfunc),         # call <kfunc id> (as a helper)
        _insn(0x85, 0x00, 14),            # call helper 14
        _insn(0x18, 0x01, kfunc), _insn(0, 0, 0),  # ld_imm64 r1, <same number>
        _insn(0x85, 0x10, kfunc),         # a bpf-to-bpf call (src_reg 1): not a helper
        _insn(0x95, 0x00, 0)])            # exit
    out = as_kfunc_calls(prog, [kfunc])
    assert len(out) == len(prog)
    changed = [i for i in range(0, len(prog), 8) if out[i:i + 8] != prog[i:i + 8]]
    assert changed == [8]
    assert out[9] == BPF_PSEUDO_KFUNC_CALL << 4 and out[12:16] == prog[12:16]
    assert as_kfunc_calls(prog, []) == prog


def test_kfunc_cast_ids_come_from_btf():
    from rsttrace.tracer.btf import KIND_FUNC, KIND_STRUCT, BTFError, load_vmlinux
    from rsttrace.tracer.offsets import CAST_TYPES, RDONLY_CAST, rdonly_cast_ids
    btf = load_vmlinux()
    try:
        ids = rdonly_cast_ids(btf)
    except BTFError as e:  # kernels before 6.2
        pytest.skip(f"this kernel has no {RDONLY_CAST}: {e}")
    assert btf.kind(ids["KFUNC_RDONLY_CAST"]) == KIND_FUNC
    assert btf.name(ids["KFUNC_RDONLY_CAST"]) == RDONLY_CAST
    for define, name in CAST_TYPES.items():
        assert btf.kind(ids[define]) == KIND_STRUCT and btf.name(ids[define]) == name
    # above every helper number, so no helper call is ever taken for it
    assert ids["KFUNC_RDONLY_CAST"] > btf.enum("bpf_func_id")["__BPF_FUNC_MAX_ID"]


def test_a_kfunc_id_that_could_be_a_helper_number_is_refused():
    from rsttrace.tracer.btf import BTFError
    from rsttrace.tracer.offsets import rdonly_cast_ids

    class FakeBTF:
        def __init__(self, kfunc_id):
            self.kfunc_id = kfunc_id

        def find(self, name, kinds):
            return self.kfunc_id if name == "bpf_rdonly_cast" else 7

        def enum(self, name):
            return {"BPF_FUNC_unspec": 0, "__BPF_FUNC_MAX_ID": 212}

    assert rdonly_cast_ids(FakeBTF(60000))["KFUNC_RDONLY_CAST"] == 60000
    with pytest.raises(BTFError, match="helper"):
        rdonly_cast_ids(FakeBTF(150))
