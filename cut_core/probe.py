"""The probe behind ``auto``: a few timed calls that show what this device runs fast,
and the rules that rank its variants (cut_core.hardware turns them into choices and
caches them per machine).

Stage 1 times one convolution of G's residual blocks, forward and backward, in fp32
and bf16 (and, on a CPU, its forward in int8). Stage 2 times a slice of G in NCHW and
channels_last, in the precision stage 1 chose. Each variant keeps its fastest round:
other processes on the cores only add time. Pure PyTorch, no IO.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from cut_core.capabilities import Capabilities, capabilities
from cut_core.config import CUTConfig
from cut_core.machine_load import Load, LoadWindow
from cut_core.networks import build_generator  # the probe times the layers of the real G
from cut_core.timing import interleaved_ms

# A fast path must beat the plain one by this much to be chosen: rows closer than
# this are within the noise of a shared machine, and the plain path is the reference.
WIN_MARGIN = 0.92


def wins(probe_ms: dict[str, float], variant: str, against: str, gave_up: tuple[str, ...] = ()) -> bool:
    """Whether ``variant`` was timed (not given up on) and took under WIN_MARGIN of ``against``'s time."""
    return variant not in gave_up and probe_ms.get(variant, float("inf")) < WIN_MARGIN * probe_ms.get(against, float("nan"))


def layout_ratio(probe_ms: dict[str, float], precision: str) -> float:
    """channels_last's time over NCHW's on the slice of G in ``precision`` (nan if not probed)."""
    cl, plain = probe_ms.get(f"G-{precision}-channels_last"), probe_ms.get(f"G-{precision}")
    return cl / plain if cl and plain else float("nan")


def choose_precision(caps: Capabilities, probe_ms: dict[str, float], gave_up: tuple[str, ...] = ()) -> str:
    """bf16 where it is native (capability) and measurably faster (WIN_MARGIN) than fp32."""
    return "bf16" if caps.bf16 and wins(probe_ms, "bf16", "fp32", gave_up) else "fp32"


def _training_pass(dev: torch.device, dtype: torch.dtype | None, forward: Callable[[], torch.Tensor]) -> Callable[[], None]:
    """One forward (under autocast to ``dtype``; None: fp32) and backward, as a call to time."""
    def run() -> None:
        with torch.autocast(dev.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            y = forward()
        y.float().square().mean().backward()

    return run


@dataclass(frozen=True)
class Probe:
    """One probe: {variant: fastest ms} (``fp32``, ``bf16``, ``fp32-forward``, ``int8``,
    and ``G-<precision>`` with ``G-<precision>-channels_last``), the variants given up on
    after one slow call, and the machine's load while it ran (None: not a CPU probe)."""

    ms: dict[str, float]
    gave_up: tuple[str, ...] = ()
    load: Load | None = None

    @property
    def crowded(self) -> bool:
        return self.load is not None and self.load.crowded


def probe(device: torch.device | str = "cpu", *, size: int = 24, reps: int = 5) -> Probe:
    """Stage 1: one residual-block convolution of CUT's G (1 x 256 x size x size, 3x3,
    forward + backward) in fp32 and bf16, and its forward in int8 (CPU). Stage 2: the
    layout of the precision that stage 1 chose, on a slice of G (``_probe_layout``).
    On a CPU it also records whether other processes crowded the cores meanwhile."""
    dev = torch.device(device)
    with LoadWindow(torch.get_num_threads()) as window:
        ms, gave_up = _probe_stages(dev, size, reps)
    return Probe(ms, gave_up, window.load if dev.type == "cpu" else None)


def _probe_stages(dev: torch.device, size: int, reps: int) -> tuple[dict[str, float], tuple[str, ...]]:
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 256, size, size, generator=g).to(dev)
    w0 = (torch.randn(256, 256, 3, 3, generator=g) * 0.02).to(dev)
    caps = capabilities(dev)

    def train_call(dtype: torch.dtype | None) -> Callable[[], None]:
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        return _training_pass(dev, dtype, lambda: F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), w))

    calls = {"fp32": train_call(None), "bf16": train_call(torch.bfloat16)}
    ms, gave_up = interleaved_ms(calls, dev, rounds=reps, give_up_against="fp32")
    out = {name: round(_fastest(v), 3) for name, v in ms.items()}
    precision = choose_precision(caps, out, gave_up)
    out.update(_probe_layout(dev, precision))
    if dev.type == "cpu":
        ms_fp32, ms_int8, stopped = _probe_int8(x0, w0, caps.int8_reduce_range, reps)
        out["fp32-forward"], out["int8"] = round(ms_fp32, 3), round(ms_int8 * out["fp32"] / ms_fp32, 3)
        if stopped:
            gave_up += ("int8",)
    return out, gave_up


def _fastest(ms: list[float]) -> float:
    """A variant's time from its rounds: the fastest. Another process on the cores only
    adds time, and in bursts: under a parallel `make test` on 2 cores, one probe's
    medians of 3 rounds put channels_last at 0.70x NCHW under the AVX2 emulation (the
    slice's NCHW round took 3x its time on a quiet machine), where quiet runs measure 1.21x."""
    return min(ms)


# The layout's timed rounds stop after this many seconds: a call of the slice takes
# 0.1-0.2 s on an AMX Xeon (three rounds fit) but 1.2 s on one thread of an older
# AVX2-only EPYC, where three rounds made the probe 12 s; the cache gathers the
# rounds of three processes' probes anyway.
LAYOUT_BUDGET_S = 1.5


def _probe_layout(dev: torch.device, precision: str, *, size: int = 128, rounds: int = 3) -> dict[str, float]:
    """Fastest ms of a slice of CUT's G (ngf 64, one residual block; 1 x 3 x size x size),
    forward + backward in ``precision``, in NCHW (``G-<precision>``) and channels_last
    (``G-<precision>-channels_last``), timed round by round (up to ``rounds``, within
    LAYOUT_BUDGET_S after the warm-up call). 128 px: at 64 px the full-resolution
    backward that makes channels_last slow on an AVX2 CPU barely shows (0.98x against
    1.17x at 128 px on the older AVX2 EPYC, 1.09x at 96 px)."""
    cfg = CUTConfig.from_preset("cut").with_overrides({"n_blocks": 1})
    g = torch.Generator().manual_seed(0)
    x0 = (torch.rand(1, 3, size, size, generator=g) * 2 - 1).to(dev)
    dtype = torch.bfloat16 if precision == "bf16" else None

    def slice_call(cl: bool) -> Callable[[], None]:
        fmt = torch.channels_last if cl else torch.contiguous_format
        net = build_generator(cfg.model).to(dev).to(memory_format=fmt)
        x = x0.contiguous(memory_format=fmt)
        return _training_pass(dev, dtype, lambda: net(x))

    name = f"G-{precision}"
    ms, _ = interleaved_ms({name: slice_call(False), f"{name}-channels_last": slice_call(True)}, dev, rounds=rounds,
                           budget_s=LAYOUT_BUDGET_S)
    return {k: round(_fastest(v), 3) for k, v in ms.items()}


def _probe_int8(x0: torch.Tensor, w0: torch.Tensor, reduce_range: bool, reps: int) -> tuple[float, float, bool]:
    """The same convolution's forward in fp32 and in PyTorch's quantized NHWC kernels."""
    import warnings

    from torch.ao.nn.quantized import Conv2d as QuantizedConv2d

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if "x86" in torch.backends.quantized.supported_engines:
            torch.backends.quantized.engine = "x86"
        scales = (w0.abs().amax(dim=(1, 2, 3)) / 127).double()
        qw = torch.quantize_per_channel(w0, scales, torch.zeros(256, dtype=torch.long), 0, torch.qint8)
        conv = QuantizedConv2d(256, 256, 3, padding=1, bias=False)
        conv.set_weight_bias(qw, None)
        conv.scale, conv.zero_point = 0.05, 0
        levels = 127 if reduce_range else 255
        xq = torch.quantize_per_tensor(x0.clamp(min=0), 4.0 / levels, 0, torch.quint8)
        xq = xq.contiguous(memory_format=torch.channels_last)
        ms, gave_up = interleaved_ms({"fp32": lambda: F.conv2d(x0, w0, padding=1), "int8": lambda: conv(xq)},
                                     "cpu", rounds=reps, give_up_against="fp32")
    return _fastest(ms["fp32"]), _fastest(ms["int8"]), "int8" in gave_up
