"""int8 translation (cut_core.quantize): the quantized network tracks the float one,
its padding is exact, the same ranges give the same network, and misuse fails clearly.
(How close int8 stays on a trained model: tests/test_learns.py.)"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cut_core.errors import ConfigError
from cut_core.networks import build_generator
from cut_core.quantize import Int8ResnetGenerator, _pad_nhwc, calibrate_int8
from cut_core.translate import translate
from tests.conftest import tiny


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """dB over the [-1, 1] range (peak-to-peak 2)."""
    return (10 * torch.log10(4 / ((a - b) ** 2).mean())).item()


@pytest.fixture(scope="module")
def G() -> nn.Module:
    """A tiny G with unit-scale random weights (CUT's init gain of 0.02 would leave the
    output near 0 and the comparison toothless)."""
    torch.manual_seed(0)
    G = build_generator(tiny("cut").model).eval()
    for m in G.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.normal_(m.bias, std=0.1)
    return G


@pytest.fixture(scope="module")
def images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.rand(2, 3, 64, 64, generator=g) * 2 - 1 for _ in range(3)]


class _ExactConv(nn.Module):
    """A quantized conv computed in float on the dequantized input and weights, then
    requantized: what the int8 scheme means, with no kernel shortcut (no int16
    saturation)."""

    def __init__(self, qconv: nn.Module) -> None:
        super().__init__()
        self.q = qconv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.q.weight(), self.q.bias()
        y = F.conv2d(x.dequantize(), w.dequantize(), b, stride=self.q.stride, padding=self.q.padding)
        y = torch.quantize_per_tensor(y, self.q.scale, self.q.zero_point, torch.quint8)
        return y.contiguous(memory_format=torch.channels_last)


def test_int8_tracks_fp32_on_held_out_images(G, images) -> None:
    """On any CPU: the int8 network with the range this CPU's kernels need stays close
    to fp32, and its kernels compute the quantized network exactly as defined. On a CPU
    without VNNI, full-range (8-bit) activations make the kernels saturate (measured on
    an AVX2 EPYC: 24.1 dB against 29.5 dB for the same network computed exactly)."""
    ranges = calibrate_int8(G, images[:2])
    Q = Int8ResnetGenerator(G, ranges)  # reduce_range: this CPU's (cut_core.capabilities)
    x = images[2]  # not among the calibration images
    ref = translate(G, x)
    assert ref.std() > 0.3  # the output has content to get wrong
    got = translate(Q, x, precision="int8")
    assert got.shape == ref.shape and got.dtype == torch.float32
    assert not torch.equal(got, ref)  # it is a different computation, not the float G
    # The kernels against the scheme computed exactly: saturation shows as a large gap.
    exact = Int8ResnetGenerator(G, ranges, reduce_range=Q.reduce_range)
    exact.convs = nn.ModuleDict({k: _ExactConv(v) for k, v in exact.convs.items()})
    assert _psnr(got, translate(exact, x, precision="int8")) > 35, _psnr(got, translate(exact, x, precision="int8"))
    # Random weights with no structure are int8's hard case (a trained toy model: >50 dB).
    # 8-bit activations: 29.5 dB; 7-bit (no VNNI): 24.2 dB. A wrong pad, norm, ReLU or
    # residual sum falls below 15 dB.
    bar = 22 if Q.reduce_range else 25
    assert _psnr(got, ref) > bar, (_psnr(got, ref), Q.reduce_range)


def test_reduced_range_keeps_activations_in_7_bits(G, images) -> None:
    """The 7-bit network feeds the kernels no activation above 127 (what keeps the
    int16 pair sums of non-VNNI kernels from saturating)."""
    Q = Int8ResnetGenerator(G, calibrate_int8(G, images[:2]), reduce_range=True)
    seen: list[int] = []
    for conv in Q.convs.values():
        conv.register_forward_pre_hook(lambda _m, args: seen.append(int(args[0].int_repr().max())))
    Q(images[2])
    assert len(seen) == len(Q.convs) and max(seen) <= 127 and max(seen) > 100, seen


def test_same_ranges_same_network_and_ranges_are_plain_json(G, images) -> None:
    ranges = calibrate_int8(G, images[:2], precision="fp32")
    shipped = json.loads(json.dumps(ranges))  # what the driver sends to every actor
    a, b = Int8ResnetGenerator(G, ranges), Int8ResnetGenerator(G, shipped)
    x = images[2]
    assert torch.equal(a(x), b(x))
    # Every conv, norm and residual block has a range, and ranges cover zero-free spans too.
    assert {"input", "model.1", "model.2", "model.12", "model.12.conv_block.1"} <= set(ranges)
    assert all(lo <= hi for lo, hi in ranges.values())


def test_odd_sizes_and_tiles_keep_the_input_size(G, images) -> None:
    Q = Int8ResnetGenerator(G, calibrate_int8(G, images[:1]))
    x = torch.rand(1, 3, 37, 53) * 2 - 1
    whole = translate(Q, x, precision="int8")
    tiled = translate(Q, x, precision="int8", tile=24, overlap=4)
    assert whole.shape == tiled.shape == x.shape
    for h, w in [(3, 2), (1, 9)]:  # under G's smallest side: padded up and cropped back
        assert translate(Q, x[..., :h, :w], precision="int8").shape == (1, 3, h, w)


@pytest.mark.parametrize("pad", [(1, 1, 1, 1), (3, 3, 3, 3), (0, 2, 1, 0)])
def test_channels_last_reflection_pad_is_exact(pad) -> None:
    x = torch.randn(2, 5, 9, 11)
    q = torch.quantize_per_tensor(x, 0.05, 128, torch.quint8).contiguous(memory_format=torch.channels_last)
    got = _pad_nhwc(q, pad)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got.int_repr(), F.pad(q.int_repr().float(), pad, mode="reflect").to(torch.uint8))


def test_misuse_fails_with_one_clear_message(G, images) -> None:
    from cut_core.config import CUTConfig

    sincut = build_generator(CUTConfig.sincut().model)
    with pytest.raises(ConfigError, match="ResNet generator only"):
        calibrate_int8(sincut, images[:1])
    ranges = calibrate_int8(G, images[:1])
    del ranges["model.12.conv_block.1"]
    with pytest.raises(ConfigError, match="no range for model.12.conv_block.1"):
        Int8ResnetGenerator(G, ranges)
    with pytest.raises(ValueError, match="Int8ResnetGenerator"):
        translate(G, images[0], precision="int8")
    with pytest.raises(ConfigError, match="at least one image"):
        calibrate_int8(G, [])
