# The README's quick start: `make demo` runs the main job, `make test` runs every
# test tier. Both do all set-up first (scripts/install.sh is idempotent).
PY := .venv/bin/python

.PHONY: install demo doctor test test-vm unit kernel bench

install:
	bash scripts/install.sh

demo: install
	.venv/bin/rsttrace demo

doctor: install
	.venv/bin/rsttrace doctor

test: install
	bash scripts/test.sh

# the vm tier: Debian's 6.1 and 6.12 kernels (IPVS, kprobes) under virtme-ng
test-vm: install
	bash scripts/vm/test.sh

unit: install
	$(PY) -m pytest tests/unit -q

bench: install
	$(PY) bench/bench_storm.py
	$(PY) bench/bench_storm.py --loops 2 --hooks
	$(PY) bench/bench_encode.py
	$(PY) bench/bench_report.py
	$(PY) bench/bench_export.py
	$(PY) bench/bench_tui.py
