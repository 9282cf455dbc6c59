# The two set-up commands (README): `make demo` runs the whole pipeline, `make test` runs the tests.
SHELL := /bin/bash
PY := .venv/bin/python
VENV_STAMP := .venv/.installed

.PHONY: demo test lint bench serve clean-demo install

install: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(VENV_STAMP)

# Full pipeline through Prefect (ephemeral server) + DVC + MLflow (sqlite under the repo).
demo: $(VENV_STAMP)
	$(PY) -m flows.pipeline

test: $(VENV_STAMP)
	.venv/bin/pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi; exit $$rc

lint: $(VENV_STAMP)
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

bench: $(VENV_STAMP)
	$(PY) -m benchmarks.run_all

# Deployment stack on 127.0.0.1: Prefect server :4200, two process workers (pool dreampose-local), MLflow :5000.
# PROFILE=prod adds PostgreSQL (:5432, installed with apt-get when missing) behind an authenticated MLflow server.
PROFILE ?= local
serve: $(VENV_STAMP)
	exec $(PY) -m flows.serve --profile $(PROFILE)
