# Quick start: `make demo` and `make test` each create .venv and install what they need.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build by default. With a CUDA machine: make TORCH=torch (or any pip requirement).
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.fxopt-installed
TEST_STAMP := $(VENV)/.fxopt-test-installed
PIP    := $(PY) -m pip install --disable-pip-version-check -q

.PHONY: install install-test demo lint test test-all bench bench-quick zoo step-bench clean

# fxopt and what the demo needs: torch, OR-Tools, sympy.
install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and explicitly, so that no later requirement resolves another (CUDA) build.
	$(PIP) "$(TORCH)"
	$(PIP) -e . "$(TORCH)"
	touch $(STAMP)

# The tests' extras besides: the zoo's third-party models, linters, Triton (run by its
# interpreter on a CPU). torch named again on the same line: no extra may replace it.
install-test: $(TEST_STAMP)

$(TEST_STAMP): $(STAMP)
	$(PIP) -e ".[test,triton]" "$(TORCH)"
	touch $(TEST_STAMP)

demo: $(STAMP)
	MALLOC_MMAP_THRESHOLD_=65536 $(PY) -m examples.demo

# The house rules (README, "Architecture"): style, the import layers, types of the plain-data core.
lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check fxopt tests benchmarks examples
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

# two test processes: most tests are one thread compiling (Inductor, CP-SAT), so two cores
# run the suite in about half the time; PYTEST_WORKERS=0 runs it in this process
PYTEST_WORKERS ?= 2

test: lint
	$(PY) -m pytest -q -n $(PYTEST_WORKERS)

test-all: lint
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) -m ""

bench: $(TEST_STAMP)
	$(PY) -m benchmarks.bench_pareto

bench-quick: $(TEST_STAMP)
	$(PY) -m benchmarks.bench_pareto --quick

# fxopt on the third-party models of tests/zoo.py; e.g. make zoo ZOO_ARGS="--quick"
zoo: $(TEST_STAMP)
	$(PY) -m benchmarks.bench_zoo $(ZOO_ARGS)

# measured step peak against step budgets (FNO, FNO with ten graphs, HF GPT-2)
step-bench: $(TEST_STAMP)
	$(PY) -m benchmarks.bench_step $(STEP_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
