# chatpipe: set-up, demo and tests.  `make demo` then `make test` on a fresh machine.

PYTHON ?= python3
VENV   ?= .venv
PORT   ?= 8080
PROMPT ?= Tell me a joke

export LLAMA_VENV ?= $(CURDIR)/.venv-llama

.PHONY: all setup local-server demo tools-demo test test-all test-python test-emacs emacs-deps bench clean test-gateway

all: setup

## setup: the project's venv with chatpipe (editable) and the test tools
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

## local-server: llama-cpp-python's server and the gemma3 270M model (cached build)
local-server:
	scripts/install-local-server

## demo: stream a real answer from the local model into the terminal
demo: setup local-server
	scripts/local-server run --port $(PORT) --log local-server.log -- \
	    $(VENV)/bin/chatpipe send local --url http://127.0.0.1:$(PORT)/v1/chat/completions -m "$(PROMPT)"

## tools-demo: a scripted local model calls the real MCP server mcp-server-time
## through chatpipe send --tools mcp:time (no API key, no network)
tools-demo: setup
	$(VENV)/bin/python scripts/tools-demo

## emacs-deps: emacs-nox, package-lint and markdown-mode, installed with apt when root
EMACS_PACKAGES = emacs-nox elpa-package-lint elpa-markdown-mode
emacs-deps:
	@if command -v emacs >/dev/null && [ -d /usr/share/emacs/site-lisp/elpa-src ] \
	    && ls -d /usr/share/emacs/site-lisp/elpa-src/package-lint-* >/dev/null 2>&1 \
	    && ls -d /usr/share/emacs/site-lisp/elpa-src/markdown-mode-* >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	    echo "installing $(EMACS_PACKAGES) with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(EMACS_PACKAGES) >/dev/null; \
	else \
	    echo "The Emacs tests need $(EMACS_PACKAGES): sudo apt-get install -y $(EMACS_PACKAGES)" >&2; \
	    exit 1; \
	fi

## test: every test, Python and Emacs, including the real local model
test: setup local-server emacs-deps
	@$(MAKE) --no-print-directory test-all

## test-all: both suites (without the set-up), the Emacs one even when the
## Python one fails; prints ruff's verdict, pytest's closing line, the Emacs
## "N passed, N failed" line and, last, their total; fails if either failed.
## The suites' commands can be replaced: make test-all PYTEST='... -x'
RUFF        ?= $(VENV)/bin/ruff check backend tests benchmarks
PYTEST      ?= $(VENV)/bin/pytest
EMACS_TESTS ?= tests/run-emacs-tests
test-all: export RUFF := $(RUFF)
test-all: export PYTEST := $(PYTEST)
test-all: export EMACS_TESTS := $(EMACS_TESTS)
test-all:
	scripts/run-tests

test-python:
	$(RUFF)
	$(PYTEST)

test-emacs:
	$(EMACS_TESTS)

## test-gateway: chatpipe through the LiteLLM proxy (tests/test_gateway.py), in a
## venv of its own (.venv-gateway: chatpipe and tests/gateway-requirements.txt,
## a large install kept out of .venv).  As root (where unshare works), the test
## runs in a network namespace that has only loopback: nothing reaches the internet.
GATEWAY_VENV ?= .venv-gateway
GATEWAY_TEST ?= $(GATEWAY_VENV)/bin/python -m pytest tests/test_gateway.py
test-gateway: $(GATEWAY_VENV)/.installed
	@if [ "$$(id -u)" = 0 ] && command -v ip >/dev/null && unshare --net true 2>/dev/null; then \
	    echo "test-gateway: in a network namespace with only loopback (unshare --net)"; \
	    unshare --net sh -c 'ip link set lo up && exec "$$@"' sh $(GATEWAY_TEST); \
	else \
	    echo "test-gateway: not root or no unshare: the test keeps LiteLLM offline by its environment only"; \
	    $(GATEWAY_TEST); \
	fi

$(GATEWAY_VENV)/.installed: pyproject.toml tests/gateway-requirements.txt
	$(PYTHON) -m venv $(GATEWAY_VENV)
	$(GATEWAY_VENV)/bin/pip install --quiet --upgrade pip
	$(GATEWAY_VENV)/bin/pip install --quiet -e '.[test]' -r tests/gateway-requirements.txt
	touch $@

## bench: throughput, latency, memory and Emacs figures (benchmarks/results.md); not a test.
## curl and tmux (and, with Emacs, markdown-mode; with GPTEL_DIR, compat for gptel)
## are installed with apt when root; a section whose tool is missing is left out.
## GPTEL_DIR=/path/to/gptel adds gptel beside chatpipe in the Emacs sections.
bench: setup
	$(VENV)/bin/pip install --quiet -e '.[test,bench]'
	@missing=""; \
	for tool in curl tmux; do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if command -v emacs >/dev/null; then \
	    ls -d /usr/share/emacs/site-lisp/elpa/markdown-mode-* >/dev/null 2>&1 || missing="$$missing elpa-markdown-mode"; \
	    if [ -n "$$GPTEL_DIR" ] && ! ls -d /usr/share/emacs/site-lisp/elpa/compat-* >/dev/null 2>&1; then \
	        missing="$$missing elpa-compat"; fi; \
	fi; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	    echo "installing$$missing with apt-get"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } \
	        || echo "could not install$$missing: the sections that need them are left out" >&2; \
	else \
	    echo "not installed:$$missing (sudo apt-get install -y$$missing): the sections that need them are left out" >&2; \
	fi
	$(VENV)/bin/python -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
	find . -name '*.elc' -delete -o -name __pycache__ -prune -exec rm -rf {} +
