"""A clean console: raycut's own lines and every real problem, without the lines Ray
prints during every run that works.

Ray 2.60 logs at ERROR level, once per actor, that an actor's constructor arguments
sit in the object store (ray-project/ray#53727). Ray Data passes every actor pool its
map function that way and Ray Train its controller's state, so a healthy run of any
raycut command printed several ERROR lines. Ray Train's DatasetManager also sets a
Ray Data option that Ray itself deprecates. Those lines are dropped; anything else
(another ERROR, a traceback, a warning of ours) is printed as before.

A few of Ray's lines are true and worth reading once but repeat for as long as they hold
(the raylet says every 10 s that its disk is nearly full): the first is said once, in
raycut's words with what to do, and the rest are dropped (:func:`tidy`).

Two routes reach the console: the C++ log of this process's own core worker writes
to file descriptor 2 directly, and the logs of Ray's worker processes arrive through
Ray's log monitor. Both are filtered, line by line.
"""

from __future__ import annotations

import atexit
import functools
import os
import re
import sys
import threading

NOISE = (
    re.compile(r"core_worker\.cc:\d+: Actor .* has constructor arguments in the object store and max_restarts > 0"),
    re.compile(r"RayDeprecationWarning: `ExecutionOptions\.exclude_resources` is deprecated"),
    re.compile(r"^\s*self\.exclude_resources = exclude_resources\s*$"),  # the second line of that warning
    # raycut turns Ray Data's bars off on purpose: its own progress line has the ETA.
    re.compile(r"Progress bars disabled\. To enable, set `ray\.data\.DataContext"),
    # Printed by Ray Train's cleaner each time Tune (ASHA) stops a trial, as it should.
    re.compile(r"Detected that the Ray Train controller actor \(\w+\) is dead\. Cleaning up placement group"),
    # ... and by the same cleaner while a Ctrl-C aborts the controller (it goes on watching).
    re.compile(r"Failed to query Ray Train Controller actor state\. State API may be temporarily unavailable\."),
    # The raylet's note when Ray Data kills a decode pool at the end of a run that worked
    # while a call to it was still on its way (seen once in ~10 `raycut train` runs).
    re.compile(r"Task MapWorker\(MapBatches\(\w+\)\)\.submit failed\. There are infinite retries remaining.*"
               r"killed by `ray\.kill`"),
    # The raylet's note when it starts more worker processes at once than the node has
    # cores: every Tune trial is a Ray Train run with its own decode actors, so a search
    # of 2 trials at a time on 2 cores starts ~14 (each waits its turn; nothing to do).
    re.compile(r"PYTHON worker processes have been started on node: .*maximum expected startup concurrency"),
)


def is_noise(line: str) -> bool:
    """True for a line Ray prints in a run that works (see the module docstring)."""
    return any(p.search(line) for p in NOISE)


# The raylet's file-system monitor, every 10 s while the disk under Ray's session folder
# is over its threshold (95% by default). Nothing fails until Ray must spill objects, and
# a raycut run spills none on its own data sizes; but a CI host with 12.5 GB free of 252
# printed it 17 times, at ERROR, through one demo run.
DISK_FULL = re.compile(r"file_system_monitor\.cc:\d+: (?P<path>\S+) is over (?P<pct>\d+)% full, "
                       r"available space: (?P<free>[\d.]+) GB; capacity: (?P<cap>[\d.]+) GB")
_said: set[str] = set()
_said_lock = threading.Lock()


def _say_once(key: str, text: str) -> str | None:
    with _said_lock:
        if key in _said:
            return None
        _said.add(key)
    return text


def tidy(line: str) -> str | None:
    """What the console shows for one of Ray's lines: None for noise (:func:`is_noise`) and
    for a repeat of a note already said; a note Ray repeats, the first time, restated as
    one line that says what to do; any other line as it is."""
    if is_noise(line):
        return None
    if m := DISK_FULL.search(line):
        # The session folder's parent is what a user recognises (and what RAY_TMPDIR moves).
        root = os.path.dirname(m["path"].rstrip("/")) or m["path"]
        end = "\r" if line.endswith("\r") else "\n"
        return _say_once(f"disk {root}", f"raycut: warning: the disk under {root} is over {m['pct']}% full "
                                 f"({float(m['free']):.1f} GB free of {float(m['cap']):.0f} GB): Ray fails any task "
                                 f"that must spill objects there. Free space on it, or set RAY_TMPDIR to a folder "
                                 f"on a roomier disk.{end}")
    return line


_installed = False


def filter_stderr() -> None:
    """Route file descriptor 2 of this process through a line filter (once per process,
    from the ``raycut`` command only: a library caller keeps its own streams).

    C++ logging writes to the descriptor, not to ``sys.stderr``, so only a pipe in front
    of it sees those lines. Python's ``sys.stderr`` moves to a copy of the console's
    descriptor: progress lines still redraw on a terminal, unfiltered and unbuffered.
    Set RAYCUT_RAW_CONSOLE=1 to see every line."""
    global _installed
    if _installed or os.environ.get("RAYCUT_RAW_CONSOLE"):
        return
    _installed = True
    sys.stderr.flush()
    console = os.dup(2)
    sys.stderr = os.fdopen(os.dup(console), "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace")
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def show(data: bytes) -> None:
        try:
            os.write(console, data)
        except OSError:  # the console is gone (a closed terminal): keep draining the pipe
            pass

    def pump() -> None:
        pending = b""
        while chunk := os.read(read_end, 65536):
            try:
                # A line ends at \n, or at \r (a progress line redrawn in place).
                *lines, pending = LINE_END.split(pending + chunk)
                out = b"".join(_tidy_bytes(line) for line in lines)
                if pending and not CPP_LOG_START.match(pending):  # not a log line in the making: show it now
                    out, pending = out + pending, b""
            except Exception:  # noqa: BLE001 - never stop pumping: a full pipe would block every writer
                out, pending = pending + chunk, b""
            if out:
                show(out)
        if pending:
            show(pending)

    thread = threading.Thread(target=pump, name="raycut-console", daemon=True)
    thread.start()

    def drain() -> None:  # at exit (after Ray's own shutdown, registered later): the last lines
        os.dup2(console, 2)  # closes the pipe's last write end here: the pump reads its end
        thread.join(timeout=5)  # a child that still holds the pipe open must not hang the exit

    atexit.register(drain)


def _tidy_bytes(line: bytes) -> bytes:
    text = line.decode(errors="replace")
    shown = tidy(text)
    if shown is None:
        return b""
    return line if shown is text else shown.encode()


LINE_END = re.compile(rb"(?<=[\r\n])")
# The start of a line of Ray's C++ log ("[2026-11-30 02:55:44,898 E ...") or a prefix of it.
CPP_LOG_START = re.compile(rb"^\[(\d{1,4}(-\d{0,2})?)?$|^\[\d{4}-")


def filter_worker_logs() -> None:
    """Drop :data:`NOISE` from what Ray forwards to this driver (call after ``ray.init``,
    which installs Ray's printer): the raylet's notes to the driver, and the worker logs
    when Ray forwards them (``log_to_driver``). With a Ray whose internals moved this
    does nothing: the logs print as Ray prints them."""
    try:
        from ray._private import worker
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return
    if not callable(getattr(worker, "print_to_stdstream", None)):
        return
    # Once per process, however many Rays it starts: a second call wraps Ray's own.
    ray_print = getattr(worker.print_to_stdstream, "__wrapped__", worker.print_to_stdstream)

    @functools.wraps(ray_print)
    def print_without_noise(data: dict, ignore_prefix: bool) -> None:
        lines = []
        for line in data.get("lines", []):
            shown = tidy(line)
            if shown is line:
                lines.append(line)
            elif shown is not None:  # raycut's own words: without Ray's "(raylet)" prefix
                print(shown.rstrip("\r\n"), file=sys.stderr, flush=True)
        if lines:
            ray_print({**data, "lines": lines}, ignore_prefix=ignore_prefix)

    # Two routes reach Ray's printer: the raylet's notes, which Ray's error listener
    # passes to the module's print_to_stdstream by name at each call, and the worker
    # logs, through a dispatcher handler that holds Ray's function itself.
    worker.print_to_stdstream = print_without_noise
    with dispatcher._lock:
        names = [name for name, _ in dispatcher.handlers]
    if "ray_print_logs" in names:
        ignore_prefix = worker._should_ignore_worker_log_prefix(worker.global_worker)
        dispatcher.remove_handler("ray_print_logs")
        dispatcher.add_handler("ray_print_logs", functools.partial(print_without_noise, ignore_prefix=ignore_prefix))
