# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv with the CPU torch wheel and installs perceptrl into it.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test setup warmstart clean

WARMSTART := src/perceptrl/assets/warmstart

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/perceptrl demo

test: $(VENV)/.installed
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Regenerate the shipped warm start from scratch (deterministic given the recipe's seeds).
warmstart: $(VENV)/.installed
	$(VENV)/bin/perceptrl sft recipes/warmstart.yaml train.output_dir=runs/warmstart train.resume=none
	rm -rf $(WARMSTART) && mkdir -p $(WARMSTART)
	cp runs/warmstart/final/* $(WARMSTART)/
	cp runs/warmstart/summary.json $(WARMSTART)/sft_summary.json

clean:
	rm -rf $(VENV) runs
