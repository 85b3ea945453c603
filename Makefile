# tchat — see README.md. `make run` and `make test` work on a fresh Debian/Ubuntu machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
TCHAT := $(VENV)/bin/tchat
PERF_PROFILE ?= ci
export PERF_PROFILE

.PHONY: help setup system venv web-deps native run test test-web test-unit test-integration test-python-path lint perf-ci \
        test-all test-chat test-load test-latency test-recording test-abuse report \
        services-up services-down services-status down clean

help:
	@echo "make run            set up, then serve tchat on embedded defaults (127.0.0.1:8080)"
	@echo "make test           set up, start services, lint, unit + integration + CI perf profiles"
	@echo "make test-python-path  unit + media tests again on the Python fan-out (make test does)"
	@echo "make test-all       every performance suite (PERF_PROFILE=full for the guide's sizes)"
	@echo "make test-chat|test-load|test-latency|test-recording|test-abuse   one suite"
	@echo "make test-web       the pages in headless Chromium (screenshots, web.json)"
	@echo "make native         build the SFU's native fan-out (needs cargo; optional)"
	@echo "make report         render reports/latest/index.html"
	@echo "make services-up|services-down|services-status   Cassandra, Redis, SeaweedFS"

setup: system venv

system:
	@bash scripts/setup-system.sh

$(VENV)/.installed: pyproject.toml
	@bash scripts/setup-system.sh run
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip==25.3
	@$(PY) -m pip install -q -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed

run: venv web-deps native
	@echo "Go live: open the studio URL below (publisher token for room 'demo' in it);"
	@echo "OBS/WHIP: Authorization: Bearer <the token on the second line>"
	@$(TCHAT) token --room demo --role publisher --identity studio --url
	@SFU_TCP_PORT=$${SFU_TCP_PORT:-8189} $(TCHAT) serve  # ICE over TCP for UDP-blocked viewers

# the SFU's native fan-out (native/: Rust, by maturin); skipped with a note where no cargo
native: venv
	@bash scripts/build-native.sh

# hls.js for the pages, pinned, from npm (scripts/web-deps.sh)
web-deps:
	@bash scripts/web-deps.sh

lint: venv
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy

services-up: setup
	$(TCHAT) services up

services-down down:
	@if [ -x $(TCHAT) ]; then $(TCHAT) services down; fi

services-status: venv
	$(TCHAT) services status

# the browser end-to-end tests of the pages (~45 s): reports/latest/web.json + screens/
test-web: venv web-deps
	$(PY) -m pytest tests/integration/test_web_pages.py tests/integration/test_whip_obs.py \
	  tests/integration/test_sfu_recording.py -q

test-unit: venv native
	$(PY) -m pytest tests/unit -q

test-integration: services-up web-deps native
	$(PY) -m pytest tests/integration -q

# Where the native fan-out is built the tests above ran on it; the unit tests and the
# media ones (the repeated set: SFU, WebRTC, browsers, recording) run again on the Python
# path, the reference and the fallback (issue 18). Nothing to repeat where it is not built.
test-python-path: venv web-deps native
	@if $(PY) -c 'import tchat_fastpath' 2>/dev/null; then \
	  echo "tests again on the Python fan-out (SFU_FASTPATH=python)"; \
	  SFU_FASTPATH=python $(PY) -m pytest tests/unit $$(bash scripts/repeat-tests.sh --list) -q; \
	else echo "the native fan-out is not built: the tests above ran on the Python path"; fi

test: setup web-deps native lint services-up
	$(PY) -m pytest tests/unit tests/integration -q
	@$(MAKE) --no-print-directory test-python-path
	@rc=0; $(MAKE) --no-print-directory perf-ci || rc=$$?; \
	  $(MAKE) --no-print-directory report; exit $$rc

# The named CI profile of every suite that has tests (PERF_PROFILE=ci).
perf-ci:
	@bash scripts/perf-suite.sh --ci-available

test-all: services-up native
	@rc=0; for s in chat load latency recording abuse; do bash scripts/perf-suite.sh $$s || rc=1; done; \
	  $(MAKE) --no-print-directory report; exit $$rc

test-chat: services-up
	@bash scripts/perf-suite.sh chat

test-load: venv native
	@bash scripts/perf-suite.sh load

test-latency: venv native
	@bash scripts/perf-suite.sh latency

test-recording: services-up
	@bash scripts/perf-suite.sh recording

# floods of what unauthenticated clients, viewers and chat users can send (~1 min, loopback)
test-abuse: venv
	@bash scripts/perf-suite.sh abuse

report: venv
	$(TCHAT) perf report

clean:
	rm -rf .tchat reports .pytest_cache .mypy_cache .ruff_cache
