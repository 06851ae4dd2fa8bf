# Sobre: the two commands a newcomer needs are `make demo` and `make test`.
# Both create .venv, install what they need (pip from PyPI; Debian packages with apt-get when
# this user may), fetch the real sample data into ~/.cache/sobre/samples, and run.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SOBRE  := $(VENV)/bin/sobre
STAMP  := $(VENV)/.installed
JOBS   ?= 2

.PHONY: demo test data system venv bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch 2.13.0 is the CPU build on these machines; pin it first so nothing pulls a CUDA build
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[all,dev]"
	touch $(STAMP)

venv: $(STAMP)

system:
	bash scripts/system-deps.sh

data: $(STAMP)
	$(SOBRE) samples fetch

demo: $(STAMP) data
	bash scripts/demo.sh

test: $(STAMP) system data
	$(PY) -m pytest -n $(JOBS) -p no:cacheprovider

bench: $(STAMP) system data
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) demo-workspace bench/out
