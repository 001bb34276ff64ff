# A new user types only `make demo` or `make test`; each builds .venv when missing.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: demo test test-slow bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: anything that pulls an unpinned torch would fetch a CUDA build.
	$(BIN)/pip install -q torch==2.13.0

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -x --timeout=600

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow --timeout=1800

demo: $(STAMP)
	$(BIN)/rutune demo

clean:
	rm -rf $(VENV) runs .cache
