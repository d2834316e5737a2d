# cstore: the two commands are `make demo` and `make test`. Everything they need is set up here.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CSTORE := $(VENV)/bin/cstore
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml dev/pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint venv up down clean help

help:
	@echo "make demo   set everything up and run the main job end to end"
	@echo "make test   set everything up and run the test suite against a real Cassandra"
	@echo "make lint   the type and lint gate (mypy, ruff) that CI runs before the tests"
	@echo "make up / make down   start / stop the local Cassandra node"

# cstore itself (editable, with the test, load-test, plot and lint extras) and, beside it, the
# development package in dev/ (the local Cassandra launcher, demo, simulators, checker, evaluation),
# which is never part of cstore's wheel.
$(STAMP): pyproject.toml dev/pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,load,bench,lint]' -e './dev[eval]'
	@rm -f $(VENV)/.installed-*; touch $@

venv: $(STAMP)

# The demo starts a local node only when none answers, and leaves it running for you to explore.
demo: $(STAMP)
	$(PY) -m cstore_dev.demo

# The test session starts a local node if none answers and stops it afterwards only if it
# started it (see tests/conftest.py).
test: $(STAMP)
	$(PY) -m pytest -q --durations=30

# mypy at default settings on the package (strict on cstore.core, cstore.learn and cstore.errors,
# see pyproject.toml) and ruff on everything in the repository that is Python.
lint: $(STAMP)
	$(PY) -m ruff check cstore dev tests benchmarks locustfiles scripts helm
	$(PY) -m mypy
	$(PY) -m mypy --strict --follow-imports=silent -p cstore.core -p cstore.learn -p cstore.errors

up: $(STAMP)
	$(CSTORE) local up

down: $(STAMP)
	$(CSTORE) local down

clean:
	-$(CSTORE) local down --purge
	rm -rf $(VENV) .pytest_cache
