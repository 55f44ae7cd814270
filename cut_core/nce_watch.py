"""A watch on PatchNCE's loss: it tells when G's features stopped matching their own
patches after they had learnt to.

PatchNCE classifies each query patch's positive key among N candidates, so a G whose
encoder tells patches apart no better than chance scores lambda_NCE * ln(N). A run
starts near there and falls; a run whose loss climbs back near it and stays has lost
what PatchNCE had taught G. On the toy benchmark's logged runs (234 histories, 64 px,
1500 steps; docs/quality.md), the rule below fired in 6: four recovered to good
translations, one (FastCUT as in the paper) ended at histogram matching's colour error,
and one (CUT, street seed 2) lost half its labels. Its cause there was one step's
gradient in G at 25 times its median; cut_core.grad_guard is the guard against that.
"""

from __future__ import annotations

import math

from cut_core.config import CUTConfig
from cut_core.d_balance import Streak

ARM_RATIO = 0.5  # the watch arms once the loss has been under this share of chance ...
NEAR_CHANCE_RATIO = 0.7  # ... and counts the steps in a row at or over this share
NEAR_CHANCE_STEPS = 50


def nce_chance(cfg: CUTConfig) -> float:
    """PatchNCE's loss for a G whose features carry nothing: lambda_NCE * ln(candidates),
    the candidates being the positive and its negatives (the other patches of the image,
    of every image of the worker's batch, or the memory bank's keys)."""
    loss = cfg.loss
    if loss.nce_bank_size:
        candidates = loss.nce_bank_size + 1
    elif loss.nce_includes_all_negatives_from_minibatch:
        candidates = loss.num_patches * cfg.optim.batch_size
    else:
        candidates = loss.num_patches
    return loss.lambda_NCE * math.log(max(2, candidates))


class NCEWatch(Streak):
    """``observe(nce, steps)`` with the window-mean PatchNCE loss of each logged window;
    returns True once, when the loss has stayed at NEAR_CHANCE_RATIO of chance or more
    for NEAR_CHANCE_STEPS steps after it had been under ARM_RATIO of it."""

    def __init__(self, chance: float, advice: str = "", steps: int = NEAR_CHANCE_STEPS) -> None:
        super().__init__(steps)
        self.chance, self.advice = chance, advice
        self.armed = False

    def observe(self, nce: float, steps: int = 1) -> bool:
        ratio = nce / self.chance if self.chance > 0 else 0.0
        if ratio < ARM_RATIO:
            self.armed = True
        return self.count(self.armed and ratio >= NEAR_CHANCE_RATIO, steps)

    @classmethod
    def for_config(cls, cfg: CUTConfig) -> NCEWatch:
        clip, target = cfg.optim.grad_clip_median, cfg.optim.grad_clip_target
        # 10x cut to 2x: on the spike measured (docs/quality.md) it clipped that one step
        # and PatchNCE stayed at its level; a plain 5x also clipped ordinary steps.
        if clip:
            advice = f"the gradient guard is on (grad_clip_median={clip:g}, cut to {target:g}x); a lower trigger clips more"
        else:
            advice = ("if it does not recover, try --set grad_clip_median=10 --set grad_clip_to=2 (cuts one-step "
                      "gradient spikes in G and F to twice their median)")
        return cls(nce_chance(cfg), advice)

    def message(self, step: int) -> str:
        return (f"PatchNCE's loss has stayed near chance ({NEAR_CHANCE_RATIO:.0%} of {self.chance:.2f} or more) for "
                f"{self.run} steps (to step {step}) after it had fallen under half of it: G's features no longer "
                f"tell their patches apart; see G_grad_norm for a spike before it; {self.advice} (docs/quality.md)")


__all__ = ["NCEWatch", "nce_chance"]
