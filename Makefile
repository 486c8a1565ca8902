# The two commands of the README: `make demo` and `make test`. Each installs what it
# needs on a fresh Debian machine (as root) and then does its job.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PACKAGES := iproute2 nftables iputils-ping procps python3-venv curl etcd-server graphviz fonts-dejavu-core chromium dnsmasq-base iptables
# CNI mode's tests run real runtimes: podman (CNI backend) with runc, containerd, the reference
# plugins (/usr/lib/cni: loopback for ctr, the benchmark's baselines) and a static busybox for images.
APT_PACKAGES += podman runc conmon containerd containernetworking-plugins busybox-static util-linux

.PHONY: demo test lint unit integration setup clean bench bench-quick compile chaos

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@./scripts/install-system-deps $(APT_PACKAGES)
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

# Bytecode is cached explicitly: PYTHONDONTWRITEBYTECODE (set on some machines) would
# otherwise make every overlays command recompile the package (~60 ms a start).
compile: $(STAMP)
	@$(PY) -m compileall -q overlays benchmarks

demo: compile
	@PATH=$(abspath $(VENV))/bin:$$PATH ./examples/seed-demo.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check overlays tests benchmarks examples
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest -q tests examples

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

# The slow checks: speed side by side with the CNI plugins, netavark and `ip` per step.
bench: compile
	./scripts/install-bench-deps
	$(PY) -m benchmarks all

bench-quick: compile
	./scripts/install-bench-deps
	$(PY) -m benchmarks all --quick

# SIGKILL overlays 100 times at random instants, recover, audit the kernel (see benchmarks/chaos.py).
chaos: compile
	$(PY) -m benchmarks.chaos

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
