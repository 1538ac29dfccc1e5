# Two commands on a fresh machine (Python >= 3.11):
#   make run    install into .venv and start the whole system (API + worker)
#   make test   install into .venv (with test extras) and run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: run test lint bench clean screenshots

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	scripts/ensure-redis-server $(VENV)
	$(BIN)/smartgen dev

# Two pytest processes, a test file each at a time (each its own private Redis, databases
# and fake model): most tests wait on real processes, so two halve the wall time on two
# cores. PYTEST_ARGS="-n 0" runs in one process.
PYTEST_ARGS ?= -n 2 --dist loadfile
test: $(VENV)/.installed-test
	scripts/ensure-redis-server $(VENV)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src
	cd src && ../$(BIN)/lint-imports ../pyproject.toml

# The console's screenshots in docs/ (Chromium + Playwright; not part of `make test`).
screenshots: $(VENV)/.installed-test
	scripts/ensure-redis-server $(VENV)
	$(BIN)/python bench/screenshots.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
