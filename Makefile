# Quick start: `make demo` and `make test` each create .venv and install what they need.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build by default. With a CUDA machine: make TORCH=torch (or any pip requirement).
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.fxopt-installed

.PHONY: install demo test test-all bench bench-quick zoo step-bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and explicitly, so that no later requirement resolves another (CUDA) build.
	$(PY) -m pip install --disable-pip-version-check -q "$(TORCH)"
	# torch named again on the same line: no extra (transformers, neuraloperator) may replace it.
	$(PY) -m pip install --disable-pip-version-check -q -e ".[test,triton]" "$(TORCH)"
	touch $(STAMP)

demo: $(STAMP)
	MALLOC_MMAP_THRESHOLD_=65536 $(PY) -m examples.demo

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ""

bench: $(STAMP)
	$(PY) -m benchmarks.bench_pareto

bench-quick: $(STAMP)
	$(PY) -m benchmarks.bench_pareto --quick

# fxopt on the third-party models of tests/zoo.py; e.g. make zoo ZOO_ARGS="--quick"
zoo: $(STAMP)
	$(PY) -m benchmarks.bench_zoo $(ZOO_ARGS)

# measured step peak against step budgets (FNO, FNO with ten graphs, HF GPT-2)
step-bench: $(STAMP)
	$(PY) -m benchmarks.bench_step $(STEP_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
