"""CUT's three networks: the ResNet generator G, the PatchGAN discriminator D and
the patch-sampling MLP F (the heads H_l of the paper); ``build_*`` also make
SinCUT's StyleGAN2-style G and D (cut_core.stylegan2) when the config asks.

G's ``model`` Sequential has exactly the official layout, so its state dict keys
(``model.1.weight`` ... ``model.30.bias``, 52 keys with the ``filt`` buffers at
ngf 64 / 9 blocks) load from and save to an official ``latest_net_G.pth``:

====  ======================================  ============================
index  layer                                   NCE layer id (CUT default)
====  ======================================  ============================
0      ReflectionPad2d(3)                      0: the padded input
1-3    Conv7x7 ngf, InstanceNorm, ReLU
4-7    Conv3x3 2ngf, IN, ReLU, BlurDownsample  4: after the conv
8-11   Conv3x3 4ngf, IN, ReLU, BlurDownsample  8: after the conv
12..   n_blocks ResnetBlocks (4ngf)            12, 16: after blocks 1 and 5
+0-3   BlurUpsample, Conv3x3 2ngf, IN, ReLU
+4-7   BlurUpsample, Conv3x3 ngf, IN, ReLU
+8-10  ReflectionPad2d(3), Conv7x7 3, Tanh
====  ======================================  ============================
"""

from __future__ import annotations

import torch
from torch import nn

from cut_core.antialias import BlurDownsample, BlurUpsample, is_channels_last
from cut_core.config import CUTConfig, ModelConfig
from cut_core.narrow_conv import NarrowOutputConv2d
from cut_core.padding import ReflectionPad2d
from cut_core.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator


# Activations are not in-place: instance norm returns a view, and an in-place op on
# it makes autograd copy the whole tensor back (CopySlices), ~5% of a CPU step.


class _ChannelsLastInstanceNorm(torch.autograd.Function):
    """Instance norm (no affine) of a channels_last (B, C, H, W) batch, kept channels_last.

    Batch norm in training mode over a single image normalises each channel over its
    H*W pixels, which is instance norm, and the CPU batch-norm kernels read and write
    channels_last directly. One call per image (B is small in CUT: 1-2 in G).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:  # type: ignore[override]
        outs, stats = [], []
        for i in range(x.shape[0]):
            y, mean, invstd = torch.ops.aten.native_batch_norm(x[i : i + 1], None, None, None, None, True, 0.0, eps)
            outs.append(y)
            stats += [mean, invstd]
        ctx.save_for_backward(x, *stats)
        ctx.eps = eps
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        x, *stats = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last)
        grads = [
            torch.ops.aten.native_batch_norm_backward(
                grad[i : i + 1], x[i : i + 1], None, None, None, stats[2 * i], stats[2 * i + 1], True, ctx.eps,
                [True, False, False],
            )[0]
            for i in range(x.shape[0])
        ]
        return (grads[0] if len(grads) == 1 else torch.cat(grads)), None


class InstanceNorm2d(nn.InstanceNorm2d):
    """nn.InstanceNorm2d that keeps channels_last activations in channels_last.

    The native kernel views (B, C, H, W) as (1, B*C, H, W), which a channels_last
    tensor can only do by copying into NCHW, and the next conv copies it back: two
    full-size copies per norm, which cost more than channels_last saves in the convs.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plain = not (self.affine or self.track_running_stats)
        if plain and is_channels_last(x):
            return _ChannelsLastInstanceNorm.apply(x, self.eps)
        return super().forward(x)


def _instance_norm(channels: int) -> nn.InstanceNorm2d:
    # No affine, no running stats: CUT's --normG instance. Hence the convs keep a bias.
    return InstanceNorm2d(channels, affine=False, track_running_stats=False)


class ResnetBlock(nn.Module):
    """x + conv(relu(norm(conv(x)))); (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, bias=True),
            _instance_norm(dim),
            nn.ReLU(),
            ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, bias=True),
            _instance_norm(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """G: (B, 3, H, W) in [-1, 1] -> (B, 3, H, W) in [-1, 1]; H and W multiples of 4."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        ngf = cfg.ngf
        layers: list[nn.Module] = [
            ReflectionPad2d(3),
            nn.Conv2d(cfg.input_nc, ngf, kernel_size=7, bias=True),
            _instance_norm(ngf),
            nn.ReLU(),
        ]
        for mult in (1, 2):  # two anti-aliased downsamplings
            layers += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, padding=1, bias=True),
                _instance_norm(ngf * mult * 2),
                nn.ReLU(),
                BlurDownsample(ngf * mult * 2),
            ]
        layers += [ResnetBlock(ngf * 4) for _ in range(cfg.n_blocks)]
        for mult in (4, 2):  # two anti-aliased upsamplings
            layers += [
                BlurUpsample(ngf * mult),
                nn.Conv2d(ngf * mult, ngf * mult // 2, kernel_size=3, padding=1, bias=True),
                _instance_norm(ngf * mult // 2),
                nn.ReLU(),
            ]
        # To 3 channels: oneDNN runs that shape slowly, so its fp32 CPU backward is a matmul.
        layers += [ReflectionPad2d(3), NarrowOutputConv2d(ngf, cfg.output_nc, kernel_size=7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        assert len(self.model) == cfg.n_generator_layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image(x)
        return self.model(x)

    def encode(self, x: torch.Tensor, layer_ids: tuple[int, ...]) -> list[torch.Tensor]:
        """Features after each layer in ``layer_ids`` (ascending), stopping at the last:
        a list of (B, C_l, H_l, W_l)."""
        feats: list[torch.Tensor] = []
        last = layer_ids[-1]
        for i, layer in enumerate(self.model):
            x = layer(x)
            if i in layer_ids:
                feats.append(x)
            if i == last:
                break
        return feats

    def forward_and_encode(
        self, x: torch.Tensor, layer_ids: tuple[int, ...]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One pass giving both the output and ``encode(x, layer_ids)``; the step uses
        it to take the PatchNCE keys for free from the translation pass."""
        _check_image(x)
        feats: list[torch.Tensor] = []
        for i, layer in enumerate(self.model):
            x = layer(x)
            if i in layer_ids:
                feats.append(x)
        return x, feats

    def feature_channels(self, layer_ids: tuple[int, ...]) -> list[int]:
        """Channel count C_l after each layer id, derived from the layers (no forward)."""
        channels, out = self.model[1].in_channels, []
        for i, layer in enumerate(self.model):
            if isinstance(layer, nn.Conv2d):
                channels = layer.out_channels
            if i in layer_ids:
                out.append(channels)
        return out


def _check_image(x: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[2] % 4 or x.shape[3] % 4:
        raise ValueError(f"G expects (B, C, H, W) with H and W multiples of 4, got {tuple(x.shape)}")


class PatchGANDiscriminator(nn.Module):
    """D: (B, 3, H, W) -> (B, 1, H', W') logits, one per patch of
    config.patchgan_receptive_field(n_layers) pixels (84 for the paper's 3; anti-aliased)."""

    def __init__(self, cfg: ModelConfig, n_layers: int) -> None:
        super().__init__()
        ndf = cfg.ndf
        layers: list[nn.Module] = [
            nn.Conv2d(cfg.output_nc, ndf, kernel_size=4, padding=1),
            nn.LeakyReLU(0.2),
            BlurDownsample(ndf),
        ]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, kernel_size=4, padding=1, bias=True),
                _instance_norm(ndf * mult),
                nn.LeakyReLU(0.2),
                BlurDownsample(ndf * mult),
            ]
        prev, mult = mult, min(2**n_layers, 8)
        layers += [
            nn.Conv2d(ndf * prev, ndf * mult, kernel_size=4, padding=1, bias=True),
            _instance_norm(ndf * mult),
            nn.LeakyReLU(0.2),
            nn.Conv2d(ndf * mult, 1, kernel_size=4, padding=1),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class PatchSampleMLP(nn.Module):
    """F: samples patches from each NCE layer and projects them with an MLP head H_l
    (Linear-ReLU-Linear) onto the unit sphere.

    Built eagerly from the channel counts, so it exists before the optimizer and DDP
    (the official code builds it lazily on the first forward).
    """

    def __init__(self, in_channels: list[int], *, nc: int = 256) -> None:
        super().__init__()
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(c, nc), nn.ReLU(), nn.Linear(nc, nc)) for c in in_channels
        )

    @staticmethod
    def sample_ids(
        feats: list[torch.Tensor], num_patches: int, generator: torch.Generator
    ) -> list[torch.Tensor]:
        """Random patch locations: for each layer a (B, P) long tensor, P = min(num_patches, H*W).

        Each image gets its own locations (the official code shares one draw across
        the batch). Drawn from ``generator`` on the CPU so runs are reproducible on
        any device.
        """
        ids = []
        for f in feats:
            b, hw = f.shape[0], f.shape[2] * f.shape[3]
            p = min(num_patches, hw)
            rows = [torch.randperm(hw, generator=generator)[:p] for _ in range(b)]
            ids.append(torch.stack(rows).to(f.device))
        return ids

    def forward(self, feats: list[torch.Tensor], patch_ids: list[torch.Tensor]) -> list[torch.Tensor]:
        """feats[l]: (B, C_l, H_l, W_l), patch_ids[l]: (B, P_l) -> list of (B, P_l, nc), unit L2 norm."""
        out = []
        for feat, ids, head in zip(feats, patch_ids, self.heads, strict=True):
            b, c = feat.shape[:2]
            flat = feat.flatten(2)  # (B, C, H*W)
            picked = torch.gather(flat, 2, ids[:, None, :].expand(b, c, ids.shape[1]))  # (B, C, P)
            z = head(picked.transpose(1, 2))  # (B, P, nc)
            # Normalise in fp32: under bf16 autocast the norm of 256 terms loses digits
            # that tau = 0.07 later amplifies.
            z = z.float()
            out.append(z / (z.norm(dim=-1, keepdim=True) + 1e-7))
        return out


def init_weights(module: nn.Module, gain: float) -> None:
    """xavier_normal(gain) on conv and linear weights, zero biases (official ``xavier``)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.xavier_normal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


Generator = ResnetGenerator | StyleGAN2Generator
Discriminator = PatchGANDiscriminator | StyleGAN2Discriminator


def use_reference_layers(module: nn.Module) -> nn.Module:
    """Run ``module``'s layers as the reference code runs them, computing the same
    function: the upsampling as a replicate pad and a depthwise transposed conv (raycut
    interpolates bilinearly, 2x faster on a CPU), G's last conv through oneDNN's
    backward (raycut's is a matmul: cut_core.narrow_conv) and every (Leaky)ReLU in
    place (on an instance norm's output, a view, autograd then copies the tensor back).
    For the benchmark's baseline, which times the reference implementation's work."""
    for m in module.modules():
        if isinstance(m, BlurUpsample):
            m.as_transposed_conv = True
        elif isinstance(m, NarrowOutputConv2d):
            m.as_plain_conv = True
        elif isinstance(m, (nn.ReLU, nn.LeakyReLU)):
            m.inplace = True
    return module


def build_generator(cfg: ModelConfig) -> Generator:
    """G of ``cfg.netG``. The StyleGAN2 G keeps its own N(0, 1) init (equalised
    learning rate); xavier(0.02) would shrink it 50-fold (the official code skips it too)."""
    if cfg.netG == "stylegan2":
        return StyleGAN2Generator(ngf=cfg.ngf, n_blocks=cfg.n_blocks, n_down=cfg.stylegan2_G_num_downsampling,
                                  input_nc=cfg.input_nc, output_nc=cfg.output_nc)
    g = ResnetGenerator(cfg)
    init_weights(g, cfg.init_gain)
    return g


def build_discriminator(cfg: CUTConfig) -> Discriminator:
    """D of the run's ``netD``, sized for its crop: the StyleGAN2 D scores
    CUTConfig.d_tile_size tiles, the PatchGAN has CUTConfig.d_layers layers."""
    m = cfg.model
    if m.netD == "stylegan2":
        return StyleGAN2Discriminator(ndf=m.ndf, size=cfg.d_tile_size, input_nc=m.output_nc)
    d = PatchGANDiscriminator(m, cfg.d_layers)
    init_weights(d, m.init_gain)
    return d


def build_patch_mlp(cfg: ModelConfig, generator: Generator, layer_ids: tuple[int, ...]) -> PatchSampleMLP:
    f = PatchSampleMLP(generator.feature_channels(layer_ids), nc=cfg.netF_nc)
    init_weights(f, cfg.init_gain)
    return f
