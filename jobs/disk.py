"""How much room the disks a command writes to have left, in the words the console uses.

A full disk shows up deep inside whatever was writing (pyarrow copying a checkpoint,
the raylet's monitor, PIL saving a PNG) as ``[Errno 28] No space left on device``; the
line a user needs says which of raycut's folders sit on that disk and how full it is.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

GIB = 2 ** 30  # what df and the raylet call a GB


def nearest_existing(path: str | Path) -> Path:
    """``path``, or its nearest parent that exists (what a folder yet to be made sits on)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def human_bytes(n: float) -> str:
    for unit, size in (("GB", GIB), ("MB", 2 ** 20), ("KB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def room(path: str | Path) -> tuple[int, int]:
    """(free, total) bytes of the disk under ``path``, free as an unprivileged user sees it."""
    usage = shutil.disk_usage(nearest_existing(path))
    return usage.free, usage.total


def describe_room(path: str | Path) -> str:
    """``"/runs (12.6 GB free of 252.0 GB)"``."""
    free, total = room(path)
    return f"{path} ({human_bytes(free)} free of {human_bytes(total)})"


def is_disk_full(message: str | BaseException) -> bool:
    """Whether an error (or its one-line cause) is a full disk or quota."""
    if isinstance(message, OSError) and message.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(message)
    return "No space left on device" in text or "Disk quota exceeded" in text
