# The README's quick start: `make demo` runs the main job, `make test` runs every
# test tier. Both do all set-up first (scripts/install.sh is idempotent).
PY := .venv/bin/python

.PHONY: install demo doctor test unit kernel bench

install:
	bash scripts/install.sh

demo: install
	.venv/bin/rsttrace demo

doctor: install
	.venv/bin/rsttrace doctor

test: install
	bash scripts/test.sh

unit: install
	$(PY) -m pytest tests/unit -q

bench: install
	$(PY) bench/bench_storm.py
	$(PY) bench/bench_report.py
