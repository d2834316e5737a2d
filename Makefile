# cstore: the two commands are `make demo` and `make test`. Everything they need is set up here.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CSTORE := $(VENV)/bin/cstore
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test venv up down clean help

help:
	@echo "make demo   set everything up and run the main job end to end"
	@echo "make test   set everything up and run the test suite against a real Cassandra"
	@echo "make up / make down   start / stop the local Cassandra node"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,load,eval]'
	@rm -f $(VENV)/.installed-*; touch $@

venv: $(STAMP)

# The demo starts a local node only when none answers, and leaves it running for you to explore.
demo: $(STAMP)
	$(PY) -m cstore.demo

# The test session starts a local node if none answers and stops it afterwards only if it
# started it (see tests/conftest.py).
test: $(STAMP)
	$(PY) -m pytest -q --durations=30

up: $(STAMP)
	$(CSTORE) local up

down: $(STAMP)
	$(CSTORE) local down

clean:
	-$(CSTORE) local down --purge
	rm -rf $(VENV) .pytest_cache
