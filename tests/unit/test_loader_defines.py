"""The -D flags of bpf/rsttrace.bpf.c, in one table (tracer/loader.py
DEFINES): the .c's opening comment is that table; every macro the program
tests and does not define itself is in it, and everything in it is used;
build() refuses a flag the table does not name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rsttrace.tracer import loader
from rsttrace.tracer.loader import DEFINES, LoadError, defines_comment

BPF = Path(__file__).resolve().parents[2] / "bpf"
C_TEXT = (BPF / "rsttrace.bpf.c").read_text()
LOCAL = set(re.findall(r"^\s*#\s*define\s+(\w+)", C_TEXT + (BPF / "rsttrace.h").read_text(), re.M))


def _comment_block(text: str) -> str:
    m = re.search(r" \* -D flags:\n(.*?) \* end of -D flags\n", text, re.S)
    assert m, "bpf/rsttrace.bpf.c has no -D list in its opening comment"
    return m.group(1)


def _code(text: str) -> str:
    return re.sub(r"/\*.*?\*/", " ", text, flags=re.S)


def test_the_comment_is_the_table():
    assert _comment_block(C_TEXT) == defines_comment(), \
        "bpf/rsttrace.bpf.c's -D list differs: paste `python -m rsttrace.tracer.loader` into it"


def test_a_changed_table_changes_the_comment(monkeypatch):
    monkeypatch.setattr(loader, "DEFINES", DEFINES + (loader.Define("NEW_ONE", "a flag added"),))
    assert _comment_block(C_TEXT) != defines_comment()


def test_every_macro_the_program_tests_is_a_flag_or_its_own():
    tested = set()
    for line in re.findall(r"^\s*#\s*(?:if|ifdef|ifndef|elif)\b(.*)$", _code(C_TEXT), re.M):
        tested |= set(re.findall(r"\b[A-Z_][A-Z0-9_]*\b", line)) - {"defined"}
    missing = sorted(m for m in tested if m not in LOCAL and not any(d.matches(m) for d in DEFINES))
    assert missing == []


def test_every_offset_and_argument_the_program_uses_comes_from_the_kernel():
    used = set(re.findall(r"\b(?:OFF|ARG)_[A-Z0-9_]+\b", _code(C_TEXT))) - LOCAL
    family = {d.name: set(d.names) for d in DEFINES}
    assert used - family["OFF_*"] - family["ARG_*"] == set()


def test_every_flag_of_the_table_is_used_by_the_program():
    code = set(re.findall(r"\b\w+\b", _code(C_TEXT)))
    unused = [n for d in DEFINES for n in (d.names or (d.name,)) if n not in code]
    assert unused == []


def test_build_refuses_a_flag_missing_from_the_table():
    ok = ["-I/x", "-DOFF_SK_NET=48", "-DTP_BTF", "-DTCP_CLOSE_=7", "-DARG_SR_SK=0",
          loader.filter_define("PORT_WANTED", [3306], 0xFFFF), "-DNET_NAMESPACE_LIST=0xffffffff81000000ULL",
          "-DHAVE_TP_SEND_RESET", "-DBTF_TCPHDR=5"]
    loader._check_defines(ok)
    for bad in ("-DOFF_NOT_A_MEMBER=1", "-DHAVE_TP_NOPE", "-DSOMETHING_NEW"):
        with pytest.raises(LoadError, match="DEFINES"):
            loader._check_defines(ok + [bad])
