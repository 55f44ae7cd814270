"""Anti-aliased resampling (Zhang, "Making Convolutional Networks Shift-Invariant
Again", ICML 2019), as CUT's generator and discriminator use it.

Both layers hold their binomial filter as a buffer named ``filt`` of shape
(C, 1, k, k), because the official checkpoints store it under that name; the
buffer is part of the state dict that raycut reads and writes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def binomial_filter(size: int) -> torch.Tensor:
    """(size, size) outer product of the binomial row [1, ..., 1], summing to 1."""
    # Pascal's row without special functions: C(n, k) by the multiplicative formula.
    n = size - 1
    coeffs = [1.0]
    for k in range(1, size):
        coeffs.append(coeffs[-1] * (n - k + 1) / k)
    row = torch.tensor(coeffs)
    kernel = row[:, None] * row[None, :]
    return kernel / kernel.sum()


class BlurDownsample(nn.Module):
    """Reflect-pad, blur with a 3x3 binomial filter, keep every second pixel.

    (B, C, H, W) -> (B, C, ceil(H/2), ceil(W/2))
    """

    def __init__(self, channels: int, *, filt_size: int = 3) -> None:
        super().__init__()
        pad = (filt_size - 1) // 2
        self.pad_sizes = (pad, filt_size - 1 - pad, pad, filt_size - 1 - pad)
        self.register_buffer("filt", binomial_filter(filt_size)[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.pad_sizes, mode="reflect")
        return F.conv2d(x, self.filt.to(x.dtype), stride=2, groups=x.shape[1])


class BlurUpsample(nn.Module):
    """Replicate-pad, transposed conv with a 4x4 binomial filter (scaled by 4 so a
    constant image stays constant), trimmed to exactly twice the size.

    (B, C, H, W) -> (B, C, 2H, 2W)
    """

    def __init__(self, channels: int, *, filt_size: int = 4) -> None:
        super().__init__()
        self.filt_size = filt_size
        self.pad_size = (filt_size - 1) // 2
        self.register_buffer("filt", (binomial_filter(filt_size) * 4)[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (1, 1, 1, 1), mode="replicate")
        y = F.conv_transpose2d(x, self.filt.to(x.dtype), stride=2, padding=1 + self.pad_size, groups=x.shape[1])
        y = y[:, :, 1:, 1:]
        # An even filter overshoots by one pixel on each axis.
        return y if self.filt_size % 2 == 1 else y[:, :, :-1, :-1]
