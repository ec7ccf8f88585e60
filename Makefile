# Two commands on a fresh Debian machine: `make demo` and `make test`.
# They create .venv/, install the package with its test extras, and install
# Debian's gnupg (and chromium for the browser tests) when missing.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
HOME_DIR ?= var
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-dates lint fmt bench bench-quick system-deps browser-deps deploy-deps \
	faketime-deps clean

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

# Debian's nginx for tests/e2e/test_nginx.py (deploy/nginx/securemail.conf in front of the
# gateway, run unprivileged on a free port). The package would also start a system nginx on
# port 80: on a machine that runs systemd it is stopped and disabled again at once.
deploy-deps:
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || { echo "installing nginx"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq nginx; \
	  [ -d /run/systemd/system ] && $(SUDO) systemctl disable --now nginx || true; }

# Debian's faketime (libfaketime) for make test-dates.
faketime-deps:
	@ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || { echo "installing faketime"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq faketime; }

demo: $(STAMP)
	$(VENV)/bin/securemail demo --home $(HOME_DIR)

test: $(STAMP) browser-deps deploy-deps
	$(PY) -m pytest -q -n 2 --dist loadgroup

# The whole suite with the system clock moved by libfaketime, once per moment (python -m
# tests.moments --list names them; each is found relative to today, so the list stays
# meaningful). An offset, not an absolute start: gpg, gpg-agent, chromium and nginx are
# children of pytest and must share its timeline. Nothing is left out: the whole suite,
# browser and nginx tests included, runs at every moment. One moment: make test-dates
# DATES=dst-spring.
DATES ?= year-on dst-spring dst-autumn new-years-eve kings-day
test-dates: $(STAMP) browser-deps deploy-deps faketime-deps
	@lib=$$(ls /usr/lib/*/faketime/libfaketime.so.1 | head -n 1); \
	for m in $(DATES); do \
	  off=$$($(PY) -m tests.moments $$m) || exit 2; \
	  echo "== make test-dates: $$($(PY) -m tests.moments --list | grep "^$$m ") (FAKETIME=$$off)"; \
	  FAKETIME="$$off" FAKETIME_DONT_FAKE_MONOTONIC=1 LD_PRELOAD="$$lib" \
	    $(PY) -m pytest -q -n 2 --dist loadgroup || exit 1; \
	done

lint: $(STAMP)
	$(VENV)/bin/ruff format --check securemail tests benchmarks
	$(VENV)/bin/ruff check securemail tests benchmarks
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy securemail

fmt: $(STAMP)
	$(VENV)/bin/ruff format securemail tests benchmarks
	$(VENV)/bin/ruff check --fix securemail tests benchmarks

bench: $(STAMP)
	$(PY) -m benchmarks

bench-quick: $(STAMP)
	$(PY) -m benchmarks --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
