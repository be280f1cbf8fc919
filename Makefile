# Two commands on a fresh machine: `make run` and `make test`. Both create the
# environment first if it is missing or older than pyproject.toml.
# The interpreter: the one the service is installed with (install-service, CLOBD_PYTHON) when
# it is 3.11 or newer and can make a venv, so that tests and benches measure what runs in
# production; else `python3`. It matters: on the development VM, pyenv's 3.11.7 (built
# --enable-shared, no PGO) replays the journal at 295-318k records/s, Debian's 3.11.2 at
# 390-410k, the same code.
CLOBD_PYTHON ?= /usr/bin/python3
PYTHON ?= $(shell for p in $(CLOBD_PYTHON) python3; do \
	$$p -c 'import sys, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint bench faults clean install-service

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
	$(PY) bench/recovery.py

# The long fault campaign: 40 rounds of SIGKILLs under load with its summary table, then
# every fault test (storage, bad input, slow parties, security). `make test` runs a short
# version of the campaign. FAULT_ARGS="--rounds 100 --seed N" to go further or rerun one.
FAULT_ARGS ?= --rounds 40
faults: $(STAMP)
	$(PY) -m tests.faults.campaign $(FAULT_ARGS)
	$(PY) -m pytest tests/faults

clean:
	rm -rf $(VENV) build *.egg-info *.so engine/*.so

# As root: clobd as a systemd service (systemd/clobd.service). Idempotent: re-run it to
# upgrade the application; an existing /etc/clobd/clobd.toml is never overwritten.
#   /opt/clobd/.venv    the application, pip-installed from this checkout (not editable)
#   /etc/clobd/         clobd.toml (root:clobd 0640)
#   /var/lib/clobd      data (StateDirectory=, created by systemd), /run/clobd sockets
# System user and group `clobd`, no home, no login shell. The venv's interpreter must be a
# system-wide one (ProtectHome=yes and User=clobd: not pyenv's under /root, say).
CLOBD_PREFIX := /opt/clobd
CLOBD_UNIT_DIR := /etc/systemd/system

install-service:
	@test "$$(id -u)" = 0 || { echo "install-service: run as root (sudo make install-service)" >&2; exit 1; }
	getent group clobd >/dev/null || groupadd --system clobd
	getent passwd clobd >/dev/null || useradd --system --gid clobd --no-create-home \
		--home-dir /var/lib/clobd --shell /usr/sbin/nologin clobd
	@case "$$(readlink -f $(CLOBD_PYTHON))" in /usr/*|/opt/*) ;; *) echo "install-service:" \
		"CLOBD_PYTHON=$(CLOBD_PYTHON) is not a system-wide interpreter (/usr, /opt)" >&2; exit 1;; esac
	$(CLOBD_PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "install-service: $(CLOBD_PYTHON) is older than 3.11" >&2; exit 1; }
	[ "$$(readlink -f $(CLOBD_PREFIX)/.venv/bin/python)" = "$$(readlink -f $(CLOBD_PYTHON))" ] \
		|| $(CLOBD_PYTHON) -m venv --clear $(CLOBD_PREFIX)/.venv
	$(CLOBD_PREFIX)/.venv/bin/python -m pip install --quiet --upgrade pip
	$(CLOBD_PREFIX)/.venv/bin/python -m pip install --quiet --upgrade .
	install -m 0644 README.md $(CLOBD_PREFIX)/README.md
	install -d -m 0750 -o root -g clobd /etc/clobd
	if [ ! -e /etc/clobd/clobd.toml ]; then \
		cd / && $(CLOBD_PREFIX)/.venv/bin/python $(CURDIR)/systemd/default_config.py > /etc/clobd/clobd.toml.new \
		&& chown root:clobd /etc/clobd/clobd.toml.new && chmod 0640 /etc/clobd/clobd.toml.new \
		&& mv /etc/clobd/clobd.toml.new /etc/clobd/clobd.toml; \
	else echo "install-service: keeping the existing /etc/clobd/clobd.toml"; fi
	STATE_DIRECTORY=/var/lib/clobd RUNTIME_DIRECTORY=/run/clobd \
		$(CLOBD_PREFIX)/.venv/bin/clob serve --check --config /etc/clobd/clobd.toml
	install -d -m 0755 $(CLOBD_UNIT_DIR)
	install -m 0644 systemd/clobd.service $(CLOBD_UNIT_DIR)/clobd.service
	@if [ -d /run/systemd/system ]; then \
		systemctl daemon-reload && echo "installed; start it with: systemctl enable --now clobd"; \
	else \
		echo "installed; systemd is not running here, so nothing was reloaded. On a systemd host:"; \
		echo "  systemctl daemon-reload && systemctl enable --now clobd"; \
		echo "  systemctl status clobd; journalctl -u clobd -f"; \
	fi
