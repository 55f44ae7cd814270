"""A guard against one-step gradient spikes: a network's gradient norm clipped at a
multiple of the median of its recent norms.

Why: in a 64 px CUT run on the toy street pair (seed 2, docs/quality.md), G's gradient
norm was 709 at step 590, 25x the median of the steps before (28.6; F's was normal),
from losses that looked ordinary. Adam (beta1 0.5, beta2 0.999) turned that into an
update about ten times the usual size, PatchNCE's loss went from 1.9 to 13.5 within two
steps and settled at chance (ln 256), and the run never recovered its layout. A fixed
max norm would depend on the crop, the weights and the layers; a multiple of the
run's own median does not (the idea of AutoClip, Seetharaman et al. 2020, which clips
at a percentile of the history; here a loose multiple, so that only outliers are cut).

Sync-free on a GPU: the limit and the scale stay tensors, and every step multiplies the
gradients by a scale that is 1 unless the norm is over the limit. Under DDP the
gradients are already averaged, so every rank clips alike. A module, so checkpoints
keep the history (its buffers).
"""

from __future__ import annotations

import torch
from torch import nn

WINDOW = 200  # steps of history the median is over
WARMUP = 50  # steps seen before it clips: the first steps' norms are not the run's (F's first: ~10^5)


def gradients(net: nn.Module) -> list[torch.Tensor]:
    """The gradients ``net``'s parameters hold now."""
    return [p.grad for p in net.parameters() if p.grad is not None]


def grad_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of all of ``grads`` together, a 0-dim float tensor (0 for none)."""
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(grads).detach().float()


class GradSpikeGuard(nn.Module):
    """``clip_(net)`` after the backward, before the optimizer's step: a gradient whose
    norm is over ``factor`` x the median of the norms of the last WINDOW steps is scaled
    down to ``target`` x that median (``target`` defaults to ``factor``: plain clipping).
    A ``target`` under ``factor`` separates what counts as a spike from how far it is cut:
    a loose trigger leaves the run's large but ordinary steps alone, and a spike it
    catches is still cut to an ordinary size. The history keeps raw norms: a clipped
    spike enters it as it was."""

    def __init__(self, factor: float, *, target: float | None = None, window: int = WINDOW,
                 warmup: int = WARMUP) -> None:
        super().__init__()
        target = factor if target is None else target
        if factor <= 1:
            raise ValueError(f"the clip factor {factor} must be > 1 (a multiple of the median norm)")
        if not 0 < target <= factor:
            raise ValueError(f"the clip target {target} must lie in (0, {factor:g}] (a multiple of the median norm)")
        self.factor, self.target, self.window, self.warmup = factor, target, window, warmup
        self.register_buffer("norms", torch.zeros(window))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))
        self._seen: int | None = None  # a host copy of ``seen``: reading the buffer each step would sync a GPU

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super()._load_from_state_dict(*args, **kwargs)
        self._seen = None  # read the restored count again

    def clip_(self, net: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip ``net``'s gradients in place; returns (the norm before clipping, 1.0 if
        clipped else 0.0), both 0-dim tensors on the gradients' device."""
        grads = gradients(net)
        if not grads:
            return torch.zeros(()), torch.zeros(())
        norm = grad_norm(grads)
        if self._seen is None:
            self._seen = int(self.seen)
        seen = self._seen
        clipped = torch.zeros((), device=norm.device)
        median = self.norms[: min(seen, self.window)].median() if seen else torch.zeros((), device=norm.device)
        if seen >= self.warmup:
            over = norm > self.factor * median
            clipped = over.float()
            scale = torch.where(over, self.target * median / (norm + 1e-6), torch.ones_like(norm))
            torch._foreach_mul_(grads, scale.to(grads[0].dtype))
        # A non-finite norm (a broken step) enters the history as the median, so that it
        # does not poison later steps' limits (deciding to skip it would sync a GPU).
        self.norms[seen % self.window] = torch.where(torch.isfinite(norm), norm, median)
        self._seen = seen + 1
        self.seen.fill_(self._seen)
        return norm, clipped


__all__ = ["GradSpikeGuard", "WARMUP", "WINDOW", "grad_norm", "gradients"]
