"""int8 inference for CUT's ResNet generator: post-training static quantization.

On a CPU without AMX, bf16 runs the convolutions at most 2x faster than fp32 (the
hardware ratio of AVX-512 bf16 to fp32 FMA). int8 with VNNI doubles that again, and
translation is where the speed counts: a trained G runs over whole datasets.

What is quantized, and how:
- weights: int8, one symmetric scale per output channel (absmax / 127);
- activations: uint8, one affine scale per tensor, from the (min, max) that the float
  G produced on a few calibration images (``calibrate_int8``). Every conv, instance
  norm and residual sum gets its own range; padding and the blur resampling keep
  their input's, and a ReLU after a norm is folded into the norm's range.
- The whole network then runs on quantized tensors in channels_last (NHWC): the
  quantized kernels are fast there and slow in NCHW, and converting between them
  would cost more than the convs save. Only the final tanh runs in float.

It is an approximation, like bf16: on a trained toy model the outputs stay within a
few 8-bit levels of fp32 (tests/test_learns.py measures it; tests/test_quantize.py
checks the harder case of random weights). The ranges are plain data
(``{module name: [min, max]}``), so a job calibrates once and every worker builds the
same network from them.

On a CPU without VNNI (AVX2, AVX-512 without VNNI) the x86 kernels add pairs of
u8 x s8 products in int16 with saturation (``vpmaddubsw``): 255 * 127 * 2 does not
fit. There the activations use 7 bits (0..127), as PyTorch's own x86 observers do
with ``reduce_range``; which one applies is the hardware's call
(cut_core.capabilities), made by each process that builds the network.

It runs on PyTorch's quantized CPU kernels (``torch.ao``), which PyTorch 2.14 marks as
deprecated in favour of torchao; raycut pins torch 2.14.1.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cut_core.antialias import BlurDownsample, BlurUpsample
from cut_core.errors import ConfigError
from cut_core.networks import InstanceNorm2d, ResnetBlock, ResnetGenerator
from cut_core.padding import pad_to_multiple

# The ranges a calibration records: the outputs of these modules.
_RANGED = (nn.Conv2d, InstanceNorm2d, ResnetBlock)
INPUT = "input"  # the image itself: [-1, 1]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """PyTorch 2.14 warns that its quantized tensor API will move to torchao; raycut
    pins torch, and the README says so. Repeated in every actor's log it is noise."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*deprecated")
        yield


def _engine() -> None:
    # x86 picks fbgemm or oneDNN kernels per op; it is the fastest CPU engine here
    # (a ResNet-block conv: 44 ms against 85 ms in bf16 at 1024x512).
    if "x86" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "x86"


def _check_generator(G: nn.Module) -> ResnetGenerator:
    if not isinstance(G, ResnetGenerator):
        raise ConfigError(
            f"int8 translation supports CUT's ResNet generator only, not {type(G).__name__}; "
            "use --precision bf16 for this model"
        )
    return G


@torch.no_grad()
def calibrate_int8(G: nn.Module, images: Iterable[torch.Tensor], *, precision: str = "auto") -> dict[str, list[float]]:
    """Run the float G on ``images`` (each (B, 3, H, W) in [-1, 1], any H x W) and
    return ``{module name: [min, max]}`` of every conv, instance norm and residual
    block output, over all images. ``precision`` is the float pass's: bf16 is 2x
    faster where native, and its ranges differ from fp32's by far less than one int8
    step; auto takes bf16 only where this CPU runs it natively (cut_core.hardware)."""
    G = _check_generator(G)
    if precision == "auto":
        from cut_core.hardware import fast_paths

        precision = fast_paths("cpu").precision
    ranges: dict[str, list[float]] = {INPUT: [-1.0, 1.0]}

    def record(name: str):
        def hook(_module: nn.Module, _inputs: object, out: torch.Tensor) -> None:
            lo, hi = out.min().item(), out.max().item()
            old = ranges.get(name, [lo, hi])
            ranges[name] = [min(old[0], lo), max(old[1], hi)]

        return hook

    hooks = [m.register_forward_hook(record(name)) for name, m in G.named_modules() if isinstance(m, _RANGED)]
    try:
        seen = 0
        for x in images:
            # NCHW: a decoded image arrives channels_last, and the hooks' min/max over
            # channels_last activations doubled the pass.
            x = pad_to_multiple(x).contiguous()
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                G(x)
            seen += 1
    finally:
        for h in hooks:
            h.remove()
    if not seen:
        raise ConfigError("int8 calibration needs at least one image")
    return ranges


def _qparams(lo: float, hi: float, levels: int = 255) -> tuple[float, int]:
    """uint8 affine scale and zero point covering [lo, hi] (and 0, exactly) with
    ``levels`` steps: 255, or 127 where the kernels saturate (see the module doc)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / levels, 1e-8)
    return scale, int(min(max(round(-lo / scale), 0), levels))


def _pad_nhwc(q: torch.Tensor, pad: Sequence[int]) -> torch.Tensor:
    """Reflection padding of a quantized channels_last tensor, kept channels_last.
    (The native quantized pad returns NCHW, and the copy back costs 3x the pad.)"""
    left, right, top, bottom = pad
    b, c, h, w = q.shape
    out = torch._empty_affine_quantized((b, c, h + top + bottom, w + left + right), scale=q.q_scale(),
                                        zero_point=q.q_zero_point(), dtype=q.dtype, memory_format=torch.channels_last)
    out[:, :, top : top + h, left : left + w] = q
    for k in range(1, left + 1):
        out[:, :, top : top + h, left - k] = q[:, :, :, k]
    for k in range(1, right + 1):
        out[:, :, top : top + h, left + w - 1 + k] = q[:, :, :, w - 1 - k]
    for k in range(1, top + 1):  # rows last, so the corners come from the padded rows
        out[:, :, top - k] = out[:, :, top + k]
    for k in range(1, bottom + 1):
        out[:, :, top + h - 1 + k] = out[:, :, top + h - 1 - k]
    return out


def _quantized_conv(conv: nn.Conv2d, out_range: Sequence[float], levels: int) -> nn.Module:
    from torch.ao.nn.quantized import Conv2d as QuantizedConv2d

    w = conv.weight.detach().float().cpu()
    scales = (w.abs().amax(dim=(1, 2, 3)).clamp(min=1e-12) / 127.0).double()
    qw = torch.quantize_per_channel(w, scales, torch.zeros(len(scales), dtype=torch.long), 0, torch.qint8)
    q = QuantizedConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                        padding=conv.padding, groups=conv.groups, bias=conv.bias is not None)
    q.set_weight_bias(qw, None if conv.bias is None else conv.bias.detach().float().cpu())
    q.scale, q.zero_point = _qparams(*out_range, levels)
    return q


class Int8ResnetGenerator(nn.Module):
    """CUT's ResnetGenerator in int8, from its float weights and calibrated ranges.
    (B, 3, H, W) float in [-1, 1], H and W multiples of 4 -> (B, 3, H, W) float32.
    CPU only (PyTorch's quantized kernels are CPU kernels). ``reduce_range``: 7-bit
    activations; None asks this CPU (cut_core.capabilities: no VNNI -> reduced)."""

    def __init__(self, G: nn.Module, ranges: Mapping[str, Sequence[float]], *, reduce_range: bool | None = None) -> None:
        super().__init__()
        _engine()
        if reduce_range is None:
            from cut_core.capabilities import capabilities

            reduce_range = capabilities("cpu").int8_reduce_range
        self.reduce_range = bool(reduce_range)
        self.levels = 127 if reduce_range else 255
        self.G = _check_generator(G)
        missing = [name for name, m in G.named_modules() if isinstance(m, _RANGED) and name not in ranges]
        if missing:
            raise ConfigError(f"int8 calibration has no range for {missing[0]} (and {len(missing) - 1} more): "
                              "it was made for another architecture; calibrate again")
        self.ranges = {k: (float(v[0]), float(v[1])) for k, v in ranges.items()}
        with _quiet():
            self.convs = nn.ModuleDict({
                name.replace(".", "_"): _quantized_conv(m, self.ranges[name], self.levels)
                for name, m in G.named_modules() if isinstance(m, nn.Conv2d)
            })

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, zero = _qparams(*self.ranges.get(INPUT, (-1.0, 1.0)), self.levels)
        with _quiet():
            q = torch.quantize_per_tensor(x.float().cpu(), scale, zero, torch.quint8)
            q = self._run(self.G.model, q.contiguous(memory_format=torch.channels_last), "model.")
        return torch.tanh(q.dequantize()).contiguous()

    def _run(self, layers: nn.Sequential, q: torch.Tensor, prefix: str) -> torch.Tensor:
        fused_relu = False
        for i, layer in enumerate(layers):
            name = f"{prefix}{i}"
            if isinstance(layer, nn.Conv2d):
                if self.levels < 255:
                    # Values past the calibrated range still quantize up to 255: clamp them
                    # to 7 bits, or the kernels saturate on exactly those pixels.
                    q = torch.clamp(q, max=(self.levels - q.q_zero_point()) * q.q_scale())
                q = self.convs[name.replace(".", "_")](q)
            elif isinstance(layer, InstanceNorm2d):
                lo, hi = self.ranges[name]
                # A ReLU next is free: quantized to [0, hi], negatives saturate at 0,
                # and all 256 levels go to the values the ReLU keeps.
                fused_relu = i + 1 < len(layers) and isinstance(layers[i + 1], nn.ReLU)
                q = torch.ops.quantized.instance_norm(q, None, None, layer.eps, *_qparams(0.0 if fused_relu else lo, hi, self.levels))
            elif isinstance(layer, nn.ReLU):
                if not fused_relu:
                    q = torch.relu(q)
                fused_relu = False
            elif isinstance(layer, nn.ReflectionPad2d):
                q = _pad_nhwc(q, layer.padding)
            elif isinstance(layer, BlurDownsample) and layer.filt.shape[-1] == 3:
                # The [1, 2, 1] / 4 blur is two 2x2 means, the second one strided.
                q = F.avg_pool2d(F.avg_pool2d(_pad_nhwc(q, layer.pad_sizes), 2, stride=1), 2, stride=2)
            elif isinstance(layer, BlurUpsample) and layer.filt_size == 4:
                q = F.interpolate(q, scale_factor=2, mode="bilinear", align_corners=False)
                q = q.contiguous(memory_format=torch.channels_last)
            elif isinstance(layer, ResnetBlock):
                body = self._run(layer.conv_block, q, f"{name}.conv_block.")
                q = torch.ops.quantized.add(q, body, *_qparams(*self.ranges[name], self.levels))
            elif isinstance(layer, nn.Tanh):
                return q  # forward applies it in float
            else:
                raise ConfigError(f"int8 translation has no rule for layer {name} ({type(layer).__name__})")
        return q


__all__ = ["INPUT", "Int8ResnetGenerator", "calibrate_int8"]
