"""Timing primitives for benchmarks on any device: medians of repeated calls, their
spread, and the peak memory of a window (CUDA's allocator statistics, or the process's
resident high-water mark on the CPU). The benchmarks themselves live in jobs/bench;
the probe of cut_core.probe uses ``timed_ms`` and ``interleaved_ms`` directly."""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

# A variant whose first call takes this many times fp32's is not timed again.
GIVE_UP_RATIO = 4.0


def sync(device: torch.device | str) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; a CPU does not)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed_ms(fn: Callable[[], object], device: torch.device | str) -> float:
    """Wall milliseconds of one call of ``fn``, the work it queued on the device included:
    the timing primitive of the probe here and of the benchmarks (cut_core.timing, jobs/bench)."""
    t0 = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - t0) * 1000


def interleaved_ms(calls: dict[str, Callable[[], object]], device: torch.device | str, *, rounds: int,
                   warmup: int = 1, give_up_against: str | None = None, seed: int = 0,
                   on_round: Callable[[int, dict[str, float]], None] | None = None,
                   budget_s: float | None = None,
                   ) -> tuple[dict[str, list[float]], tuple[str, ...]]:
    """ms per call of each variant over ``rounds`` rounds; each round calls every
    variant once, in an order shuffled anew each round (seeded). Timed one variant after
    another, the first paid for the machine waking up (thread pool, clock ramp): on an
    Intel Xeon that made fp32 look 1.5x slower than it is, and slow bf16 the winner.
    Rotating a fixed order is not enough either: each variant would always follow the
    same neighbour. ``warmup`` calls each first (one-off set-up); a variant whose first
    call takes more than ``2 * GIVE_UP_RATIO`` times that of ``give_up_against`` is
    emulated: it is not timed again and its list holds that one call. With ``budget_s``
    no round starts once the timed rounds have taken that long (one round at least). Returns
    ({variant: [ms per round]}, variants given up on); ``on_round(r, {variant: ms})``
    after each round."""
    dev = torch.device(device)
    first = {name: timed_ms(call, dev) for name, call in calls.items()}
    limit = first[give_up_against] * GIVE_UP_RATIO * 2 if give_up_against in first else float("inf")
    gave_up = [name for name, ms in first.items() if name != give_up_against and ms > limit]
    live = [n for n in calls if n not in gave_up]
    for _ in range(warmup - 1):
        for name in live:
            calls[name]()
    sync(dev)
    times: dict[str, list[float]] = {n: [] for n in live}
    order, rng = list(live), random.Random(seed)
    started = time.perf_counter()
    for r in range(rounds):
        if r and budget_s is not None and time.perf_counter() - started >= budget_s:
            break
        rng.shuffle(order)
        for name in order:
            times[name].append(timed_ms(calls[name], dev))
        if on_round is not None:
            on_round(r, {n: times[n][-1] for n in live})
    return {n: times[n] if n in times else [first[n]] for n in calls}, tuple(gave_up)


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
