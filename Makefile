# raycut: the README's two commands.
#   make demo   set up .venv and run the whole pipeline on the embedded default
#   make test   set up .venv and run the test suite
SHELL := bash
.SHELLFLAGS := -eo pipefail -c
# The interpreter of .venv: PYTHON if given, else the distribution's Python 3.11
# (/usr/bin/python3.11) where it can make venvs, else python3.11 on PATH, else python3.
# Builds differ: pyenv's default build has no profile-guided optimisation (its
# CONFIG_ARGS say so); Debian's build flags are its own, and it measured faster. On a
# 2-core AMD EPYC without AVX-512, a tiny 10-step `raycut train` (about 20 processes)
# took 82-83 CPU-seconds under Debian's 3.11 and 91-95 under pyenv's default build,
# and importing torch, MLflow or ray.train 10-30% less (docs/development.md). The
# suite is bound by that kind of CPU, so this is its time too.
PYTHON ?= $(shell for p in /usr/bin/python3.11 python3.11 python3; do \
  command -v $$p >/dev/null && $$p -c "import ensurepip, venv" 2>/dev/null && { command -v $$p; break; }; done)
VENV ?= .venv
PY := $(VENV)/bin/python
# The local package index of these machines prints a warning per package; keep the log readable.
# Only grep's "no lines left" status is ignored; with pipefail a pip failure still stops make.
QUIET_PIP := { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: setup demo test bench lock clean

setup: $(VENV)/.installed

# requirements.lock pins every package of the resolved set (a constraints file: it pins
# versions, raycut itself comes from this checkout).
$(VENV)/.installed: pyproject.toml requirements.lock
	$(if $(PYTHON),,$(error no Python 3.11 that can make venvs found: install python3.11 (and its venv module) or pass PYTHON=/path/to/python3.11))
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | $(QUIET_PIP)
	$(PY) -m pip install -q -c requirements.lock -e '.[test]' 2>&1 | $(QUIET_PIP)
	$(PY) -c "import torch, torchvision, ray, mlflow, safetensors; print('installed torch', torch.__version__, 'ray', ray.__version__, 'mlflow', mlflow.__version__)"
	touch $@

demo: setup
	$(VENV)/bin/raycut demo

# Two pytest workers: most tests wait on a Ray start, a subprocess or MLflow for much of
# their time, so on 2 cores the suite takes about 0.6x its time in one process
# (docs/development.md), handed out one at a time, the costliest first (tests/conftest.py).
# loadgroup: the autoscaling cluster's tests (xdist_group "cluster") go to one worker
# together, so the cluster starts once; it runs beside the other worker's tests.
test: setup
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=25 tests

bench: setup
	$(VENV)/bin/raycut bench train --out bench-train.json

# Re-resolve from the top-level pins (constraints.txt) in a scratch venv and write the lock.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --upgrade pip 2>&1 | $(QUIET_PIP)
	.lock-venv/bin/python -m pip install -q -c constraints.txt -e '.[test]' 2>&1 | $(QUIET_PIP)
	{ echo "# The whole resolved set that CI and the Makefile install (pip freeze of a fresh"; \
	  echo "# install from constraints.txt; regenerate with 'make lock')."; \
	  .lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^raycut'; } > requirements.lock
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) raycut-demo mlruns mlflow.db .pytest_cache
