"""A pytest plugin that charges each test the CPU the whole machine spent while it ran.

    pytest -p tests.cpu_per_test -p no:cacheprovider tests       # one process, no -n

Why the machine's and not the process's: most of a test's CPU is spent outside pytest,
in the Ray daemons, actors and trainers it starts and in the `raycut` commands it runs,
and many of those are gone before the test ends, so no per-process count sees them.
`/proc/stat`'s busy time does, as long as nothing else runs: use it on an idle machine,
and in one pytest process (under xdist the tests of the two workers overlap).

At the end it prints the costliest tests and writes every test's CPU-seconds and wall
seconds as JSON to ``$RAYCUT_CPU_PER_TEST`` (default ``cpu-per-test.json``).
"""

from __future__ import annotations

import json
import os
import time

import pytest

from cut_core.machine_load import machine_busy_s

SHOWN = 15
_started: dict[str, tuple[float, float]] = {}
_rows: list[tuple[str, float, float]] = []


def pytest_configure(config: pytest.Config) -> None:
    if getattr(config.option, "numprocesses", None):
        raise pytest.UsageError("tests.cpu_per_test reads the whole machine's CPU: run it without -n")
    if machine_busy_s() is None:
        raise pytest.UsageError("tests.cpu_per_test reads /proc/stat, which this machine does not have (Linux only)")


def pytest_runtest_logstart(nodeid: str, location: object) -> None:
    _started[nodeid] = (machine_busy_s(), time.monotonic())


def pytest_runtest_logfinish(nodeid: str, location: object) -> None:
    busy, start = _started.pop(nodeid)  # set-up to teardown, fixtures included
    _rows.append((nodeid, machine_busy_s() - busy, time.monotonic() - start))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _rows:
        return
    total_cpu, total_wall = sum(r[1] for r in _rows), sum(r[2] for r in _rows)
    terminalreporter.section("CPU per test (the whole machine's, /proc/stat)")
    terminalreporter.write_line(f"{len(_rows)} tests: {total_cpu:.0f} CPU-seconds in {total_wall:.0f} s")
    terminalreporter.write_line(f"{'CPU-s':>7} {'wall s':>7}  test")
    for nodeid, cpu, wall in sorted(_rows, key=lambda r: -r[1])[:SHOWN]:
        terminalreporter.write_line(f"{cpu:7.1f} {wall:7.1f}  {nodeid}")
    out = os.environ.get("RAYCUT_CPU_PER_TEST", "cpu-per-test.json")
    with open(out, "w") as f:
        json.dump([{"test": n, "cpu_s": round(c, 2), "wall_s": round(w, 2)} for n, c, w in _rows], f, indent=1)
    terminalreporter.write_line(f"wrote {out}")
