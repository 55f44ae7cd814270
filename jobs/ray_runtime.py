"""Connecting to Ray: the cluster at RAY_ADDRESS, or a local Ray started in process."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from typing import Iterator

import numpy as np

from cut_core.cores import usable_cores
from jobs.console import filter_worker_logs

# Keep the console to raycut's progress lines and real warnings: Ray Data logs every
# execution start at INFO, once per epoch per domain.
QUIET_ENV = {"RAY_DATA_LOG_LEVEL": "WARNING"}
# A local Ray otherwise starts one idle Python worker per logical CPU as soon as the
# driver connects. On a small machine those imports compete with the driver and with
# the actors that do the work: a 10-step toy `raycut train` took 41-43 s without them
# against 45-53 s with them (2 cores). Workers still start on demand.
#
# Ray Train's preemption watcher is an actor per run that polls for the notices cloud
# providers send before they reclaim a spot node. One machine gets no such notice, and
# on 2 cores its process start was ~2 s of every run's start-up: off on a local Ray
# (the variable is Ray Train's; a cluster keeps the watcher).
#
# Ray starts its worker processes at nice 15 (its `worker_niceness`), the trainers and
# translation actors included, so that its own daemons stay responsive on a busy node.
# On a machine where anything else runs at the normal priority (an editor, a browser,
# another job) that work takes nearly all of the CPU: beside two single-threaded
# processes, a 1 Mpx translation that takes 1.5 s in a plain Python process took 87 s
# in a G actor (2-core AMD EPYC, 2026-12-05). A local Ray's workers run at the normal
# priority instead, as a plain PyTorch script would; the decode actors keep their lower
# priority relative to the trainers (jobs.train.driver.DECODE_NICE).
LOCAL_RAY_ENV = {"RAY_prestart_worker_first_driver": "0", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
                 "RAY_worker_niceness": "0"}


def on_this_machine() -> bool:
    """True for a Ray on this one machine (one live node with CPUs, no RAY_ADDRESS): its
    CPUs are known and fixed. False on a cluster (RAY_ADDRESS, several nodes, or a
    CPU-0 head waiting for an autoscaler), where nothing may be sized from what exists now."""
    import ray

    if os.environ.get("RAY_ADDRESS"):
        return False
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return len(nodes) == 1 and nodes[0].get("Resources", {}).get("CPU", 0) > 0


def parse_pool(text: str | int | None, *, default: tuple[int, int], what: str) -> tuple[int, int]:
    """``N`` (a fixed pool of N actors) or ``MIN-MAX`` (Ray Data adds actors up to MAX
    as work queues and nodes join); None -> ``default``."""
    from cut_core.errors import RaycutError

    if text is None or text == "":
        return default
    try:
        lo, _, hi = str(text).partition("-")
        low, high = int(lo), int(hi or lo)
    except ValueError:
        raise RaycutError(f"{what} must be N or MIN-MAX (e.g. 1-8), not {text!r}") from None
    if not 1 <= low <= high:
        raise RaycutError(f"{what} {text}: need 1 <= MIN <= MAX")
    return low, high


def start_ray(train_cpus: float) -> None:
    """Connect to RAY_ADDRESS, or start a local Ray with enough logical CPUs for the
    trainers plus the data pipeline (on a 2-core laptop the CPU count is logical:
    Ray schedules by it, the OS shares the cores)."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(logging_level="warning", runtime_env={"env_vars": QUIET_ENV})
        filter_worker_logs()
        return
    for k, v in {**QUIET_ENV, **LOCAL_RAY_ENV}.items():  # local workers inherit the driver's environment
        os.environ.setdefault(k, v)
    cpus = max(usable_cores(), int(np.ceil(train_cpus)) + 2)
    # The dashboard stays on: Ray Train's cleanup polls the State API it serves.
    # Its workers find that API by RAY_API_SERVER_ADDRESS, else by looking for a Ray on
    # this machine; with a second Ray here (a notebook's, another raycut command's) the
    # look fails ("Found multiple active Ray instances"): Ray Train's placement-group
    # cleaner printed that traceback and stopped watching for a dead controller. So this
    # Ray's dashboard gets a port chosen here, and its workers are told the address.
    dashboard = _dashboard_address()
    # address="local": always a new in-process Ray here. Without it ray.init joins the
    # cluster named in /tmp/ray/ray_current_cluster (left by `ray start`, or stale after
    # a crash), which is what RAY_ADDRESS is for.
    # A local Ray turns token authentication on by default and says so at WARNING on
    # every start; the default is what raycut wants, so the notice is only noise.
    # (Setting RAY_AUTH_MODE here instead is too late: Ray reads it at import.)
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    ray.init(address="local", num_cpus=cpus, logging_level="warning", dashboard_host=dashboard[0],
             dashboard_port=dashboard[1],
             runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": "http://%s:%d" % dashboard}})
    filter_worker_logs()


def require_gpus(per_actor: float, flag: str) -> None:
    """On a Ray of this machine alone, one line when ``flag`` asks for GPUs that it does
    not have: Ray would otherwise queue the GPU actors for ever, printing only its
    autoscaler's "No available node types can fulfill resource request". A cluster
    (RAY_ADDRESS) is not checked: its autoscaler may add GPU nodes."""
    import ray

    from cut_core.errors import RaycutError

    if per_actor <= 0 or not on_this_machine():
        return
    have = ray.cluster_resources().get("GPU", 0)
    if have < per_actor:
        raise RaycutError(f"{flag} {per_actor:g} asks for GPUs, but the Ray on this machine has {have:g}; "
                          f"drop {flag} to run on the CPU, or set RAY_ADDRESS to a cluster with GPU nodes")


def compute_runtime_env() -> dict:
    """The runtime env of raycut's compute processes, the Ray Train workers and the
    translation actors: glibc's malloc tuned to reuse freed tensors
    (cut_core.allocator), which must be in a process's environment when it starts.
    Where the driver has ``RAYCUT_MALLOC=default``, that opt-out is what they get, so
    it reaches a cluster's nodes too.

    Only these carry it. Ray's own processes and Ray Data's decode and IO workers gain
    nothing from it and would keep their peak heap. And a worker's exit is where Ray
    has a bug that shows: in 2 of the ~2100 Ray worker processes in one day's logs on
    a 2-core AMD EPYC (2026-12-03, Ray 2.60: an idle pooled worker that had split Ray
    Data blocks, and a translation actor), a thread of the exiting worker found one of
    Ray's locks overwritten (once with the text "=submit": memory freed and reused) and
    aborted with a stack on the console. Every worker then carried the setting, which
    reuses freed memory at once; whether that makes the abort likelier is not measured,
    but no process should carry a setting it gains nothing from."""
    from cut_core.allocator import OPT_OUT_ENV, worker_env

    env = worker_env()
    if not env and os.environ.get(OPT_OUT_ENV):
        env = {OPT_OUT_ENV: os.environ[OPT_OUT_ENV]}
    return {"env_vars": env} if env else {}


def _dashboard_address() -> tuple[str, int]:
    """A free local port for the dashboard of the Ray this process starts (the OS
    picks it; the moment between this and Ray binding it is the only race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return "127.0.0.1", s.getsockname()[1]


def without_progress_bars() -> None:
    """raycut draws its own progress line: Ray Data's bars are turned off in this
    driver, and so is the notice Ray Data logs on every execution to say that they are
    (a Python log line in the driver; jobs.console drops the workers' copies)."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


@contextlib.contextmanager
def train_run_released() -> Iterator[None]:
    """Around a Ray Train ``fit()``: afterwards, put back the SIGINT handler it found.

    In the main thread ``fit()`` installs a SIGINT handler (Ctrl-C aborts the run
    gracefully) and leaves it installed when it returns or raises. That handler holds the
    run's TrainController, and with it the actors the controller owns: Ray Data's split
    coordinators and decode workers, which keep their CPUs. In a long-lived process that
    goes on using its Ray (a notebook, a test session, a script that retries), a failed
    run's actors held 1.3 of 4 CPUs for as long as it was watched (60 s; Ray 2.60), and a
    later job on that Ray waited for them. Putting the old handler back drops the last
    reference; Ray then stops the controller and what it owns."""
    if threading.current_thread() is not threading.main_thread():
        yield  # Tune's trials: fit() installs no handler off the main thread
        return
    before = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)
