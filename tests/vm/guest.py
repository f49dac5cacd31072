"""What a vm-tier guest runs (tests/vm/test_vm_kernels.py boots it):
the tracer's kernel tests, then the IPVS lab, in one interpreter.

One process for both, because under emulation what a process learns once
costs minutes to learn again: importing the tracer, and on kernels whose
BTF does not describe IPVS, the layout read from the kernel's own headers
(tracer/loader.py, header_layout), which the tests' sessions and the lab's
then share.

    python tests/vm/guest.py TEST_NAME...   (the tests to leave out)
"""

from __future__ import annotations

import sys


def main(deselect: list[str]) -> int:
    import pytest

    print("== tracer kernel tests", flush=True)
    # -v and the durations: a test's line as it ends, so a slow guest's
    # console shows where its time goes
    args = ["tests/kernel/test_tracer_kernel.py", "-v", "-rA", "-p", "no:cacheprovider",
            "--tb=short", "--durations=15"]
    if deselect:
        args += ["-k", " and ".join(f"not {name}" for name in deselect)]
    rc = int(pytest.main(args))
    print(f"== tracer rc {rc}", flush=True)
    print("== ipvs lab", flush=True)
    from rsttrace.lab import ipvs
    lab_rc = ipvs.main(["--json"])
    print(f"== ipvs rc {lab_rc}", flush=True)
    return rc or lab_rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
