"""A one-line console progress report with rate and ETA, for long work."""

from __future__ import annotations

import sys
import time
from typing import Mapping, Sequence, TextIO


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


class Progress:
    """``[label] 120/400 30% | 2.1 it/s | G 1.23 D 0.25 | ETA 2:13``.

    On a terminal the line rewrites itself; in a log (CI, Ray job logs) a full line is
    printed every ``every`` updates so the log stays readable.
    """

    def __init__(self, label: str, total: int, *, unit: str = "it", every: int = 10, stream: TextIO | None = None,
                 initial: int = 0, in_place: bool | None = None) -> None:
        self.label, self.total, self.unit, self.every = label, total, unit, max(1, every)
        self.stream = stream or sys.stderr
        # in_place=False where other lines interleave (Ray's worker logs): a line that
        # rewrites itself would run into them.
        self.tty = self.stream.isatty() if in_place is None else in_place
        self.start = time.perf_counter()
        # A resumed run starts at ``initial``: the rate (and so the ETA) counts only
        # the work done in this process.
        self.initial = self.done = initial

    def update(self, n: int = 1, values: Mapping[str, float] | None = None) -> None:
        before, self.done = self.done, self.done + n
        # In a log, a line each time ``done`` passes a multiple of ``every``: updates
        # of several units at a time (a batch of images, ten steps) may step over it.
        if self.tty or self.done // self.every > before // self.every or self.done == self.total:
            self._write(values or {})

    def line(self, values: Mapping[str, float], notes: Sequence[str] = ()) -> str:
        """The line; ``notes`` are shown as they are, each in a section of its own."""
        elapsed = time.perf_counter() - self.start
        rate = (self.done - self.initial) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        vals = " ".join(f"{k} {v:.3g}" for k, v in values.items())
        pct = 100 * self.done / max(1, self.total)
        eta_s = format_duration(eta) if eta == eta else "?"
        return (
            f"[{self.label}] {self.done}/{self.total} {pct:3.0f}% | {rate:.2f} {self.unit}/s"
            + (f" | {vals}" if vals else "")
            + "".join(f" | {note}" for note in notes)
            + f" | elapsed {format_duration(elapsed)} ETA {eta_s}"
        )

    def _write(self, values: Mapping[str, float]) -> None:
        self.write_line(self.line(values), final=self.done >= self.total)

    def write_line(self, text: str, *, final: bool) -> None:
        """Show ``text`` (a :meth:`line`): in place on a terminal, ending the line when
        ``final``; as a line of its own in a log."""
        if self.tty:
            self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
