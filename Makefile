# The two set-up commands (README): `make demo` runs the whole pipeline, `make test` runs the tests.
SHELL := /bin/bash
PY := .venv/bin/python
VENV_STAMP := .venv/.installed

.PHONY: demo paper test lint bench serve clean-demo install remote ablations

install: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(VENV_STAMP)

# Full pipeline through Prefect (ephemeral server) + DVC + MLflow (sqlite under the repo).
demo: $(VENV_STAMP)
	$(PY) -m flows.pipeline

# The paper's configuration (GPU, real weights, UBC Fashion): README "Running the paper configuration".
paper: $(VENV_STAMP)
	.venv/bin/dreampose config use paper
	.venv/bin/dreampose preflight
	$(PY) -m flows.pipeline

# One pytest-xdist worker per core (at most 4); a test file stays on one worker, so its fixtures are built once;
# files are handed out in the order tests/conftest.py sorts them (slowest first), not by their number of tests.
test: $(VENV_STAMP)
	.venv/bin/pytest -q -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi; exit $$rc

# The paper's Table 2 ablations as DVC experiments (after `make demo`): each variant re-runs only what it changes.
ablations: $(VENV_STAMP)
	.venv/bin/dreampose ablations --run

lint: $(VENV_STAMP)
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

bench: $(VENV_STAMP)
	$(PY) -m benchmarks.run_all

# A DVC remote for the pipeline's outputs, then push them: `make remote URL=/mnt/store` (or s3://bucket/dreampose,
# ssh://host/path). A fresh clone then serves catalog items after `dvc pull models/base` (README "Scaling out").
remote: $(VENV_STAMP)
	@test -n "$(URL)" || { echo "usage: make remote URL=<path or s3://... or ssh://...>" >&2; exit 2; }
	.venv/bin/dreampose remote add "$(URL)"
	.venv/bin/dvc push

# Deployment stack on 127.0.0.1: Prefect server :4200, two process workers (pool dreampose-local), MLflow :5000.
# PROFILE=prod adds PostgreSQL (:5432, installed with apt-get when missing) behind an authenticated MLflow server.
PROFILE ?= local
serve: $(VENV_STAMP)
	exec $(PY) -m flows.serve --profile $(PROFILE)
