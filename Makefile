# The two commands: `make run` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint bench catalogs clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("reconciler needs Python 3.11 or newer") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

SAMPLE := .state/sample-contacts.csv

## run: validate the example workspace, import made-up contacts once, and run the daemon on it (Ctrl-C stops it)
run: $(STAMP) .state/.sample-imported
	$(BIN)/reconciler validate
	$(BIN)/reconciler run

.state/.sample-imported: $(STAMP)
	mkdir -p .state
	$(BIN)/reconciler contacts sample --count 500 > $(SAMPLE)
	$(BIN)/reconciler contacts import $(SAMPLE) --list newsletter --list offers --preconfirmed --consent "made-up sample data"
	touch $@

## test: the whole test suite on SQLite, then the tests that use a state again on PostgreSQL (a throwaway cluster;
## skipped, saying so, where PostgreSQL is not installed, unless RECONCILER_TEST_POSTGRES=1 as in CI); both run,
## and it fails if either did
test: $(STAMP)
	$(BIN)/python -m pytest; sqlite=$$?; \
	RECONCILER_TEST_ENGINE=postgresql $(BIN)/python -m pytest; postgresql=$$?; \
	test $$sqlite = 0 && test $$postgresql = 0

## lint: ruff, mypy (strict) on src/, tests/ and ci/, and the import layers of docs/architecture.md
lint: $(STAMP)
	$(BIN)/ruff check src tests bench ci
	$(BIN)/ruff format --check src tests bench ci
	$(BIN)/mypy src tests ci
	$(BIN)/lint-imports

## bench: every benchmark in bench/, printing figures against baselines measured in the same run
bench: $(STAMP)
	bench/install-tools.sh
	$(BIN)/python bench/run.py

## catalogs: extract the subscriber pages' text, merge it into each language's catalog and compile them (.po -> .mo)
I18N := src/reconciler/i18n
catalogs: $(STAMP)
	cd src/reconciler && ../../$(BIN)/pybabel -q extract -F i18n/babel.cfg --no-location --omit-header --sort-output -o ../../.state/reconciler.pot .
	$(BIN)/pybabel -q update -i .state/reconciler.pot -d $(I18N)/locales -D reconciler -w 120 --ignore-obsolete --ignore-pot-creation-date
	$(BIN)/pybabel -q compile -d $(I18N)/locales -D reconciler --statistics

clean:
	rm -rf $(VENV) .state .mypy_cache .pytest_cache .ruff_cache .hypothesis
