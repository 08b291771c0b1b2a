# pgvote developer entry points. Everything goes through scripts/install-deps first (fast when nothing
# is missing), then the virtual environment's tools.
#   make test PYTEST_ARGS='-k vote -x'     run the test suite
#   make up | down | status | demo | clean
SHELL := /bin/bash
VENV ?= .venv
PYTEST_ARGS ?=
PGVOTE := $(VENV)/bin/pgvote

.PHONY: deps test lint reliability up down status demo clean

deps:
	VENV=$(VENV) bash scripts/install-deps

test: deps
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# ruff on the whole tree, mypy --strict on pgvote/ and partitions/ (configured in pyproject.toml)
lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# the reliability suite's long profile (docs/reliability.md): 5 rounds of every fault kind under k6 load,
# >= 10,000 generated bad requests, longer loads around every fault; `make test` runs its CI profile
reliability: deps
	PGVOTE_PROFILE=long $(VENV)/bin/pytest tests/reliability $(PYTEST_ARGS)

up: deps
	$(PGVOTE) up

down:
	@if [ -x $(PGVOTE) ]; then $(PGVOTE) down; else echo "no $(VENV): nothing was started"; fi

status: deps
	$(PGVOTE) status

demo: deps
	$(PGVOTE) up
	$(PGVOTE) demo

# stop the stack and delete its state dir (the cluster's data included)
clean:
	@if [ -x $(PGVOTE) ]; then $(PGVOTE) clean; else echo "no $(VENV): nothing to stop"; fi
