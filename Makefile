# One set of commands for people, hooks and CI. `make up` and `make test` do all their own set-up.
SHELL := /bin/bash
export PATH := $(HOME)/.local/bin:$(PATH)
export UV_PYTHON_DOWNLOADS ?= never
# Ray would otherwise package the working directory, .venv included, for every `uv run` driver.
export RAY_ENABLE_UV_RUN_RUNTIME_ENV ?= 0
# Bytecode compiled at install: with PYTHONDONTWRITEBYTECODE set (as on the CI machines) every
# Python process (the CLI, each Ray actor) otherwise compiles ray, torch and open_clip from source
# on import: 11.3 s each here (10.7 s of user CPU), against 4.6 s (4.1 s) with .pyc files.
export UV_COMPILE_BYTECODE ?= 1
PYTHON ?= python3
# make bench-index's first run writes at this many points/s: about the most `raylens ingest`
# reaches on a 2-core machine (make bench-overhead: 1,350-1,870 images/s at 10k-50k jobs, one
# point per image); its second run writes as fast as the index takes them (a faster node).
BENCH_INDEX_RATE ?= 2000
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help up test test-all test-fast lint bench bench-index bench-overhead bench-check chaos deps uv redis clean

help:
	@echo "make up     run raylens on this machine (embedded default; Ctrl+C stops it)"
	@echo "make test   install what the tests need and run them"
	@echo "make test-all  everything: make test + full-size drills and the bench peers' smoke tests"
	@echo "make bench  raw limit vs raylens ingest vs HTTP vs RQ / Serve task_consumer / naive Serve / Ray Data /"
	@echo "            @serve.batch (ViT-B-32), each with failure columns from a drill on the tiny model (BENCH_ARGS=--no-failure-drills skips them),"
	@echo "            then search latency of the embedded index over 100,000 points under ingest,"
	@echo "            then the overhead section (make bench-overhead)"
	@echo "make bench-index  only the search-latency part: writes paced at BENCH_INDEX_RATE points/s (default $(BENCH_INDEX_RATE),"
	@echo "            about the most raylens ingests on 2 cores), then unpaced (BENCH_INDEX_ARGS=\"--backend client\" for the old engine)"
	@echo "make bench-overhead  raylens's own cost: tiny model, 1k/10k/50k-job ingest and HTTP, CPU-ms per job per process"
	@echo "make lint   ruff + mypy"
	@echo "make bench-check  the benchmark peers' and failure drills' smoke tests (tiny model; not part of make test)"
	@echo "make chaos  fault drills at full size (load, worker kills, poison, idempotency); prints a table"

uv:
	@command -v uv >/dev/null 2>&1 || [ -x "$(HOME)/.local/bin/uv" ] || \
	  $(PYTHON) -m pip install --user --quiet uv || \
	  $(PYTHON) -m pip install --user --quiet --break-system-packages uv

deps: uv
	$(UV) sync --frozen
	@$(UV) run --frozen python -m compileall -q raylens tests bench

redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server (apt-get)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq redis-server; }

up: deps
	$(UV) run --frozen raylens up

test: deps redis
	$(UV) run --frozen pytest -q -ra

test-all: deps redis
	RAYLENS_BENCH_TESTS=1 RAYLENS_CHAOS=full $(UV) run --frozen pytest -q -ra

chaos: deps redis
	RAYLENS_CHAOS=full $(UV) run --frozen pytest -q -ra -m chaos -p no:cacheprovider

test-fast: deps redis
	$(UV) run --frozen pytest -q -ra -m "not integration"

lint: deps
	$(UV) run --frozen ruff check raylens tests bench
	$(UV) run --frozen ruff format --check raylens tests bench
	$(UV) run --frozen mypy raylens

bench: deps redis
	$(UV) run --frozen python bench/bench_http.py $(BENCH_ARGS)
	$(UV) run --frozen python bench/bench_index.py --rate $(BENCH_INDEX_RATE) $(BENCH_INDEX_ARGS)
	$(UV) run --frozen python bench/bench_index.py $(BENCH_INDEX_ARGS)
	$(UV) run --frozen python bench/bench_overhead.py $(BENCH_OVERHEAD_ARGS)

bench-index: deps
	$(UV) run --frozen python bench/bench_index.py --rate $(BENCH_INDEX_RATE) $(BENCH_INDEX_ARGS)
	$(UV) run --frozen python bench/bench_index.py $(BENCH_INDEX_ARGS)

bench-overhead: deps
	$(UV) run --frozen python bench/bench_overhead.py $(BENCH_OVERHEAD_ARGS)

bench-check: deps redis
	RAYLENS_BENCH_TESTS=1 $(UV) run --frozen pytest -q -ra tests/test_bench_peer_rq.py tests/test_bench_peers_serve.py tests/test_bench_peers_batch.py tests/test_bench_failures_drills.py tests/test_bench_failures.py tests/test_bench_cli.py tests/test_bench_overhead.py

clean:
	rm -rf .venv .pytest_cache .ruff_cache .mypy_cache
