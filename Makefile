# Sobre: the two commands a newcomer needs are `make demo` and `make test`.
# Both create .venv, install what they need (pip from PyPI; Debian packages with apt-get when
# this user may), fetch the real sample data into ~/.cache/sobre/samples, and run.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SOBRE  := $(VENV)/bin/sobre
STAMP  := $(VENV)/.installed
JOBS   ?= 2

.PHONY: demo test data system venv web bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch 2.13.0 is the CPU build on these machines; pin it first so nothing pulls a CUDA build
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[all,dev]"
	touch $(STAMP)

venv: $(STAMP)

# The workstation front end (web/, vite): built into src/sobre/server/static (git-ignored), which
# `sobre serve` serves. `npm ci` installs the pinned package-lock.json; both steps are skipped when their
# outputs are newer than their inputs (stamps). Without npm a message says so and the browser tests skip.
WEB_STATIC := src/sobre/server/static
WEB_STAMP  := $(WEB_STATIC)/.web-built
WEB_DEPS   := web/node_modules/.package-lock.json
WEB_SRC    := $(shell find web/src web/mock -type f 2>/dev/null) web/index.html web/tsconfig.json \
              web/vite.config.ts web/vite.patches.ts

$(WEB_DEPS): web/package-lock.json web/package.json
	@if command -v npm >/dev/null 2>&1; then \
	  cd web && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.package-lock.json; \
	else echo "npm is not installed: the web front end is not built (install Node.js 20.19 or newer with npm; the browser tests will skip)" >&2; fi

$(WEB_STAMP): $(WEB_DEPS) $(WEB_SRC)
	@if command -v npm >/dev/null 2>&1 && [ -f $(WEB_DEPS) ]; then \
	  (cd web && npm run build --silent) && touch $(WEB_STAMP); \
	else echo "web front end not built (npm or web/node_modules missing); tests/web will skip" >&2; fi

web: $(WEB_STAMP)

system:
	bash scripts/system-deps.sh

data: $(STAMP)
	$(SOBRE) samples fetch

demo: $(STAMP) data web
	bash scripts/demo.sh

test: $(STAMP) system data web
	$(PY) -m pytest -n $(JOBS) -p no:cacheprovider

bench: $(STAMP) system data
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) demo-workspace bench/out $(WEB_STATIC) web/node_modules
