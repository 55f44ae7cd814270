"""The decay of G's moving average over a run (``cut_core.ema`` applies it): plain
arithmetic, no torch, so the driver can log what the average will span before any
worker starts, as ``lr_schedule`` does for the learning rate."""

from __future__ import annotations

import math


def ema_decay_at(decay: float, step: int) -> float:
    """The decay used by the update after step ``step`` (1-based)."""
    return min(decay, (1.0 + step) / (10.0 + step))


def ramp_end(decay: float) -> int:
    """The first step whose update uses ``decay`` itself: (1 + t) / (10 + t) >= decay."""
    # The 1e-6: a whole answer can come out a hair over (80.000000001 at 0.9), and
    # ceil would then name the step after it.
    return max(1, math.ceil((10.0 * decay - 1.0) / (1.0 - decay) - 1e-6))


def describe_ema(decay: float, total_steps: int) -> str:
    """One line on what the average spans at the end of a run of ``total_steps``, for
    the console and MLflow. Why: the ramp, not ``decay``, sets the span of any run
    shorter than ``ramp_end(decay)`` (8990 steps at 0.999), so 0.999 and 0.9999 give the
    same average there, where a user reading the key alone would expect 1000 steps."""
    last = ema_decay_at(decay, total_steps)
    span = max(1, round(1.0 / (1.0 - last)))
    steps = f"about the last {span} steps" if span > 1 else "the last step alone"
    if total_steps >= ramp_end(decay):
        return f"EMA of G: decay {decay:g} from step {ramp_end(decay)} on; at the last step an average over {steps}"
    return (f"EMA of G: decay {decay:g}, but the ramp (1+t)/(10+t) holds it under that until step "
            f"{ramp_end(decay)}: {last:.3g} at this run's last step ({total_steps}), an average over {steps}")
