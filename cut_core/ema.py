"""An exponential moving average of G's weights: the generator that gets evaluated,
shown and registered.

A GAN's G moves every step in response to a D that moves too, so any single
snapshot carries that step's noise; the average over the last few thousand steps is
smoother and usually better (Karras et al. 2018; Yazici et al. 2019), and costs one
copy of G's weights and a lerp per step, nothing at inference.

After step t (1-based) the average is updated with

    decay_t = min(decay, (1 + t) / (10 + t))
    ema <- decay_t * ema + (1 - decay_t) * G

The ramp (as TensorFlow's ``ExponentialMovingAverage(num_updates=t)``) makes a short
run's average follow G closely at first instead of staying near the random
initialisation for 1 / (1 - decay) steps. Buffers (none in the ResNet G; kept general)
are copied, not averaged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from cut_core.ema_schedule import ema_decay_at


class GeneratorEMA(nn.Module):
    """Holds ``average``, a frozen copy of G in eval mode; ``update`` after each step."""

    def __init__(self, G: nn.Module, decay: float) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay={decay} must lie in (0, 1); 0 turns the average off")
        self.decay = decay
        self.average = copy.deepcopy(G).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, G: nn.Module, step: int) -> float:
        """Fold G's current weights in; returns the decay used."""
        d = ema_decay_at(self.decay, step)
        ema_params = list(self.average.parameters())
        params = [p.detach() for p in G.parameters()]
        # One fused call over all tensors: ema += (1 - d) * (G - ema).
        torch._foreach_lerp_(ema_params, params, 1.0 - d)
        for b_ema, b in zip(self.average.buffers(), G.buffers(), strict=True):
            b_ema.copy_(b)
        return d
