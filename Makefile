# fiscalbox: `make demo` and `make test` work on a fresh machine; both set everything up first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
MPY    := $(VENV)/bin/micropython

.PHONY: setup system demo test test-python test-micropython bench lint clean

setup: system $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# What pip cannot install: SoftHSM2 (the PKCS#11 token the key-store tests run against).
system:
	@command -v softhsm2-util >/dev/null 2>&1 || { \
	  echo "installing softhsm2 (apt-get)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq softhsm2 >/dev/null; }

demo: setup
	$(PY) -m host_tools.demo

test: test-python test-micropython

test-python: setup
	$(PY) -m pytest

# The fiscal core's tests again, under MicroPython: the core must run there unchanged.
test-micropython: setup
	$(MPY) tests/core/mp_runner.py

bench: setup
	$(PY) bench/signing.py
	$(PY) bench/journal.py
	$(PY) bench/crash.py --kills 1000
	$(PY) bench/printing.py
	$(PY) bench/fdms.py
	$(PY) bench/link.py
	$(PY) bench/link_fuzz.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy firmware hardware host_tools sim

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis
