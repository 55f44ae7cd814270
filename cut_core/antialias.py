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

from cut_core.padding import reflect_pad


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


def is_channels_last(x: torch.Tensor) -> bool:
    """A 4D tensor laid out channels_last and not also NCHW (C > 1 and H*W > 1)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


class _Box2(torch.autograd.Function):
    """2x2 mean at stride 1: (B, C, H, W) -> (B, C, H-1, W-1).

    Its adjoint is the same 2x2 mean over the zero-padded gradient, a forward pool
    that runs 2-3x faster than the native avg_pool2d backward (a scatter) on the CPU.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return F.avg_pool2d(x, 2, stride=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return F.avg_pool2d(F.pad(grad, (1, 1, 1, 1)), 2, stride=1)


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
        x = reflect_pad(x, self.pad_sizes)
        if self.filt.shape[-1] == 3 and is_channels_last(x):
            # [1, 2, 1] / 4 is [1, 1] / 2 applied twice: two 2x2 average pools, the second
            # strided. In channels_last they run 2-3x faster than the depthwise conv.
            return F.avg_pool2d(_Box2.apply(x), 2, stride=2)
        if x.dtype == torch.float32 or self.filt.shape[-1] != 3:
            return F.conv2d(x, self.filt.to(x.dtype), stride=2, groups=x.shape[1])
        # The same binomial [1, 2, 1] / 4 per axis as strided slices: in bf16 on the CPU
        # this is 2.3x faster (fwd+bwd) than the depthwise conv, in fp32 1.5x slower.
        h, w = (x.shape[2] - 1) // 2, (x.shape[3] - 1) // 2
        x = x[:, :, :, 0 : 2 * w : 2] + 2 * x[:, :, :, 1 : 2 * w + 1 : 2] + x[:, :, :, 2 : 2 * w + 2 : 2]
        return (x[:, :, 0 : 2 * h : 2] + 2 * x[:, :, 1 : 2 * h + 1 : 2] + x[:, :, 2 : 2 * h + 2 : 2]) * (1 / 16)


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
        # True: compute it as the reference code does (the transposed conv below), for
        # the benchmark's baseline; the result is the same, only slower.
        self.as_transposed_conv = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.filt_size == 4 and not self.as_transposed_conv:
            # Transposed conv with [1, 3, 3, 1] / 4 per axis on a replicate-padded input
            # is exactly bilinear x2 upsampling (weights 3/4, 1/4; edges clamped), which
            # runs 2x faster on the CPU in fp32 and bf16.
            return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = F.pad(x, (1, 1, 1, 1), mode="replicate")
        y = F.conv_transpose2d(x, self.filt.to(x.dtype), stride=2, padding=1 + self.pad_size, groups=x.shape[1])
        y = y[:, :, 1:, 1:]
        # An even filter overshoots by one pixel on each axis.
        return y if self.filt_size % 2 == 1 else y[:, :, :-1, :-1]
