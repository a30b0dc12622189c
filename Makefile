# One-command entry points. Each creates .venv and installs what it needs.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo tour test test-slow test-all lint bench bench-distribution bench-rl \
	gpu-check clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0 -e '.[dev,ray]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/subset-rl train subset_rl/SensorPlacement-v0

tour: $(STAMP)
	$(BIN)/python examples/demo.py

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ''

lint: $(STAMP)
	$(BIN)/ruff check .

# Timings (never in tests): see benchmarks/README.md. `make bench-rl` re-runs the RL tables alone.
bench: bench-distribution bench-rl

bench-distribution: $(STAMP)
	$(BIN)/python benchmarks/bench_distribution.py

bench-rl: $(STAMP)
	$(BIN)/python benchmarks/bench_rl.py --profile

# On a machine with a GPU: tests, benchmarks and a short SFESS run on CUDA, into one results
# file ($$OUT/gpu_check_results.txt or runs/gpu_check_results.txt); see benchmarks/gpu_check.sh.
gpu-check: $(STAMP)
	PYTHON=$(BIN)/python bash benchmarks/gpu_check.sh

clean:
	rm -rf $(VENV) build dist *.egg-info
