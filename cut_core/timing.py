"""Timing primitives for benchmarks on any device: medians of repeated calls, their
spread, and the peak memory of a window (CUDA's allocator statistics, or the process's
resident high-water mark on the CPU). The benchmarks themselves live in jobs/bench;
the probe of cut_core.hardware uses ``hardware.timed_ms`` directly."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from cut_core.hardware import sync, timed_ms


@dataclass(frozen=True)
class Timing:
    median_ms: float
    times_ms: tuple[float, ...]
    peak_mem_mb: float


def memory_baseline(device: str) -> float:
    """Memory in use now (MB): the start of a peak-memory window."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    return _proc_status_mb("VmRSS")


def memory_peak(device: str, baseline: float) -> float:
    """Peak memory (MB) above ``baseline`` since :func:`_memory_baseline`. On the CPU
    this is the process's resident high-water mark, so it is only meaningful in a
    fresh process: ``bench_train`` runs every variant in its own."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20 - baseline
    return _proc_status_mb("VmHWM") - baseline


def _proc_status_mb(field: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def time_calls(fn: Callable[[], object], *, device: str, warmup: int, iters: int) -> Timing:
    """Median wall time of ``fn`` after ``warmup`` untimed calls, and the peak memory
    of all calls above what was in use before the first."""
    # CPU: count from before the warm-up (the process is fresh, and the resident
    # high-water mark cannot be lowered). CUDA: count from after it, so cuDNN's
    # autotuning workspaces during the warm-up do not count as the step's memory.
    base = memory_baseline(device) if not device.startswith("cuda") else 0.0
    for _ in range(warmup):
        fn()
    sync(device)
    if device.startswith("cuda"):
        base = memory_baseline(device)
    times = [timed_ms(fn, device) for _ in range(iters)]
    return Timing(statistics.median(times), tuple(times), memory_peak(device, base))


def spread(times: Sequence[float]) -> float:
    """Half the interquartile range (ms): the noise band a median moves in."""
    if len(times) < 4:
        return (max(times) - min(times)) / 2
    q = statistics.quantiles(times, n=4)
    return (q[2] - q[0]) / 2
