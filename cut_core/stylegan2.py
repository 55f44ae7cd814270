"""SinCUT's networks: StyleGAN2's building blocks without the style modulation.

The single-image model of the paper (Sec. 5, Fig. 9; the official ``netG/netD
stylegan2``) replaces the ResNet G and the PatchGAN D with StyleGAN2 parts (Karras
et al. 2020): equalised learning rate (weights drawn N(0, 1) and scaled by
1/sqrt(fan_in) at run time, so Adam's step is the same for every layer), a bias +
leaky ReLU scaled by sqrt(2), blurred [1, 3, 3, 1] resampling, and residual blocks
whose sum is divided by sqrt(2). There is no mapping network and no style input.

G (``StyleGAN2Generator``), with c0 = 8 * ngf (80 at SinCUT's ngf 10)::

    encoder  0  identity (the input image: NCE layer 0)
             1  1x1 conv 3 -> c0
             2  residual block, c0 -> 2 c0, downsample x2       (NCE layer 2)
             .. (one per --stylegan2_G_num_downsampling)
             +  n_blocks // 2 residual blocks                    (NCE layer 4: the 2nd)
    decoder     n_blocks // 2 residual blocks
                demodulated 3x3 transposed conv, upsample x2 (+ noise while training)
                1x1 conv -> 3, bias + leaky ReLU (as the official output layer)

D (``StyleGAN2Discriminator``) scores square tiles of ``size`` pixels (64 for
SinCUT): 1x1 conv, residual blocks down to 4x4, a 3x3 conv and two linear layers.
An image larger than a tile is cut into tiles, so a 128x128 crop gives a 2x2 map of
scores, (B, 1, 2, 2), like a patch discriminator (the paper's appendix recipe).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_BLUR = (1.0, 3.0, 3.0, 1.0)  # StyleGAN2's resampling filter


def _blur_kernel(gain: float = 1.0) -> torch.Tensor:
    row = torch.tensor(_BLUR)
    k = row[:, None] * row[None, :]
    return k / k.sum() * gain


class Blur(nn.Module):
    """Zero-pad by ``pad`` = (before, after) on both axes, then a depthwise 4x4 blur.
    (B, C, H, W) -> (B, C, H + before + after - 3, W + before + after - 3)."""

    def __init__(self, pad: tuple[int, int], gain: float = 1.0) -> None:
        super().__init__()
        self.pad = pad
        # Not persistent: a constant, so model files hold only what was learned.
        self.register_buffer("kernel", _blur_kernel(gain)[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.pad
        x = F.pad(x, (a, b, a, b))
        k = self.kernel.to(x.dtype).expand(x.shape[1], 1, 4, 4)
        return F.conv2d(x, k, groups=x.shape[1])


class EqualConv2d(nn.Module):
    """Conv with equalised learning rate: (B, C_in, H, W) -> (B, C_out, H', W')."""

    def __init__(self, c_in: int, c_out: int, kernel: int, *, stride: int = 1, padding: int = 0,
                 bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.scale = 1 / math.sqrt(c_in * kernel * kernel)
        self.stride, self.padding = stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)


class EqualLinear(nn.Module):
    """Linear with equalised learning rate, optionally followed by bias + leaky ReLU."""

    def __init__(self, d_in: int, d_out: int, *, activate: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_out, d_in))
        self.bias = nn.Parameter(torch.zeros(d_out))
        self.scale = 1 / math.sqrt(d_in)
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activate:
            return _bias_lrelu(F.linear(x, self.weight * self.scale), self.bias, 1)
        return F.linear(x, self.weight * self.scale, self.bias)


def _bias_lrelu(x: torch.Tensor, bias: torch.Tensor, channel_dim: int) -> torch.Tensor:
    # sqrt(2) keeps the activations' second moment through the leaky ReLU (StyleGAN2).
    shape = [1] * x.ndim
    shape[channel_dim] = -1
    return F.leaky_relu(x + bias.view(shape), 0.2) * math.sqrt(2)


class BiasLeakyReLU(nn.Module):
    """x + bias (per channel), leaky ReLU 0.2, times sqrt(2) (StyleGAN2's fused act)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _bias_lrelu(x, self.bias, 1)


class ConvLayer(nn.Sequential):
    """[blur] -> equalised conv -> [bias + leaky ReLU]. Downsampling halves H and W
    (even sizes); otherwise 'same' zero padding keeps them."""

    def __init__(self, c_in: int, c_out: int, kernel: int, *, downsample: bool = False, activate: bool = True,
                 bias: bool = True) -> None:
        layers: list[nn.Module] = []
        if downsample:
            p = 2 + kernel - 1  # blur taps beyond the stride + the conv's own reach
            layers.append(Blur(((p + 1) // 2, p // 2)))
            layers.append(EqualConv2d(c_in, c_out, kernel, stride=2, bias=bias and not activate))
        else:
            layers.append(EqualConv2d(c_in, c_out, kernel, padding=kernel // 2, bias=bias and not activate))
        if activate:
            layers.append(BiasLeakyReLU(c_out))
        super().__init__(*layers)


class ResBlock(nn.Module):
    """(conv3x3 -> conv3x3[down] + skip) / sqrt(2): (B, C_in, H, W) -> (B, C_out, H', W')."""

    def __init__(self, c_in: int, c_out: int, *, downsample: bool) -> None:
        super().__init__()
        self.conv1 = ConvLayer(c_in, c_in, 3)
        self.conv2 = ConvLayer(c_in, c_out, 3, downsample=downsample)
        self.skip = (ConvLayer(c_in, c_out, 1, downsample=downsample, activate=False, bias=False)
                     if downsample or c_in != c_out else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) * (1 / math.sqrt(2))


class UpConv(nn.Module):
    """StyleGAN2's upsampling conv with the style left out: a weight-demodulated 3x3
    transposed conv (stride 2), blur, per-pixel noise while training, bias + leaky ReLU.
    (B, C_in, H, W) -> (B, C_out, 2H, 2W)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, 3, 3))
        self.scale = 1 / math.sqrt(c_in * 9)
        self.blur = Blur((1, 1), gain=4.0)  # x4: the stride-2 zeros carry no energy
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.act = BiasLeakyReLU(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.scale
        w = w * torch.rsqrt(w.pow(2).sum(dim=(1, 2, 3), keepdim=True) + 1e-8)  # demodulation
        y = self.blur(F.conv_transpose2d(x, w.transpose(0, 1), stride=2))  # (B, C_out, 2H, 2W)
        if self.training:
            # Noise only while training: a translation is then a function of its input,
            # so tiled and whole-image outputs agree and reruns reproduce.
            b, _, h, wd = y.shape
            y = y + self.noise_strength * torch.randn(b, 1, h, wd, device=y.device, dtype=y.dtype)
        return self.act(y)


def generator_widths(ngf: int, n_down: int) -> list[int]:
    """Channels at each resolution level, full resolution first: 8 * ngf doubling per
    downsampling, at most 512 (the official widths at crop 64, SinCUT's setting)."""
    return [min(512, 8 * ngf * 2**i) for i in range(n_down + 1)]


class StyleGAN2Generator(nn.Module):
    """G: (B, 3, H, W) in [-1, 1] -> (B, 3, H, W); H, W multiples of 2**n_down."""

    def __init__(self, *, ngf: int, n_blocks: int, n_down: int, input_nc: int = 3, output_nc: int = 3) -> None:
        super().__init__()
        widths = generator_widths(ngf, n_down)
        enc: list[nn.Module] = [nn.Identity(), ConvLayer(input_nc, widths[0], 1)]
        enc += [ResBlock(widths[i], widths[i + 1], downsample=True) for i in range(n_down)]
        enc += [ResBlock(widths[-1], widths[-1], downsample=False) for _ in range(n_blocks // 2)]
        dec: list[nn.Module] = [ResBlock(widths[-1], widths[-1], downsample=False) for _ in range(n_blocks // 2)]
        dec += [UpConv(widths[i + 1], widths[i]) for i in reversed(range(n_down))]
        dec += [ConvLayer(widths[0], output_nc, 1)]
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)
        self.multiple = 2**n_down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_and_encode(x, ())[0]

    def encode(self, x: torch.Tensor, layer_ids: tuple[int, ...]) -> list[torch.Tensor]:
        """Features after each encoder layer in ``layer_ids``: a list of (B, C_l, H_l, W_l)."""
        feats: list[torch.Tensor] = []
        for i, layer in enumerate(self.encoder):
            x = layer(x)
            if i in layer_ids:
                feats.append(x)
            if i == layer_ids[-1]:
                break
        return feats

    def forward_and_encode(self, x: torch.Tensor, layer_ids: tuple[int, ...]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The translation and ``encode(x, layer_ids)`` from one pass."""
        if x.ndim != 4 or x.shape[2] % self.multiple or x.shape[3] % self.multiple:
            raise ValueError(f"G expects (B, C, H, W) with H and W multiples of {self.multiple}, got {tuple(x.shape)}")
        feats: list[torch.Tensor] = []
        for i, layer in enumerate(self.encoder):
            x = layer(x)
            if i in layer_ids:
                feats.append(x)
        return self.decoder(x), feats

    def feature_channels(self, layer_ids: tuple[int, ...]) -> list[int]:
        """C_l after each encoder layer id, without a forward pass."""
        channels, out = self.encoder[1][0].weight.shape[1], []
        for i, layer in enumerate(self.encoder):
            if isinstance(layer, ConvLayer):
                channels = layer[0].weight.shape[0]
            elif isinstance(layer, ResBlock):
                channels = layer.conv2[-2].weight.shape[0]
            if i in layer_ids:
                out.append(channels)
        return out


def discriminator_width(ndf: int, resolution: int) -> int:
    """The official D width at a resolution: 256 * ndf / resolution, capped at 384."""
    return max(1, min(384, int(256 * ndf / resolution)))


class StyleGAN2Discriminator(nn.Module):
    """D: (B, 3, H, W), H and W multiples of ``size`` -> (B, 1, H/size, W/size) logits,
    one per ``size`` x ``size`` tile."""

    def __init__(self, *, ndf: int, size: int, input_nc: int = 3) -> None:
        super().__init__()
        if size < 8 or size & (size - 1):
            raise ValueError(f"the StyleGAN2 D needs a power-of-two tile of at least 8 pixels, got {size}")
        self.size = size
        convs: list[nn.Module] = [ConvLayer(input_nc, discriminator_width(ndf, size), 1)]
        res = size
        while res > 4:
            convs.append(ResBlock(discriminator_width(ndf, res), discriminator_width(ndf, res // 2), downsample=True))
            res //= 2
        self.convs = nn.Sequential(*convs)
        c4 = discriminator_width(ndf, 4)
        self.final_conv = ConvLayer(c4, c4, 3)
        self.final_linear = nn.Sequential(EqualLinear(c4 * 16, c4, activate=True), EqualLinear(c4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        s = self.size
        if h % s or w % s:
            raise ValueError(f"D scores {s}x{s} tiles; got an image of {h}x{w}, not a multiple of {s}")
        rows, cols = h // s, w // s
        tiles = x.reshape(b, c, rows, s, cols, s).permute(0, 2, 4, 1, 3, 5).reshape(b * rows * cols, c, s, s)
        out = self.final_linear(self.final_conv(self.convs(tiles)).flatten(1))  # (B * tiles, 1)
        return out.reshape(b, rows, cols, 1).permute(0, 3, 1, 2)
