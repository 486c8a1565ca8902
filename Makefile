# The two commands of the README: `make demo` and `make test`. Each installs what it
# needs on a fresh Debian machine (as root) and then does its job.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PACKAGES := iproute2 nftables iputils-ping procps python3-venv curl etcd-server

.PHONY: demo test lint unit integration setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@./scripts/install-system-deps $(APT_PACKAGES)
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	@PATH=$(abspath $(VENV))/bin:$$PATH ./examples/seed-demo.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check overlays tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest -q tests

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
