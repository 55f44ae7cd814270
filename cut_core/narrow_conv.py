"""A convolution to a few output channels whose backward runs as two matrix products.

G's last layer maps ngf channels to 3 with a 7x7 kernel. oneDNN computes that shape
poorly on a CPU: 3 output channels leave its vector lanes mostly empty, so in fp32 the
layer's backward ran at 28-34 GFLOP/s where G's 3x3 convolutions run at 150-200
(2-core AMD EPYC, 2026-12-03; measured beside each other in ``jobs.bench.layers``).

The backward here rewrites the convolution as a matrix product. With y = conv(x, w),
x: (N, C, H, W), w: (O, C, k, k), y: (N, O, H-k+1, W-k+1), spread the output gradient
g over every kernel offset:

    gz[n, (ky, kx, o), i + ky, j + kx] = g[n, o, i, j]      (zero elsewhere)

a (N, k*k*O, H*W) tensor that is 49 shifted copies of g (O = 3: the size of 2-3 of
the layer's input channels). Then both gradients are products with large inner sizes:

    grad_w[o, c, ky, kx] = sum_n gz[n, (ky, kx, o), :] . x[n, c, :]
    grad_x[n, c, :]      = sum_(ky, kx, o) w[o, c, ky, kx] gz[n, (ky, kx, o), :]

which the CPU's matrix kernels run near their peak: the layer's forward + backward took
0.62-0.68x oneDNN's time natively and 0.79-0.88x under an AVX2-only emulation (256 and
512 px, batch 1 and 2; docs/bench/layers_cpu_epyc_avx512bf16*.json). The
forward is the plain convolution, so outputs are bit for bit what nn.Conv2d gives;
the gradients differ by float rounding (summation order), as a gradcheck checks.

Used only where it is known to pay: fp32 on a CPU, NCHW, no autocast, not under
torch.compile (Inductor writes its own kernels), and while the spread gradient
stays small (at most ``MAX_SPREAD_BYTES``); anything else takes nn.Conv2d's path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# gz holds k*k*O floats per input pixel: 147 for G's last layer, 40 MB for a 256 px
# image, 160 MB for 512 px. Above this the layer keeps oneDNN's backward.
MAX_SPREAD_BYTES = 512 * 2**20


class _NarrowConvBackwardAsMatmul(torch.autograd.Function):
    """conv2d(x, w, b) (stride 1, no padding) with the backward above."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, w)
        return F.conv2d(x, w, b)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, w = ctx.saved_tensors
        n, c, h, wd = x.shape
        o, _, kh, kw = w.shape
        ho, wo = g.shape[-2:]
        g = g.contiguous()
        gz = g.new_zeros(n, kh, kw, o, h, wd)  # (N, ky, kx, O, H, W)
        for ky in range(kh):
            for kx in range(kw):
                gz[:, ky, kx, :, ky : ky + ho, kx : kx + wo] = g
        gz = gz.view(n, kh * kw * o, h * wd)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            per_image = torch.matmul(gz, x.reshape(n, c, h * wd).transpose(1, 2))  # (N, k*k*O, C)
            grad_w = per_image.sum(0).view(kh, kw, o, c).permute(2, 3, 0, 1).contiguous()
        if ctx.needs_input_grad[0]:
            w_rows = w.permute(2, 3, 0, 1).reshape(kh * kw * o, c)  # rows ordered as gz's
            grad_x = torch.matmul(w_rows.t(), gz).view(n, c, h, wd)
        if ctx.needs_input_grad[2]:  # False for a bias of None
            grad_b = g.sum((0, 2, 3))
        return grad_x, grad_w, grad_b


class NarrowOutputConv2d(nn.Conv2d):
    """nn.Conv2d (stride 1, no padding, no groups) for layers with few output channels,
    whose fp32 CPU backward runs as matrix products (module docstring). The same
    parameters and state-dict keys as nn.Conv2d. (B, C, H, W) -> (B, O, H-k+1, W-k+1).

    ``as_plain_conv = True`` computes it as nn.Conv2d does (the benchmark's baseline,
    which times the reference code's layers)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        if self.stride != (1, 1) or self.padding != (0, 0) or self.dilation != (1, 1) or self.groups != 1:
            raise ValueError("NarrowOutputConv2d is for stride 1, no padding, no dilation, no groups")
        self.as_plain_conv = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._backward_as_matmul(x):
            return _NarrowConvBackwardAsMatmul.apply(x, self.weight, self.bias)
        return super().forward(x)

    def _backward_as_matmul(self, x: torch.Tensor) -> bool:
        if self.as_plain_conv or not torch.is_grad_enabled():
            return False
        if not (x.requires_grad or self.weight.requires_grad):
            return False  # no backward: the plain forward is the same
        if x.device.type != "cpu" or x.dtype != torch.float32 or self.weight.dtype != torch.float32:
            return False
        if torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling() or not x.is_contiguous():
            return False
        kh, kw = self.kernel_size
        spread = x.shape[0] * kh * kw * self.out_channels * x.shape[2] * x.shape[3] * 4
        return spread <= MAX_SPREAD_BYTES
