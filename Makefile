# Two commands matter on a fresh machine: `make demo` and `make test`. Both set everything up first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
EXAMPLE := examples/support_tickets

.PHONY: setup demo test ui deploy-check clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

setup: $(BIN)/.installed

$(DAGSTER_HOME)/dagster.yaml: deploy/local/dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp deploy/local/dagster.yaml $@

## Label the bundled example's three months offline and print the summary.
demo: setup $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/labeling run --project $(EXAMPLE) --month 2026-08 --to 2026-10

## Run the test suite (offline, no API key).
test: setup
	$(BIN)/pytest -q

## The Dagster UI on http://127.0.0.1:3000 with run history kept in $(DAGSTER_HOME).
ui: setup $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml

## Postgres + Redis + celery workers on loopback, one month through the run queue, tables checked.
## Not part of `make test`: it installs Debian packages and takes a few minutes.
deploy-check: setup
	scripts/deploy_check.sh

clean:
	rm -rf $(VENV) $(DAGSTER_HOME) $(EXAMPLE)/warehouse.duckdb $(EXAMPLE)/exports $(EXAMPLE)/.models
