# Every target bootstraps its own virtualenv from any Python >= 3.11 on the machine
# (override with `make PYTHON=/path/to/python3.x`), pinned by requirements.lock.
PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11; do \
	command -v $$p >/dev/null 2>&1 \
	&& $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	&& { echo $$p; break; }; done)
UV_VERSION := 0.13.9
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast lint lock bench bench-quick clean

$(STAMP): pyproject.toml requirements.lock
	@test -n "$(PYTHON)" || { echo "delayline needs Python >= 3.11: install one or set PYTHON="; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip install --quiet --python $(BIN)/python -r requirements.lock -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/delayline serve

test: $(STAMP)
	$(BIN)/python -m pytest

# The inner loop: everything but the fault-injection scenarios, stopping at the first failure.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not faults" -x -q

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

# Re-pin every dependency (direct and transitive) for Python 3.11 and later, on every platform.
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
		--quiet -o requirements.lock

bench: $(STAMP)
	$(BIN)/python -m bench

bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) .delayline .pytest_cache .mypy_cache .ruff_cache
