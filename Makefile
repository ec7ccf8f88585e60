# Two commands on a fresh Debian machine: `make demo` and `make test`.
# They create .venv/, install the package with its test extras, and install
# Debian's gnupg, rnp and sq (and chromium for the browser tests) when missing.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
HOME_DIR ?= var
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test fuzz test-dates lint fmt bench bench-quick bench-scale system-deps browser-deps deploy-deps \
	datefudge-deps clean

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory system-deps
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV) || { \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

# rnp (the OpenPGP engine inside Thunderbird) and Sequoia's sq: tests/e2e/test_readers.py
# opens every request with them next to gpg, as independent readers.
system-deps:
	@command -v gpg >/dev/null 2>&1 || { echo "installing gnupg"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq gnupg; }
	@{ command -v rnp && command -v sq; } >/dev/null 2>&1 || { echo "installing rnp and sq"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq rnp sq; }

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

# Debian's datefudge for make test-dates (why not libfaketime: see test-dates below).
datefudge-deps:
	@ls /usr/lib/*/datefudge/datefudge.so >/dev/null 2>&1 || { \
	  echo "installing datefudge"; $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq datefudge; }

demo: $(STAMP)
	$(VENV)/bin/securemail demo --home $(HOME_DIR)

test: $(STAMP) browser-deps deploy-deps
	$(PY) -m pytest -q -n 2 --dist loadgroup

# The route fuzz test (tests/test_fuzz_routes.py) with many more examples than `make test`
# gives it: random bodies, charsets and nestings at every route as each role.
FUZZ_EXAMPLES ?= 2000
fuzz: $(STAMP)
	SECUREMAIL_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q tests/test_fuzz_routes.py

# The whole suite with the system's wall clock moved, once per moment (python -m tests.moments
# --list names them; each is found relative to today, so the list stays meaningful). An offset,
# not an absolute start, so gpg, gpg-agent, chromium and nginx (children of pytest) share its
# timeline. Nothing is left out: the whole suite, browser and nginx tests included, runs at
# every moment. One moment: make test-dates DATES=dst-spring.
# Why datefudge and not libfaketime (Debian's faketime 0.9.10): datefudge moves only the wall
# clock (time, gettimeofday, CLOCK_REALTIME), which is what a date is. libfaketime also moves
# CLOCK_MONOTONIC, and then every timed wait in Python (threading.Timer, Event.wait: a
# sem_clockwait on the kernel's real monotonic clock) waits for the whole offset, so gpg's
# watchdog never fires; with FAKETIME_DONT_FAKE_MONOTONIC=1 it answers time.sleep (an absolute
# clock_nanosleep) with EINVAL instead. Both measured; see the issue 16 note.
DATES ?= year-on dst-spring dst-autumn new-years-eve kings-day
test-dates: $(STAMP) browser-deps deploy-deps datefudge-deps
	@lib=$$(ls /usr/lib/*/datefudge/datefudge.so | head -n 1); \
	for m in $(DATES); do \
	  ahead=$$($(PY) -m tests.moments $$m) || exit 2; \
	  echo "== make test-dates: $$($(PY) -m tests.moments --list | grep "^$$m ") ($$ahead s ahead)"; \
	  DATEFUDGE=$$((-ahead)) LD_PRELOAD="$$lib" \
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

# Work lists and the request page with 1,000,000 requests (docs/performance.md): the first
# run builds the home (minutes; cached in benchmarks/.cache/), later runs reuse it.
bench-scale: $(STAMP)
	mkdir -p benchmarks/out
	SECUREMAIL_BENCH_SCALE=1 $(PY) -m benchmarks --output benchmarks/out/worklist.json worklist

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
