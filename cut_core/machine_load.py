"""How much of the machine other processes took while something was being timed.

A timing taken while other processes want more cores than this one leaves free is not
the machine's: the threads of the timed code wait for cores, and not by the same factor
in every variant. Measured on a 2-core AVX2-only EPYC (2026-12-03), a 2-thread probe of a
slice of G put channels_last at 1.14-1.19x NCHW's time alone, 1.02-1.04x beside one
busy process, and 0.71x in the cache a parallel `make test` left; a 1-thread probe beside
one busy process (a core still free for it) kept 1.15x. So what matters is not whether
the machine is busy but whether the others overflowed the cores the timed threads left
free. That measure saturates (the others can use no more than the machine has), so a
timed process that got under half the CPU its threads asked for counts as crowded too.

Linux only (``/proc/stat``); elsewhere the others' share is unknown and reads as none.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

# Others count as crowding the timed threads once they used more cores than the timed
# threads left free, by a quarter core or 5% of the machine, whichever is more: on a
# quiet 2-core VM the daemons stay under a quarter core, and on a large node packed with
# workers that each keep to their cores (Ray Train's workers probing at once) Ray's own
# processes may take a core or two without taking anyone's.
OVERFLOW_CORES = 0.25
OVERFLOW_SHARE = 0.05
# A timed process that got less CPU than this share of wall time x its threads was
# crowded (quiet: 1.0 for one thread, 0.88 for two on the 2-core EPYC).
MIN_OWN_SHARE = 0.5


def machine_busy_s() -> float | None:
    """Seconds of CPU time every core of the machine has spent not idle since boot:
    user, nice, system, irq, softirq and steal (a hypervisor's steal is time the vCPUs
    could not run either). None where ``/proc/stat`` cannot be read."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not first or first[0] != "cpu" or len(first) < 9:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Load:
    """What a timed window saw: its wall seconds, this process's CPU seconds, and the
    cores that other processes kept busy on average (None: unknown)."""

    wall_s: float
    own_cpu_s: float
    others_cores: float | None
    threads: int  # the threads the timed code asked for
    cores: int

    @property
    def own_share(self) -> float:
        """The CPU this process got over what its threads asked for (wall x threads)."""
        return self.own_cpu_s / (self.wall_s * self.threads) if self.wall_s > 0 and self.threads else 1.0

    @property
    def crowded(self) -> bool:
        """Whether the others overflowed the cores the timed threads left free, or this
        process got under MIN_OWN_SHARE of what it asked for."""
        if self.own_share < MIN_OWN_SHARE:
            return True
        if self.others_cores is None:
            return False
        margin = max(OVERFLOW_CORES, OVERFLOW_SHARE * self.cores)
        return self.others_cores > max(0, self.cores - self.threads) + margin


class LoadWindow:
    """``with LoadWindow(threads) as w: ...`` then ``w.load``: the machine's load over the block."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.load: Load | None = None

    def __enter__(self) -> LoadWindow:
        self._wall, self._cpu, self._busy = time.perf_counter(), time.process_time(), machine_busy_s()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._wall
        own = time.process_time() - self._cpu
        busy = machine_busy_s()
        others = None
        if busy is not None and self._busy is not None and wall > 0:
            # The kernel's tick (10 ms) and our own CPU's rounding make tiny negatives possible.
            others = max(0.0, (busy - self._busy - own) / wall)
        self.load = Load(wall, own, others, self.threads, os.cpu_count() or 1)


__all__ = ["Load", "LoadWindow", "MIN_OWN_SHARE", "OVERFLOW_CORES", "OVERFLOW_SHARE"]
