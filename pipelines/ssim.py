"""SSIM (Wang et al. 2004) with the usual Gaussian window: 11x11, sigma 1.5, K1 0.01,
K2 0.03, a window centred on every pixel (the image mirrored at its borders, reflect
padding of 5 px), averaged per image.

This is the same function as torchmetrics' ``structural_similarity_index_measure``
with its defaults (``tests/test_evaluate.py`` checks it against torchmetrics).
raycut computes it itself because importing torchmetrics' image metrics pulls in
torchvision, scipy, matplotlib and torch._dynamo: 2.7 CPU-seconds on the 2-core AMD
EPYC without AVX-512 (2026-12-07) in every process that scores toy translations (the
evaluating worker of each evaluated run, `raycut evaluate --toy`, the demo's driver),
for a formula of a dozen lines.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cut_core.errors import RaycutError

WINDOW = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03


def gaussian_window(size: int = WINDOW, sigma: float = SIGMA, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The normalised 1-D Gaussian, (size,), centred on the middle tap."""
    x = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def ssim_per_image(preds: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """(N, C, H, W) x 2 -> (N,): each image's mean SSIM over its channels and a window
    centred on each of its H x W pixels. Both inputs in [0, data_range]."""
    if preds.shape != target.shape or preds.dim() != 4:
        raise RaycutError(f"SSIM needs two (N, C, H, W) tensors of one shape, got {tuple(preds.shape)} "
                          f"and {tuple(target.shape)}")
    n, c, h, w = preds.shape
    pad = WINDOW // 2
    if min(h, w) <= pad:  # reflect padding mirrors at most size - 1 pixels
        raise RaycutError(f"SSIM needs images of at least {pad + 1}x{pad + 1} px, got {h}x{w}")
    g = gaussian_window(dtype=preds.dtype).to(preds.device)
    # The 2-D window is separable: a row pass then a column pass, one group a channel;
    # the five statistics go through one pair of convolutions as a batch.
    rows = g.view(1, 1, 1, WINDOW).repeat(c, 1, 1, 1)
    cols = g.view(1, 1, WINDOW, 1).repeat(c, 1, 1, 1)
    stack = F.pad(torch.cat([preds, target, preds * preds, target * target, preds * target]), (pad,) * 4,
                  mode="reflect")
    mu_p, mu_t, e_pp, e_tt, e_pt = F.conv2d(F.conv2d(stack, rows, groups=c), cols, groups=c).split(n)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    # Variances clamped at 0: E[x^2] - E[x]^2 can come out a rounding error below it.
    var_p = (e_pp - mu_p * mu_p).clamp_min(0)
    var_t = (e_tt - mu_t * mu_t).clamp_min(0)
    cov = e_pt - mu_p * mu_t
    ssim_map = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))
    return ssim_map.flatten(1).mean(1)


def ssim(preds: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """(N, C, H, W) x 2 -> (): the mean over images of ``ssim_per_image``."""
    return ssim_per_image(preds, target, data_range).mean()
