# raycut: the README's two commands.
#   make demo   set up .venv and run the whole pipeline on the embedded default
#   make test   set up .venv and run the test suite
SHELL := bash
.SHELLFLAGS := -eo pipefail -c
# The interpreter of .venv: PYTHON if given, else the quickest Python 3.11 on this
# machine (PATH's, then the distribution's), timed by a short pure-Python loop, else
# python3. Builds differ: pyenv's default build has no profile-guided optimisation,
# Debian's does, and on a 2-core AMD EPYC a tiny `raycut train` spent 11% less CPU
# under Debian's (docs/development.md). The suite is bound by the CPU of Python
# start-up and imports in its ~20 processes per Ray run, so this is its time too.
PYTHON ?=
VENV ?= .venv
PY := $(VENV)/bin/python
# The local package index of these machines prints a warning per package; keep the log readable.
# Only grep's "no lines left" status is ignored; with pipefail a pip failure still stops make.
QUIET_PIP := { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: setup demo test bench lock clean

setup: $(VENV)/.installed

# PICK_PYTHON: print the quickest Python 3.11 that can make a venv (each candidate's
# best of three runs of PY_TIMER, a dict-and-string loop, in ms), else python3.
define PICK_PYTHON
best=; best_ms=; \
for p in $$(type -ap python3.11) /usr/bin/python3.11 /usr/local/bin/python3.11; do \
  [ -x "$$p" ] || continue; \
  ms=$$("$$p" -c "$$PY_TIMER" 2>/dev/null) || continue; \
  echo "  $$p: $$ms ms" >&2; \
  if [ -z "$$best" ] || [ "$$ms" -lt "$$best_ms" ]; then best=$$p; best_ms=$$ms; fi; \
done; \
echo "$${best:-$$(command -v python3)}"
endef
define PY_TIMER
import ensurepip, time, venv
def run():
    t = time.perf_counter(); d = {}
    for i in range(200000):
        d[str(i)] = i * i % 7
    return time.perf_counter() - t
print(round(1000 * min(run() for _ in range(3))))
endef
export PY_TIMER
BASE_PYTHON = if [ -n "$(PYTHON)" ]; then echo "$(PYTHON)"; else \
  echo "choosing the quickest Python 3.11 (PYTHON=... to choose one):" >&2; $(PICK_PYTHON); fi

# requirements.lock pins every package of the resolved set (a constraints file: it pins
# versions, raycut itself comes from this checkout).
$(VENV)/.installed: pyproject.toml requirements.lock
	@py=$$($(BASE_PYTHON)); echo "python for $(VENV): $$py"; "$$py" -m venv $(VENV)
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
	rm -rf .lock-venv && py=$$($(BASE_PYTHON)) && "$$py" -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --upgrade pip 2>&1 | $(QUIET_PIP)
	.lock-venv/bin/python -m pip install -q -c constraints.txt -e '.[test]' 2>&1 | $(QUIET_PIP)
	{ echo "# The whole resolved set that CI and the Makefile install (pip freeze of a fresh"; \
	  echo "# install from constraints.txt; regenerate with 'make lock')."; \
	  .lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^raycut'; } > requirements.lock
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) raycut-demo mlruns mlflow.db .pytest_cache
