# The two Quick-start commands: `make run` and `make test`. Each sets up what it needs first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint servers setup clean registers-doc

# A fresh Debian/Ubuntu lacks python3-venv: when creating the venv fails, remove the half-made
# directory, let scripts/bootstrap-python.sh install it (or print the sudo command), and retry once.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV) && bash scripts/bootstrap-python.sh $(PYTHON) && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

servers:
	@bash scripts/install-servers.sh

run: setup
	$(BIN)/twinedge up

test: setup servers
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check devices gateway tests bench scripts
	$(BIN)/mypy --strict devices gateway bench

registers-doc: setup
	$(BIN)/twinedge registers --format md > docs/registers.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
