"""The cores a process may use, and the threads a worker should run.

``os.cpu_count()`` counts the host's CPUs, not the ones this process is given. In a
container started with ``--cpus 4`` on a 64-core host, or under ``taskset``, it still
says 64, and a trainer would start 64 torch threads on 4 cores' worth of quota. More
threads than cores wait on each other at every parallel region (OpenMP's barriers):
measured on a 2-core Xeon (2026-12-06), a full-size FastCUT bench beside one busy
process took 36 s and 38 CPU-seconds with two threads, 23 s and 18 with one. So raycut sizes its defaults by what the kernel lets this
process run: the CPUs of its affinity mask, capped by a cgroup's CPU quota (cgroup v2's
``cpu.max``, v1's ``cpu.cfs_quota_us``), rounded up to whole cores.

``OMP_NUM_THREADS``, where set, is the user's word on threads per process (HPC
schedulers and the test suite set it so that processes sharing cores do not each
start a thread per core); torch honours it, and so do raycut's per-worker defaults.

Pure standard library: it runs before torch is imported, in processes that never
import it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cores() -> int:
    """CPUs this process may run on (affinity), capped by its cgroup's CPU quota; >= 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The cores' worth of CPU time a cgroup quota allows this process (``--cpus 2.5``
    gives 2.5), or None where there is no quota or it cannot be read."""
    for rel in _own_cgroup_paths():
        v2 = root / rel.lstrip("/") / "cpu.max"
        text = _read(v2)
        if text:  # "max 100000" or "250000 100000"
            quota, _, period = text.partition(" ")
            if quota != "max":
                return _ratio(quota, period)
            continue
        for v1 in (root / "cpu" / rel.lstrip("/"), root / "cpu,cpuacct" / rel.lstrip("/")):
            got = _ratio(_read(v1 / "cpu.cfs_quota_us"), _read(v1 / "cpu.cfs_period_us"))  # quota -1: none
            if got is not None:
                return got
    return None


def _ratio(quota: str | None, period: str | None) -> float | None:
    """quota / period of a cgroup file's numbers; None for no quota or text that is not one."""
    try:
        q, p = int(quota or ""), int(period or "")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def thread_cap() -> int | None:
    """``OMP_NUM_THREADS`` as a positive int, or None where unset or unreadable."""
    try:
        n = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return None
    return n if n > 0 else None


def threads_per_worker(workers: int) -> int:
    """Torch threads (and CPUs) for each of ``workers`` processes sharing this machine:
    its usable cores split between them, at most ``OMP_NUM_THREADS`` where set."""
    share = max(1, usable_cores() // max(1, workers))
    cap = thread_cap()
    return min(share, cap) if cap else share


def _own_cgroup_paths() -> list[str]:
    """This process's cgroup paths (``/proc/self/cgroup``), its own first, then "/"
    (inside a container the cgroup namespace shows its root as "/")."""
    paths: list[str] = []
    for line in (_read(Path("/proc/self/cgroup")) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[2] not in paths:
            paths.append(parts[2])
    return paths + ([] if "/" in paths else ["/"])


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, ValueError):
        return None
