# Quick start (README): `make run` installs the runtime and starts the camera demo;
# `make test` installs everything for development and runs the test suite (CI runs this).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

run: $(PY)
	$(PIP) install -q .
	$(VENV)/bin/fer-run --camera 0

test: $(PY)
	$(PIP) install -q -e '.[dev]'
	$(PY) -m pytest

lint: $(PY)
	$(VENV)/bin/ruff check .

.PHONY: run test lint
