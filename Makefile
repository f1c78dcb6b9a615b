PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: test demo check lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The stamp re-installs only when the package metadata changes.
$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

test: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 -q

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[demo]"
	touch $@

demo: $(VENV)/.demo-installed
	$(BIN)/jaxloss demo

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
