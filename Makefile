# Two commands on a fresh machine: `make run` and `make test`. Both create the
# environment first if it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

# The engine's compiled modules are rebuilt whenever their sources change.
$(STAMP): pyproject.toml setup.py engine/book.py engine/engine.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The daemon in the foreground on the embedded default config (BTCUSDT, ETHUSDT on
# 127.0.0.1:7001, market data on :7002, data under ./var). Ctrl-C stops it cleanly.
run: $(STAMP)
	$(VENV)/bin/clob serve

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest
	CLOBD_PURE_PYTHON=1 $(PY) -m pytest tests/engine

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

# Peers run in their own venvs (.venv-bench*), created on first use. BENCH_ARGS=--n 20000
# for a quick look.
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) bench/engine.py $(BENCH_ARGS)
	$(PY) bench/e2e.py

clean:
	rm -rf $(VENV) build *.egg-info *.so engine/*.so
