# stylelab: `make setup` once, then `make test`; `make run` for an offline smoke run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: setup test lint format run clean help

help:  ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-22s %s\n", $$1, $$2}'

setup: $(BIN)/stylelab  ## create .venv and install stylelab with its dev extras

$(BIN)/stylelab: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

lint:  ## ruff lint and format check, mypy type check ([tool.mypy] in pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format:  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Two pytest-xdist workers (one torch thread each); tests marked slurm or serial share one. A third
# worker on this 2-core machine was no faster (623.7 s against 616.5 s for the suite).
WORKERS ?= 2

test: lint  ## lint, then the test suite (CPU, offline, WORKERS=2 processes), its 15 slowest tests
	WANDB_MODE=offline $(BIN)/python -m pytest -q -n $(WORKERS) --dist loadgroup \
		--no-loadscope-reorder --durations=15 $(PYTEST_ARGS)

run:  ## offline smoke run with random weights (ARGS="key=value ..." adds overrides)
	$(BIN)/python -m stylelab.run model.weights=random steps=20 image_size=128 $(ARGS)

clean:  ## remove run outputs and caches (keeps .venv)
	rm -rf outputs multirun wandb reports .pytest_cache .ruff_cache .mypy_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -exec rm -rf {} +

# The write-up's studies (experiments/README.md).
include experiments/studies.mk
