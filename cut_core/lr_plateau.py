"""A learning rate that follows the val metric: the schedule's rate times a scale that
is cut when the metric stops improving (the idea of torch's ReduceLROnPlateau, applied
on top of the linear policy instead of replacing it).

Why: on the toy benchmark CUT's val colour error falls steadily on some pairs at the
paper's rate and climbs on others through the whole constant-rate half, coming down
only in the decay; half the rate from the start mends the second kind and leaves the
first unfinished (docs/quality.md). A cut that waits for the metric to go wrong keeps
the full rate where it works.

Only the evaluations before the decay can cut: in the decay the schedule lowers the
rate every step already, and the metric's last ups and downs there are the settling
that the decay is for. Under data parallelism rank 0 evaluates and decides; every rank
calls ``observe`` at the same step and gets rank 0's scale, so the replicas keep one
rate (DDP averages gradients, not learning rates).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn


class RatePlateau(nn.Module):
    """The LR scale, as a module so that checkpoints keep it (with the best value seen
    and the count of evaluations since, for an exact resume).

    ``observe`` after ``patience`` evaluations in a row that do not beat the best so
    far, multiplies the scale by ``factor``, never below ``min_scale``, and starts the
    count again (the best is kept: a rate that is cut and still does not help gets cut
    again after another ``patience``)."""

    def __init__(self, *, patience: int, factor: float, min_scale: float) -> None:
        super().__init__()
        if patience < 1 or not 0 < factor < 1 or not 0 < min_scale <= 1:
            raise ValueError(f"RatePlateau(patience={patience}, factor={factor}, min_scale={min_scale})")
        self.patience, self.factor, self.min_scale = patience, factor, min_scale
        # float64 throughout: one tensor of the four can then be broadcast as is.
        self.register_buffer("scale", torch.ones((), dtype=torch.float64))
        self.register_buffer("best", torch.full((), math.nan, dtype=torch.float64))
        self.register_buffer("bad", torch.zeros((), dtype=torch.float64))
        self.register_buffer("cuts", torch.zeros((), dtype=torch.float64))

    @property
    def value(self) -> float:
        """The scale the schedule's rate is multiplied by now."""
        return float(self.scale)

    def observe(self, value: float | None, *, decaying: bool, order: str = "min",
                device: torch.device | str = "cpu") -> bool:
        """Take one evaluation's ``value`` (rank 0's; ``None`` on the other ranks); returns
        whether the scale was cut at it. ``order``: "min" where lower values are better
        (errors, KID), "max" for scores. ``decaying``: the schedule is in its decay, where
        the value still sets the best but cuts nothing (module docstring)."""
        cut = False
        if value is not None:
            best = float(self.best)
            # A value that is not finite (G diverged) is no improvement.
            better = math.isfinite(value) and (math.isnan(best) or (value < best if order == "min" else value > best))
            if better:
                self.best.fill_(value)
                self.bad.zero_()
            elif not decaying:
                self.bad += 1
                if int(self.bad) >= self.patience and self.value > self.min_scale:
                    self.scale.fill_(max(self.min_scale, self.value * self.factor))
                    self.cuts += 1
                    self.bad.zero_()
                    cut = True
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # On the device: NCCL moves only CUDA tensors.
            shared = torch.stack([self.scale, self.best, self.bad, self.cuts]).to(device)
            dist.broadcast(shared, src=0)
            shared = shared.cpu()
            cut = bool(shared[3] > self.cuts) or cut
            for buf, v in zip((self.scale, self.best, self.bad, self.cuts), shared):
                buf.fill_(float(v))
        return cut
