"""The benches' child processes: fresh interpreters (spawn, so no state of the parent's
torch or allocator comes along) that end when the bench ends, however it ends.

Without this, a bench stopped by ``kill`` (or a job scheduler's SIGTERM, or an OOM kill)
leaves its pool workers training on for up to an hour each, as orphans: a process
pool's workers only stop when their parent tells them to.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import multiprocessing.managers
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """In a child: ask the kernel for SIGTERM when the parent dies (Linux; a no-op
    elsewhere), and leave at once if it already has."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before the request was made
        os._exit(1)


def spawn_pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    """A pool of ``workers`` fresh interpreters that end with this process. Its
    processes start from the thread that submits the first task, which must outlive
    them (the kernel's parent-death signal follows the creating thread)."""
    return concurrent.futures.ProcessPoolExecutor(max(1, workers), mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=die_with_parent)


def spawn_manager() -> multiprocessing.managers.SyncManager:
    """A started multiprocessing manager (shared queues for the pool's workers) that
    ends with this process too; use it as a context manager to shut it down."""
    manager = multiprocessing.managers.SyncManager(ctx=multiprocessing.get_context("spawn"))
    manager.start(die_with_parent)
    return manager
