# make test  - install what a fresh Debian machine lacks, then run every test (CI runs this)
# make demo  - run the main job end to end on embedded defaults (private Redis, local storage)
# make lint  - ruff, mypy and the import contracts (lint-imports; see ARCHITECTURE.md)

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := redis-server postgresql ffmpeg nodejs npm systemd shellcheck chromium
STAMP := $(VENV)/.installed
# The AWS CLI that the ops scripts call (on an instance: the AMI's, or user-data's pip install), run by
# the tests against moto. Its own venv: awscli pins an older botocore than our boto3.
TOOLS := .venv-tools
AWSCLI := awscli==1.46.2

.PHONY: test demo lint system-deps venv node-deps tools schema clean

# The whole suite, never stopping at the first failure (CI reports every one); `make test PYTEST_ARGS=-x`
# stops at the first while you iterate.
PYTEST_ARGS ?=
test: venv node-deps tools
	$(PY) -m pytest -q --durations=15 $(PYTEST_ARGS)

demo: venv
	$(PY) scripts/demo.py

lint: venv
	$(VENV)/bin/ruff check daemon tests scripts
	$(VENV)/bin/ruff format --check daemon tests scripts
	$(VENV)/bin/mypy daemon
	$(VENV)/bin/lint-imports

# System packages: only those missing are installed (apt needs root; CI runs as root).
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	( command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 ) || missing="$$missing postgresql"; \
	command -v ffmpeg >/dev/null || missing="$$missing ffmpeg"; \
	command -v node >/dev/null || missing="$$missing nodejs npm"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	command -v shellcheck >/dev/null || missing="$$missing shellcheck"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

venv: system-deps $(STAMP)

$(STAMP): requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	scripts/select_pycolmap.sh $(VENV)   # the CUDA wheel on a GPU host, else the pinned CPU one
	touch $@

node-deps: scripts/node/node_modules/.package-lock.json daemon/js/node_modules/.package-lock.json

tools: $(TOOLS)/bin/aws

$(TOOLS)/bin/aws: Makefile
	test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q $(AWSCLI)
	touch $@

scripts/node/node_modules/.package-lock.json: scripts/node/package.json scripts/node/package-lock.json
	cd scripts/node && npm ci --no-audit --no-fund --loglevel=error

# The daemon's Node tools (mesh kind) with, as dev dependencies, the browser clients the tests use;
# hosts install it with --omit=dev (ops/launch-template).
daemon/js/node_modules/.package-lock.json: daemon/js/package.json daemon/js/package-lock.json
	cd daemon/js && npm ci --no-audit --no-fund --loglevel=error

schema: venv
	$(PY) -m daemon schema > schema/job-spec.v1.json

clean:
	rm -rf var .pytest_cache
