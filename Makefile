# chatpipe: set-up, demo and tests.  `make demo` then `make test` on a fresh machine.

PYTHON ?= python3
VENV   ?= .venv
PORT   ?= 8080
PROMPT ?= Tell me a joke

export LLAMA_VENV ?= $(CURDIR)/.venv-llama

.PHONY: all setup local-server demo test test-python test-emacs emacs-deps bench clean

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
	$(MAKE) --no-print-directory test-python test-emacs

test-python:
	$(VENV)/bin/ruff check backend tests benchmarks
	$(VENV)/bin/pytest

test-emacs:
	tests/run-emacs-tests

## bench: throughput, latency and memory figures (benchmarks/results.md); not a test
bench: setup
	$(VENV)/bin/pip install --quiet -e '.[test,bench]'
	@command -v curl >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq curl >/dev/null; } || echo "curl not found: its column is left out" >&2
	$(VENV)/bin/python -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
	find . -name '*.elc' -delete -o -name __pycache__ -prune -exec rm -rf {} +
