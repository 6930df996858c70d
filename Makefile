# hubploy-dagster: developer entry points. See scripts/setup.sh for what `setup` installs.
#   make setup | make test [PYTEST_ARGS=...] | make run [DAGSTER_PORT=3000] | make lint (ruff, import-linter)

# bash (not /bin/sh) for every recipe: make then never takes its shell-less fast path, so the
# PATH below is the one every command is looked up in.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
# Our pinned helm/kubectl and the venv first: never the system kubectl (/usr/bin/kubectl may be
# another one). sbin last, for dockerd.
export PATH := $(ROOT)/.tools/bin:$(ROOT)/.venv/bin:$(PATH):/usr/local/sbin:/usr/sbin:/sbin

PYTEST_ARGS ?=
LINT_PATHS := hubploy_dagster jobs sensors tests benchmarks

.PHONY: setup test run lint

setup:
	scripts/setup.sh

# The whole suite (testpaths = tests in pyproject.toml). No test collected (exit 5) fails too.
test: setup
	python -m pytest $(PYTEST_ARGS)

run: setup
	scripts/run-example.sh

lint:
	scripts/setup.sh apt venv
	ruff check $(LINT_PATHS)
	ruff format --check $(LINT_PATHS)
	lint-imports
