# Everything goes through .venv so `make test` works on a fresh clone with only Python 3.11+,
# git and make. The stamp file re-installs when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint typecheck pytest fuzz fuzz-ci bench bench-files bench-flood demo clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests fuzz bench

typecheck: $(STAMP)
	$(BIN)/mypy --strict src/tunnelproto src/tunnel_trio src/tunnel_mcp

pytest: $(STAMP)
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

# Longer fuzzing of the protocol core (Hypothesis profile "fuzz"); not part of `make test`.
# A stated budget: FUZZ_MINUTES in all (default 20), shared equally by the targets, each
# printing a line when it starts and when it ends (see fuzz/conftest.py).
FUZZ_MINUTES ?= 20
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz FUZZ_MINUTES=$(FUZZ_MINUTES) $(BIN)/python -m pytest -q fuzz

# The small fixed budget CI runs on every submission.
fuzz-ci: $(STAMP)
	HYPOTHESIS_PROFILE=ci-fuzz $(BIN)/python -m pytest -q fuzz

# Every figure of issue 11 (library, MCP, memory, idle CPU, files), printed and written to BENCH_JSON.
BENCH_JSON ?= bench-results.json
bench: $(STAMP)
	$(BIN)/python bench/run.py --files --json $(BENCH_JSON)

# One 1 GiB file member to member beside a bare TCP relay: MB/s, chat latency, memory (~1 min).
bench-files: $(STAMP)
	$(BIN)/python bench/files.py

# What a member flooding refused frames costs the host (about 2 minutes; Linux: reads /proc).
bench-flood: $(STAMP)
	$(BIN)/python bench/flood.py

# The whole story on this machine; `make demo DEMO_TRANSPORT=cloudflared` goes through a real Quick Tunnel.
DEMO_TRANSPORT ?= local
demo: $(STAMP)
	$(BIN)/tunnel-mcp demo --transport $(DEMO_TRANSPORT)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
