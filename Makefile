# Two entry points on a fresh Linux machine with Python 3.11:
#   make serve   -- venv + pinned install + checkpoints (downloaded if missing) + `bentoml serve`
#   make test    -- venv + pinned install + the test suite
PYTHON ?= python3.11
VENV ?= .venv
CHECKPOINTS ?= $(or $(SADTALKER_CHECKPOINTS),checkpoints)
SIZE ?= 256
PORT ?= 3000
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test-deps serve test test-slow lint checkpoints verify bench image clean-venv

install: $(STAMP)

# Reinstall whenever the lock changes. --no-deps: the lock is complete, so pip must not re-resolve.
$(STAMP): requirements.lock requirements-dev.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11 ...'" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-deps -r requirements.lock
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

checkpoints: $(STAMP)
	$(PY) -m sadtalker.checkpoints download --dir $(CHECKPOINTS) --size $(SIZE)

verify: $(STAMP)
	$(PY) -m sadtalker.checkpoints verify --dir $(CHECKPOINTS) --size $(SIZE)

serve: checkpoints
	SADTALKER_CHECKPOINTS=$(CHECKPOINTS) $(VENV)/bin/bentoml serve service:SadTalkerService --host 0.0.0.0 --port $(PORT)

# The ONE chain of test prerequisites, shared by `test` and `test-slow`: the venv, then what the tests need
# beyond it, each step a no-op once done: Debian's chromium (browser test) and PostgreSQL (job-store tests).
test-deps: $(STAMP)
	scripts/install-test-deps
	scripts/postgres-test-server

# pytest-xdist workers (0 = one process).  Two on 2 cores (measured: README "Tests"): one worker's server starts,
# subprocesses and I/O waits overlap the other's torch work; a worker runs whole modules (tests/conftest.py's
# scheduler) with torch on its share of the cores.
TEST_WORKERS ?= 2

test: test-deps
	$(PY) -m pytest -n $(TEST_WORKERS)

test-slow: test-deps
	$(PY) -m pytest -m slow

# Lint, format and types (the formatter check fails until the coordinator's one-time `ruff format` lands).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy sadtalker serving

bench: $(STAMP)
	$(PY) bench/render.py
	$(PY) bench/pipeline.py
	$(PY) bench/photo_check.py

# The OCI image (docker if an engine runs, else buildah; see scripts/containerize and README "Container").
IMAGE ?= sadtalker:latest
image: $(STAMP)
	scripts/containerize -t $(IMAGE)

clean-venv:
	rm -rf $(VENV)
