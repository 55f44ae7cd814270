"""tests/cpu_per_test.py, the plugin that charges each test the machine's CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A test whose CPU is spent in a child process that is gone before the test ends: the
# kind of cost (a Ray actor, a `raycut` command) that the plugin is there to see.
BURN = '''
import subprocess, sys

def test_burns_in_a_child():
    subprocess.run([sys.executable, "-c", "import time\\nt = time.process_time()\\nwhile time.process_time() - t < 0.6: pass"], check=True)

def test_idles():
    import time
    time.sleep(0.3)
'''


def _pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_burn.py").write_text(BURN)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.cpu_per_test", "-p", "no:cacheprovider",
                           *args, str(tmp_path / "test_burn.py")],
                          cwd=ROOT, env={**os.environ, "RAYCUT_CPU_PER_TEST": str(tmp_path / "cpu.json")},
                          capture_output=True, text=True, timeout=120)


def test_a_childs_cpu_is_charged_to_its_test(tmp_path):
    r = _pytest(tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = {row["test"].split("::")[-1]: row for row in json.loads((tmp_path / "cpu.json").read_text())}
    assert set(rows) == {"test_burns_in_a_child", "test_idles"}
    # The child's 0.6 CPU-seconds and its start are counted; other processes of this
    # machine (the suite's other worker) can only add, so the bound is from below.
    assert rows["test_burns_in_a_child"]["cpu_s"] >= 0.5, rows
    assert rows["test_idles"]["wall_s"] >= 0.3
    assert "CPU per test" in r.stdout and "test_burns_in_a_child" in r.stdout


def test_it_refuses_xdist(tmp_path):
    r = _pytest(tmp_path, "-n", "2")
    assert r.returncode != 0 and "without -n" in r.stdout + r.stderr
