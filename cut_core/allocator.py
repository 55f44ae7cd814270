"""Keep freed memory in the process for reuse: glibc's malloc tuned for training on a CPU.

torch's CPU tensors come from malloc, and glibc serves every block above its mmap
threshold (at most 32 MB) with a fresh ``mmap`` and returns it with ``munmap`` when
the tensor is freed. A 256 px CUT step allocates and frees activations and gradients
of 33 MB (64 channels x 256 x 256 x batch 2 in fp32) dozens of times, so each step
made the kernel map, zero and unmap the same memory again: measured on a 2-core AMD
EPYC (2026-12-02), 709k page faults and 1.4 s of system time in an 8.9 s fp32 CUT
step. With mmap and trimming off, freed blocks stay in the heap and the next step
reuses them: no faults a step once the heap has grown, and the step 0.89x its time
(bf16 channels_last 0.95x, FastCUT fp32 0.93x; a 2048x1024 translation 0.59x in
fp32; docs/benchmarks.md). jemalloc or tcmalloc do the same through LD_PRELOAD; this
needs nothing installed.

Threads: glibc gives each thread that allocates its own arena, whose heaps are at
most 64 MB and are unmapped when empty, so a training loop in a thread (Ray Train
runs it in one) faulted as before. One arena for the whole process (``M_ARENA_MAX``
1) fixes that for threads that start allocating after the setting: ``mallopt`` for
this process from here on, and the same settings as glibc's environment variables
(``worker_env``) for processes started later, such as Ray's workers, which read them
before their first allocation.

The cost: a process keeps its peak heap (resident memory does not shrink after a
peak), which a training or translation process reaches again at its next step anyway.
``RAYCUT_MALLOC=default`` leaves malloc as it is; elsewhere than glibc (macOS, musl)
nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import threading

OPT_OUT_ENV = "RAYCUT_MALLOC"  # "default": leave malloc as it is
# (mallopt parameter from glibc's malloc.h, its value, the environment variable, its value)
_SETTINGS = (
    (-4, 0, "MALLOC_MMAP_MAX_", "0"),  # M_MMAP_MAX: no block gets an mmap of its own
    # M_TRIM_THRESHOLD: never give the heap's top back. mallopt takes an int, which glibc
    # stores as a size_t: -1 is "never" (2**31 - 1 would trim above 2 GB, and a
    # 2048x1024 translation's heap is larger); the variable is read as a size_t (1 TiB).
    (-1, -1, "MALLOC_TRIM_THRESHOLD_", str(2**40)),
    (-8, 1, "MALLOC_ARENA_MAX", "1"),  # M_ARENA_MAX: threads allocate from the main heap
)

_lock = threading.Lock()
_done: str | None = None


def _why_not() -> str | None:
    """Why malloc is left alone here, or None where it is tuned."""
    if os.environ.get(OPT_OUT_ENV, "").strip().lower() == "default":
        return f"glibc default ({OPT_OUT_ENV}=default)"
    libc_name, _ = platform.libc_ver()
    if platform.system() != "Linux" or libc_name != "glibc":
        return f"unchanged: not glibc ({platform.system()}{' ' + libc_name if libc_name else ''})"
    return None


def keep_freed_memory() -> str:
    """Tune this process's malloc (once; later calls return the first answer) and
    say what was done, for the run's log: ``"glibc: freed memory kept for reuse (mmap
    off, trim off, one arena)"``, ``"glibc default (RAYCUT_MALLOC=default)"``, or why
    nothing changed."""
    global _done
    with _lock:
        if _done is None:
            _done = _why_not() or _mallopt()
        return _done


def _mallopt() -> str:
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError) as e:
        return f"unchanged: no mallopt ({e})"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    refused = [env for param, value, env, _ in _SETTINGS if mallopt(param, value) != 1]  # 1: accepted
    if refused:
        return f"unchanged: mallopt refused {', '.join(refused)}"
    return "glibc: freed memory kept for reuse (mmap off, trim off, one arena)"


def leave_as_it_comes() -> None:
    """For a process that must run with glibc's malloc as it comes (a benchmark's
    baseline, as the reference code runs): call before anything else here; later
    ``keep_freed_memory`` calls then change nothing."""
    os.environ[OPT_OUT_ENV] = "default"


def worker_env() -> dict[str, str]:
    """The same settings as environment variables, for processes started later (Ray's
    workers); empty where malloc is left alone. glibc reads them at its first
    allocation, so they must be in the process's environment when it starts."""
    if _why_not():
        return {}
    return {env: value for _, _, env, value in _SETTINGS}
