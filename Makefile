# Two commands a newcomer needs: `make demo` and `make test`. Each builds .venv when missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-fleet test lint bench bench-capacity soak snapshots-update clean

$(STAMP): pyproject.toml setup.py openrtc/introspection/_steps.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,examples]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/openrtc demo

# A local NATS server, three workers that join it, a load dispatched to the fleet, and its `top`.
demo-fleet: $(STAMP)
	$(BIN)/openrtc demo --fleet

lint: $(STAMP)
	$(BIN)/ruff check openrtc tests benchmarks agents_example
	$(BIN)/ruff format --check openrtc tests benchmarks agents_example
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# A worker under session churn for SOAK_SECONDS (default 20 minutes); report in benchmarks/out/soak/.
SOAK_SECONDS ?= 1200
soak: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[soak]'
	SOAK_SECONDS=$(SOAK_SECONDS) $(BIN)/python benchmarks/soak.py

# After a deliberate change of how `top` looks: rewrite the screenshots, then review their diff.
snapshots-update: $(STAMP)
	$(BIN)/python -m pytest tests/top/test_snapshots.py --snapshot-update

# How many sessions of each shape one worker holds, and what grows with the count (under 15 minutes).
bench-capacity: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/bench_capacity.py

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_runtime.py
	$(BIN)/python benchmarks/bench_introspection.py
	$(BIN)/python benchmarks/bench_top.py
	$(BIN)/python benchmarks/bench_process.py
	$(BIN)/python benchmarks/bench_clients.py
	$(BIN)/python benchmarks/bench_hostile.py
	$(BIN)/python benchmarks/bench_memory_limit.py
	$(BIN)/python benchmarks/bench_usage.py
	$(BIN)/python benchmarks/bench_metrics.py
	$(BIN)/python benchmarks/bench_profile.py --rounds 8
	$(BIN)/python benchmarks/bench_fleet.py
	$(BIN)/python benchmarks/bench_snapshot.py

clean:
	rm -rf .venv .venv-* .pytest_cache .mypy_cache .ruff_cache
