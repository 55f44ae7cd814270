"""Shared fixtures: tiny configs (ngf 8, 32 px) so the suite runs in minutes on 2 cores."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest
import torch

from cut_core import CUTConfig
from cut_core.config import TINY_OVERRIDES
from jobs.ray_runtime import LOCAL_RAY_ENV

# `make test` runs two pytest workers (pytest-xdist) on a 2-core machine: a thread each,
# here and in every process a test starts (commands, Ray's workers: raycut's defaults
# honour OMP_NUM_THREADS, cut_core.cores). Two torch threads in a command beside the
# other worker's test wait on each other at every parallel region: on the 2-core Xeon
# with AMX (2026-12-06), `raycut bench train`'s test took 36 s and 38 CPU-seconds beside
# one busy core, 23 s and 18 CPU-seconds with one thread.
if "PYTEST_XDIST_WORKER" in os.environ:
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
else:
    torch.set_num_threads(2)
# Every Ray a test starts (in process, `ray start`, ray.cluster_utils) as `raycut` starts
# its local one: without idle workers prestarted (jobs.ray_runtime.LOCAL_RAY_ENV).
os.environ.update(LOCAL_RAY_ENV)
# The suite's probes of `auto` (cut_core.hardware) go to a cache of their own, shared by
# both pytest workers: a probe taken beside the other worker's tests must not settle the
# fast paths of the user's later runs in ~/.cache/raycut.
if "RAYCUT_CACHE" not in os.environ:
    _run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())
    os.environ["RAYCUT_CACHE"] = os.path.join(tempfile.gettempdir(), f"raycut-test-cache-{_run}")
# One counted probe settles it there (a user's cache gathers three): the suite's `auto`
# runs test what auto does with a probe, not how the cache gathers them, which
# tests/test_hardware.py tests with its own counts. A probe costs 1-7 s of a core.
os.environ.setdefault("RAYCUT_PROBES", "1")

# The suite's timeouts and waits catch hangs; none of them is a speed check. A shared
# 2-core VM runs the same suite 2-3x slower on its slow hours than on its quick ones
# (the family-23 AVX2-only EPYC: 818 s of tests on a quick hour; 1874-2129 s on
# 2026-12-04, when CI's run failed only because the demo test's 600 s timeout ran out,
# 3x that test's quick-hour 200 s). So each is written as what the wait needs on a
# quick hour, times this factor (RAYCUT_TEST_PATIENCE to change it).
PATIENCE = float(os.environ.get("RAYCUT_TEST_PATIENCE", "3"))


def patience(seconds: float) -> float:
    """A timeout of ``seconds`` on a quick hour, stretched for the slow ones."""
    return seconds * PATIENCE


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The costliest tests first (``@pytest.mark.cost(seconds)``), the rest in file order.

    `make test` hands tests to its two workers one at a time (``--dist loadgroup``: each
    test is a unit of its own, except the autoscaling cluster's tests: one unit, handed
    out where its costliest test sorts), so this is longest-first
    scheduling: the few tests of 1-3 minutes start at once on both workers and the many
    short ones fill the gaps, instead of one worker ending the run alone on a 3-minute
    test while the other idles (what ``--dist loadfile`` did: whole files, in name
    order). The sort is stable and the same on every worker, as xdist requires."""
    def cost(item: pytest.Item) -> float:
        mark = item.get_closest_marker("cost")
        return float(mark.args[0]) if mark else 0.0

    items.sort(key=cost, reverse=True)


UNMARKED_LONG_S = 45.0
_unmarked_long: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # Runs where the reports arrive (xdist's controller too), so the summary below sees
    # the tests of every worker: a long test without a cost mark would start late.
    if report.when == "call" and report.duration > UNMARKED_LONG_S and "cost" not in report.keywords:
        _unmarked_long.append(f"{report.nodeid} ({report.duration:.0f} s)")


def pytest_terminal_summary(terminalreporter) -> None:
    if _unmarked_long:
        terminalreporter.write_line(f"tests over {UNMARKED_LONG_S:.0f} s without @pytest.mark.cost (they start late in "
                                    f"`make test`; give them one): " + ", ".join(_unmarked_long), yellow=True)


def tiny(preset: str = "cut", **overrides: object) -> CUTConfig:
    """A preset shrunk for tests (CUTConfig.tiny): ngf/ndf 8, 3 blocks, 32 px crops,
    batch 2, fp32 NCHW unless a test asks (auto would pick bf16 on some CPUs; the tests
    of auto ask for it)."""
    return CUTConfig.tiny(preset, **overrides)


@pytest.fixture(autouse=True)
def _ctrl_c_left_as_found():
    """Every test leaves Ctrl-C's handler as it found it. A handler left behind (Ray
    Train's and Ray Tune's fit() install their own) turns a later test's SIGINT into
    something else: once a translate test's Ctrl-C raised nothing and its job ran to the
    end (2026-12-07, cause not found). This names the test that left one, and puts the
    first back."""
    before = signal.getsignal(signal.SIGINT)
    yield
    after = signal.getsignal(signal.SIGINT)
    if after is not before:
        signal.signal(signal.SIGINT, before)
        pytest.fail(f"the test left a SIGINT handler behind ({after!r}, was {before!r})")


@pytest.fixture
def images() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    b = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    return a, b


@pytest.fixture(scope="session")
def _ray_session():
    """Shuts down, at the end of the suite, the local Ray that ``local_ray`` shares."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def local_ray(_ray_session):
    """A real local Ray (4 logical CPUs on any machine: trainers or translation actors
    plus their Ray Data feed), started by the first test that asks and shared by the
    rest: a start and a stop cost ~8 s on 2 cores. A test that needs another Ray (a
    multi-node cluster) shuts this one down first (``no_local_ray``); the next test
    that asks starts it again."""
    import ray

    if not ray.is_initialized():
        # raycut's trainers and translation actors get their malloc settings from their
        # own runtime env (jobs.ray_runtime.compute_runtime_env), on this Ray as on any.
        # Without the dashboard: nothing these tests run in process needs it (two 10-step
        # Ray Train runs passed without it, 9 CPU-s cheaper), and an idle local Ray
        # costs 4.9% of a core without it against 8.7% with it (2026-12-03, the AVX2-only
        # EPYC): two shared Rays, one per pytest worker, idle through much of the suite.
        # raycut's own local Ray keeps its dashboard; the tests that run `raycut` as a
        # command (the demo, tune, the cluster) run that one.
        ray.init(address="local", num_cpus=4, log_to_driver=False, include_dashboard=False)
    yield
    _cpus_back_or_restart()


def _cpus_back_or_restart(grace_s: float = patience(20.0)) -> None:
    """After a test on the shared Ray: wait until every CPU is free again, else stop
    that Ray (the next test that asks starts a clean one), so that no test's job waits
    behind actors an earlier test left. Seen once in `make test`: a translate test behind
    the actors of a failed Ray Train run, which Ray Train's leftover SIGINT handler kept
    alive (fixed in `jobs.ray_runtime.train_run_released`; this stays as the guard)."""
    import ray

    if not ray.is_initialized():
        return
    held = cpus_held(grace_s)
    if held:
        print(f"conftest: {held:g} CPUs still held after the test: restarting the shared local Ray")
        ray.shutdown()


def cpus_held(within_s: float) -> float:
    """The CPUs of this process's Ray that are still held after waiting up to
    ``within_s`` for all of them to come free (0 as soon as they have)."""
    import ray

    total = ray.cluster_resources().get("CPU", 0.0)
    deadline = time.monotonic() + within_s
    while (held := total - ray.available_resources().get("CPU", 0.0)) > 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    return held


@contextlib.contextmanager
def small_disk(folder, size: str):
    """A real disk of ``size`` (a tmpfs, "16k") mounted at ``folder`` for the block, to
    fill: yields a function that resizes it ("4m"). Skips the test where this machine
    gives no right to mount (not root)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                 capture_output=True, text=True)
    except FileNotFoundError:  # no mount command at all
        pytest.skip("a small tmpfs to fill needs the mount command")
    if mounted.returncode:
        pytest.skip(f"a small tmpfs to fill needs mount rights here: {mounted.stderr.strip()}")

    def resize(new: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={new}", str(folder)], check=True)

    try:
        yield resize
    finally:
        subprocess.run(["umount", "-l", str(folder)])


def free_ports(n: int) -> list[int]:
    """n distinct ports that were free a moment ago (the OS's choice for port 0)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def no_local_ray() -> None:
    """Stop the shared local Ray, if one runs, before a test connects to another."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


# The same tiny model as ``tiny()``, as `raycut train --set` items.
TINY_SETS = tuple(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in TINY_OVERRIDES.items())


def kill_train_workers_when(*ready, timeout: float = patience(240.0)) -> threading.Thread:
    """In the background: for each predicate in ``ready`` in turn, wait until it is
    true, then SIGKILL one Ray Train worker process (a real crash, not an exception) of
    this process's own Ray: one of its descendants, never a worker of another Ray on
    the machine. The thread's ``killed`` attribute lists the pids, one per kill."""
    import psutil

    def kill_one() -> int | None:
        for proc in psutil.Process().children(recursive=True):
            try:
                cmd = proc.cmdline()
            except psutil.Error:
                continue  # exited meanwhile
            if cmd and cmd[0].startswith("ray::RayTrainWorker"):
                proc.kill()
                return proc.pid
        return None

    def run() -> None:
        deadline = time.monotonic() + timeout
        for predicate in ready:
            while time.monotonic() < deadline:
                if predicate() and (pid := kill_one()) is not None:
                    thread.killed.append(pid)
                    break
                time.sleep(0.1)

    thread = threading.Thread(target=run, daemon=True)
    thread.killed = []
    thread.start()
    return thread
