# Two commands on a fresh Debian machine: `make demo` and `make test`.
# They create .venv/, install the package with its test extras, and install
# Debian's gnupg (and chromium for the browser tests) when missing.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
HOME_DIR ?= var
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint fmt bench bench-quick system-deps browser-deps clean

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory system-deps
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV) || { \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

system-deps:
	@command -v gpg >/dev/null 2>&1 || { echo "installing gnupg"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq gnupg; }

browser-deps:
	@command -v chromium >/dev/null 2>&1 || { echo "installing chromium"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }

demo: $(STAMP)
	$(VENV)/bin/securemail demo --home $(HOME_DIR)

test: $(STAMP) browser-deps
	$(PY) -m pytest -q -n 2 --dist loadgroup

lint: $(STAMP)
	$(VENV)/bin/ruff format --check securemail tests benchmarks
	$(VENV)/bin/ruff check securemail tests benchmarks

fmt: $(STAMP)
	$(VENV)/bin/ruff format securemail tests benchmarks
	$(VENV)/bin/ruff check --fix securemail tests benchmarks

bench: $(STAMP)
	$(PY) -m benchmarks

bench-quick: $(STAMP)
	$(PY) -m benchmarks --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
