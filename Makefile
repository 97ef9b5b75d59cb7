# One-command set-up: `make demo` runs the main job (a small sweep), `make test` runs the test suite,
# `make test-fast` its fast tier (no HEAR environment, SLURM, DDP, real audio, subprocesses or slow tests).
# Both create .venv on first use (Python 3.10+), install torch and the project, then run.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo encode test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.11.0 torchaudio==2.11.0
	$(PY) -m pip install -q -e '.[test,epic]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m slurm.demo

encode: $(STAMP)
	$(PY) -m aum

test: $(STAMP)
	$(PY) -m pytest -q

FAST := not (hear_env or slurm or ddp or real_audio or subprocess or slow)
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "$(FAST)"

bench: $(STAMP)
	$(PY) benchmarks/encoder_speed.py

clean:
	rm -rf $(VENV) .pytest_cache
