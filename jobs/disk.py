"""How much room the disks a command writes to have left, in the words the console uses.

A full disk shows up deep inside whatever was writing (pyarrow copying a checkpoint,
the raylet's monitor, PIL saving a PNG) as ``[Errno 28] No space left on device``; the
line a user needs says which of raycut's folders sit on that disk and how full it is.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from cut_core.errors import RaycutError
from pipelines.translate_io import TMP_SUFFIX  # what a rerun sweeps up as a partial file

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


def full_disk_error(what: str, folder: str | Path, fix: str) -> RaycutError:
    """The one line for a folder whose disk is full: ``what`` names it for the user."""
    return RaycutError(f"{what} is full: {describe_room(folder)}; free space on it or {fix}")


def write_whole(path: Path, text: str) -> None:
    """``text`` into ``path`` through a temporary name and a rename: whole or not at
    all, so that a full disk leaves no empty file behind (an empty spec would block its
    run's name for good)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        tmp.write_text(text)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
