# Two entry points (see README "Setup"):
#   make demo   set up .venv and run the main job on the bundled default
#   make test   set up .venv and run the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint sysdeps
.DEFAULT_GOAL := test

# open3d needs libusb-1.0 at import time on Linux.
sysdeps:
	@bash scripts/check_sysdeps.sh

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@$(MAKE) --no-print-directory sysdeps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

demo: $(VENV)/.installed
	$(PY) demo.py

test: $(VENV)/.installed
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(PY) -m ruff check .
