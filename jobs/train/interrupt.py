"""Ctrl-C during `raycut train`: the workers save a checkpoint where they are, then stop.

Ray Train's own SIGINT handler aborts the worker group at once, so a run kept only its
last periodic checkpoint (up to ``--checkpoint-every`` steps behind). raycut's handler
instead asks the workers, through a small actor, to checkpoint at their next report
(every ``--log-every`` steps, and at each periodic checkpoint) and leave the loop; the run then ends like any other,
with nothing lost, and the driver says how to go on. A second Ctrl-C aborts as Ray
Train would.

    driver: Ctrl-C -> StopRequest.request()
    lead worker, at each report: StopRequest.requested() -> broadcast to every rank
    every rank: checkpoint (as at a checkpoint step), its metrics marked interrupted -> leave the loop
    driver: fit() returns with that mark -> "interrupted ... --resume"
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import ray


@ray.remote(num_cpus=0)
class StopRequest:
    """A flag the driver sets and the lead worker reads."""

    def __init__(self) -> None:
        self.asked = False

    def request(self) -> None:
        self.asked = True

    def requested(self) -> bool:
        return self.asked


def stop_request() -> Any | None:
    """A StopRequest when Ctrl-C can reach this run (the main thread installs signal
    handlers: not a Tune trial's thread), else None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return StopRequest.remote()


def torch_trainer(stop: Any | None, **kwargs: Any) -> Any:
    """A TorchTrainer whose Ctrl-C handler asks ``stop`` first (with ``stop`` None: Ray
    Train's own handler)."""
    from ray.train.torch import TorchTrainer

    if stop is None:
        return TorchTrainer(**kwargs)

    class CheckpointOnCtrlC(TorchTrainer):
        # Ray Train 2.60 (v2) calls this from fit() in the main thread, with the run's
        # controller; a Ray without the hook keeps its own handler (abort at once).
        def _register_sigint_handler(self, controller: Any) -> None:
            presses = 0

            def on_sigint(signum: int, frame: Any) -> None:
                nonlocal presses
                presses += 1
                if presses == 1:
                    stop.request.remote()
                    sys.stdout.write("\n[train] Ctrl-C: the workers save a checkpoint at their next report and stop "
                                     "(Ctrl-C again stops them at once, keeping only the last checkpoint)\n")
                    sys.stdout.flush()
                    return
                try:
                    ray.get(controller.abort.remote())
                except ray.exceptions.RayActorError:
                    pass
                sys.exit(0)  # as Ray Train's own handler leaves: the driver turns it into the resume hint

            signal.signal(signal.SIGINT, on_sigint)

    return CheckpointOnCtrlC(**kwargs)


def stop_requested(stop: Any | None, *, lead: bool, world: int, device: Any) -> bool:
    """Whether the driver asked the run to stop; the same answer on every rank (each
    must call this at the same step: they checkpoint together)."""
    if stop is None:
        return False
    import torch

    flag = torch.zeros(1, device=device)
    if lead:
        flag[0] = float(ray.get(stop.requested.remote()))
    if world > 1:
        torch.distributed.broadcast(flag, src=0)
    return bool(flag.item())
