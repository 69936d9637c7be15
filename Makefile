# Every target that needs the project creates .venv on first use, so a fresh
# clone needs only Python 3.11+, make and git.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench bench-quick clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The sample holds duplicate and invalid rows on purpose: the run exits 4 ("only invalid
# input rows did not land"), which is the demo's expected outcome; it shows those rows.
demo: $(STAMP)
	@$(BIN)/vpc-members run inputs/sample.csv --emulator --log-level warning; code=$$?; \
	if [ $$code -ne 4 ]; then exit $$code; fi; \
	echo; echo "Exit code 4: every valid row landed; the sample's deliberate duplicate and"; \
	echo "invalid rows did not, and reports/latest/errors.csv says why:"; \
	$(BIN)/python -c 'import csv; rows = csv.DictReader(open("reports/latest/errors.csv")); \
	[print("  line %4s  %-9s  %s" % (r["line"], r["outcome"], r["error_msg"] \
	 + (" (line " + r["duplicate_of"].rsplit(":", 1)[1] + " won)" if r["duplicate_of"] else ""))) \
	 for r in rows]'

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Branch coverage, subprocesses included; the total is the last line of the table.
pytest: $(STAMP)
	$(BIN)/pytest -q --cov --cov-report=term

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python -m bench

bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
