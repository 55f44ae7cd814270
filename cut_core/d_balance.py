"""Keeping D in the game: differentiable augmentation of what D sees, ADA's adaptive
probability, and the signals that say D has won.

On a few thousand images a patch discriminator learns the training set by heart and
wins outright (its loss near zero), and G then learns from PatchNCE alone. Zhao et
al. (DiffAugment, 2020) and Karras et al. (StyleGAN2-ADA, 2020) showed the fix: show D
randomly transformed images, reals and fakes alike, in D's step *and* in G's GAN
term, through transforms that gradients pass through. Then D never sees a
training image twice the same way, and G is not pushed to reproduce the transforms
(they are applied to both sides of the comparison).

Ops (``policy``, comma-separated), on (B, 3, H, W) images in [-1, 1], each image drawing
its own parameters:

- ``color``: brightness + U(-0.5, 0.5); saturation: deviation from the pixel's channel
  mean x U(0, 2); contrast: deviation from the image mean x U(0.5, 1.5);
- ``translation``: an integer shift of up to 1/8 of each side, zeros shifted in;
- ``cutout``: a zeroed square of half each side at a random place.

Each op is applied to each image with probability ``p``. Fixed ``p = 1`` is DiffAugment;
ADA's adaptive ``p`` is :class:`AdaptiveP`: it rises while D is too sure of the reals
(its overfitting signal r_t = E[sign(D(real) - midpoint)] above a target) and falls
otherwise. :class:`WinWatch` tells a training loop when D's loss has stayed near zero
for long enough that G is learning from PatchNCE alone.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from cut_core.config import ADA_GUARD_SETS, CUTConfig, auto_d_layers  # the config's vocabulary (no torch)



def _uniform(b: int, lo: float, hi: float, rng: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """(b, 1, 1, 1) draws of U(lo, hi), on ``like``'s device and dtype."""
    return (torch.rand(b, 1, 1, 1, generator=rng) * (hi - lo) + lo).to(like.device, like.dtype)


def _color(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    x = x + _uniform(b, -0.5, 0.5, rng, x)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * _uniform(b, 0.0, 2.0, rng, x) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _uniform(b, 0.5, 1.5, rng, x) + mean


def _translation(x: torch.Tensor, rng: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    b, _, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sy, sy + 1, (b, 1), generator=rng).to(x.device)
    dx = torch.randint(-sx, sx + 1, (b, 1), generator=rng).to(x.device)
    # Source row/column of each output pixel in a copy padded by one zero on each side:
    # an index that falls outside the image lands on the padding (0 or size + 1).
    rows = (torch.arange(h, device=x.device)[None] - dy + 1).clamp(0, h + 1)  # (B, H)
    cols = (torch.arange(w, device=x.device)[None] - dx + 1).clamp(0, w + 1)  # (B, W)
    padded = F.pad(x, [1, 1, 1, 1])
    c = x.shape[1]
    out = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2))
    return out.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def _cutout(x: torch.Tensor, rng: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), generator=rng).to(x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), generator=rng).to(x.device)
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    inside = ((ys - cy + ch // 2) >= 0) & ((ys - cy + ch // 2) < ch) & ((xs - cx + cw // 2) >= 0) & ((xs - cx + cw // 2) < cw)
    return x * (~inside)[:, None].to(x.dtype)


_APPLY: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "color": _color,
    "translation": _translation,
    "cutout": _cutout,
}


def augment(x: torch.Tensor, ops: tuple[str, ...], p: float, rng: torch.Generator) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, H, W): each op in ``ops`` applied to each image with
    probability ``p``, with parameters of its own; differentiable in ``x``. Draws from
    ``rng`` (a CPU generator) in a fixed order, so a seeded run repeats exactly."""
    if not ops or p <= 0:
        return x
    for op in ops:
        out = _APPLY[op](x, rng)
        if p >= 1:
            x = out
            continue
        keep = (torch.rand(x.shape[0], 1, 1, 1, generator=rng) < p).to(x.device)
        x = torch.where(keep, out, x)
    return x


def overfit_sign(pred_real: torch.Tensor, gan_mode: str) -> torch.Tensor:
    """ADA's r_t for one batch: E[sign(D(real) - m)] over every patch score, where m is
    the score halfway between 'fake' and 'real' (0.5 for lsgan's 0/1 targets, 0 for
    logits). 1: D calls every real patch real, with margin (it has memorised them);
    0: it is guessing."""
    mid = 0.5 if gan_mode == "lsgan" else 0.0
    return torch.sign(pred_real.detach().float() - mid).mean()


class AdaptiveP(nn.Module):
    """ADA's probability controller, as a module so checkpoints keep ``p``.

    Every ``interval`` D steps, p moves by sign(mean r_t - target) * images / (speed
    images): with ADA's constants, p can go from 0 to 1 in 500k images; raycut's runs
    are shorter, so ``speed_images`` defaults to 20k (0 -> 1 in 20k images seen by D;
    the config's ``d_augment_speed``).

    Under data parallelism the ranks pool r_t and count the images of all of them, as
    ADA does: each rank's r_t comes from its own share of the batch, so ranks that each
    followed their own would drift to different p, and D's replicas, which DDP keeps
    equal, would be trained on differently augmented inputs.
    """

    def __init__(self, target: float, *, interval: int = 4, speed_images: int = 20_000) -> None:
        super().__init__()
        self.target, self.interval, self.speed_images = target, interval, speed_images
        self.register_buffer("p", torch.zeros((), dtype=torch.float64))
        self.register_buffer("rt_sum", torch.zeros((), dtype=torch.float64))
        self.register_buffer("rt_count", torch.zeros((), dtype=torch.float64))

    @property
    def value(self) -> float:
        return float(self.p)

    def observe(self, rt: torch.Tensor, batch: int) -> None:
        """Add one D step's r_t (batch images); adjust p every ``interval`` steps. The
        sum stays on r_t's device, so only every ``interval``-th step waits for it."""
        if self.rt_sum.device != rt.device:
            self.rt_sum = self.rt_sum.to(rt.device)
        self.rt_sum += rt.detach().double()
        self.rt_count += 1
        if int(self.rt_count) >= self.interval:
            # On r_t's device (the count stays on the CPU, read every step without a sync):
            # NCCL reduces only CUDA tensors, and stack takes no mix of devices.
            pooled = torch.stack([self.rt_sum, self.rt_count.to(self.rt_sum.device)])
            images = batch * self.interval
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(pooled)  # every rank calls observe at the same steps
                images *= dist.get_world_size()
            mean = float(pooled[0] / pooled[1])
            step = (1 if mean > self.target else -1) * images / self.speed_images
            self.p.fill_(min(1.0, max(0.0, float(self.p) + step)))
            self.rt_sum.zero_()
            self.rt_count.zero_()


# D's loss (0.5 * (real term + fake term)) under which D is taken to have won: every
# patch scored within ~0.1 of its target (lsgan), or with odds above ~50:1 (logistic).
D_WON_LOSS = {"lsgan": 0.01, "nonsaturating": 0.02, "vanilla": 0.02}
# ... or under D_WON_LOSS_SURE_RT times that while r_t says D calls every real patch
# real with margin: a CI demo run had D's loss at ~0.02 with r_t ~1.0 for its last
# hundreds of steps (G no better than histogram matching), which the loss alone missed.
D_WON_RT = 0.95
D_WON_LOSS_SURE_RT = 5.0
D_WON_STEPS = 200  # ... for this many steps in a row


class Streak:
    """Steps in a row for which a condition held, fed window by window; ``count``
    returns True once when the streak reaches ``steps``, and again only after it broke.
    The counting of the training watches (WinWatch here, cut_core.nce_watch.NCEWatch)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.run = 0  # steps in a row for which the condition held
        self.longest = 0
        self.warned = False

    def count(self, held: bool, steps: int = 1) -> bool:
        self.run = self.run + steps if held else 0
        self.longest = max(self.longest, self.run)
        if self.run >= self.steps and not self.warned:
            self.warned = True
            return True
        if self.run == 0:
            self.warned = False  # the streak broke: warn again if it comes back
        return False


class WinWatch(Streak):
    """Counts the steps in a row for which D had won: its (window-mean) loss under
    ``D_WON_LOSS``, or under ``D_WON_LOSS_SURE_RT`` times that with r_t (ADA's overfit
    sign, see :func:`overfit_sign`) at ``D_WON_RT`` or more. ``observe`` returns True
    once, when the run reaches ``steps``."""

    def __init__(self, gan_mode: str, steps: int = D_WON_STEPS, advice: str = "") -> None:
        super().__init__(steps)
        self.threshold = D_WON_LOSS[gan_mode]
        self.advice = advice or d_won_advice(CUTConfig.cut())

    def won(self, loss_D: float, r_t: float | None = None) -> bool:
        sure = r_t is not None and r_t >= D_WON_RT
        return loss_D < self.threshold * (D_WON_LOSS_SURE_RT if sure else 1.0)

    def observe(self, loss_D: float, steps: int = 1, r_t: float | None = None) -> bool:
        return self.count(self.won(loss_D, r_t), steps)

    @classmethod
    def for_config(cls, cfg: CUTConfig, steps: int = D_WON_STEPS) -> "WinWatch":
        """The watch of a run with this config: its advice names what the run has not
        tried yet."""
        return cls(cfg.loss.gan_mode, steps, d_won_advice(cfg))

    def message(self, step: int) -> str:
        return (f"D has won: its loss stayed near zero (under {self.threshold}, or {self.threshold * D_WON_LOSS_SURE_RT:g} "
                f"with r_t >= {D_WON_RT}) for {self.run} steps (to step {step}), so G "
                f"learns from PatchNCE alone; {self.advice}")


def d_won_advice(cfg: CUTConfig) -> str:
    """What to try first when D has won, from what was measured on the toy pairs
    (docs/quality.md): one change at a time, the first this run has not tried."""
    loss = cfg.loss
    if loss.lambda_NCE > 1 and not loss.nce_idt:
        # At FastCUT's 10, PatchNCE holds G near the source (its colours, its outlines):
        # easy for D to spot. 1 (CUT's) was better on most seeds of both toy pairs.
        return "try --set lambda_NCE=1 (docs/quality.md; --config fastcut-small-data sets it and adds ADA as a guard)"
    auto = auto_d_layers(cfg.data.crop_size)
    if cfg.model.netD == "basic" and cfg.d_layers > auto:
        # A D whose patch covers most of the crop learns a small training set by heart;
        # at 64 px one layer instead of the paper's 3 kept D in the game (docs/quality.md).
        return (f"D's {cfg.d_layers} layers see most of each {cfg.data.crop_size} px crop: try --set n_layers_D=auto "
                f"({auto} at this crop, D's patch the fraction of the crop it is in the paper; docs/quality.md)")
    if not loss.d_augment:
        # ADA as a guard, not a fixed p: DiffAugment at p=1 held D at chance but cost the
        # seeds that worked, and so did ADA at its paper's target of 0.6; at 0.9 p moves
        # only while D nears winning, and with FastCUT at lambda_NCE=1 no run of six let D
        # win for more than 50 steps. The default speed (20k images for p: 0 -> 1) barely
        # moves in a short run, hence 1000.
        return (f"try ADA as a guard: {' '.join(f'--set {s}' for s in ADA_GUARD_SETS)} "
                "(D's inputs are augmented only while D nears winning; docs/quality.md)")
    if not loss.nce_idt:
        # FastCUT-like, and D wins on augmented inputs: with CUT's identity term D won far
        # less often (CUT met the colour target in 5 runs of 6, FastCUT's recipe in 1 of
        # 5); a narrower D only moved the failure to another seed.
        return ("D wins even on augmented inputs: try CUT's recipe (--preset cut: with its identity NCE term D won "
                "far less often on the toy pairs, docs/quality.md)")
    if loss.d_augment_target > 0.9:
        # CUT's guard at 0.95 waits until D is nearly sure of every real patch; at 0.9
        # it held D on every seed of the toy pairs, at some cost to labels on one.
        return ("D wins through ADA's late guard: try --set d_augment_target=0.9 (p starts moving sooner; "
                "docs/quality.md)")
    return ("D wins even on augmented inputs: try a faster ADA (a smaller d_augment_speed), more training images, "
            "or a narrower D (a smaller ndf or n_layers_D)")
