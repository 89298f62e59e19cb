# fiscalbox: `make demo` and `make test` work on a fresh machine; both set everything up first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
MPY    := $(VENV)/bin/micropython

.PHONY: setup system demo test test-python test-micropython hil bench lint clean

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

# The end-to-end bodies of tests/hil against a real box on a rig (they run against the virtual box in `make test`).
hil: setup
	@if [ -z "$$FISCALBOX_HIL_PORT$$LG_ENV" ] || [ -z "$$FISCALBOX_HIL_KEY" ]; then \
	  echo "error HIL_TARGET: make hil needs FISCALBOX_HIL_PORT (the box's serial port, or LG_ENV a labgrid environment) and FISCALBOX_HIL_KEY (an operator key PEM enrolled on it); see tests/hil/README.md" >&2; \
	  exit 2; fi
	FISCALBOX_HIL_REAL=1 $(PY) -m pytest tests/hil

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
