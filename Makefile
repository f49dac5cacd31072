# The README's quick start: `make demo` runs the main job, `make test` runs every
# test tier. Both do all set-up first (scripts/install.sh is idempotent).
PY := .venv/bin/python

.PHONY: install install-test demo doctor test test-vm unit kernel bench image manifests

install:
	bash scripts/install.sh

# what the tests need beyond the main job: Vagrant and its libvirt plugin, for
# `vagrant validate` of the Vagrantfile (tests/unit/test_vagrantfile.py);
# podman, runc and mmdebstrap to build the image and run it as the DaemonSet
# does (tests/container)
install-test:
	bash scripts/install.sh vagrant vagrant-libvirt podman runc mmdebstrap

demo: install
	.venv/bin/rsttrace demo

doctor: install
	.venv/bin/rsttrace doctor

test: install-test image
	bash scripts/test.sh

# localhost/rsttrace:VERSION and :latest from Debian's archive, no registry
# (deploy/image/build.sh); nothing is rebuilt while its inputs are unchanged
image: install-test
	bash deploy/image/build.sh

# deploy/kubernetes's PrometheusRule and dashboard ConfigMap from monitoring/
manifests: install-test
	$(PY) deploy/kubernetes/generate.py

# the vm tier: Debian's 5.10, 6.1 and 6.12 kernels (IPVS, kprobes) under virtme-ng
test-vm: install
	bash scripts/vm/test.sh

unit: install-test
	$(PY) -m pytest tests/unit -q

bench: install
	$(PY) bench/bench_storm.py --peers
	$(PY) bench/bench_storm.py --loops 2 --hooks --peers
	$(PY) bench/bench_context.py
	$(PY) bench/bench_encode.py
	$(PY) bench/bench_report.py
	$(PY) bench/bench_agent.py
	$(PY) bench/bench_agent.py --command export
	$(PY) bench/bench_tui.py
