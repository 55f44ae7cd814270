"""The config-selected fast paths: bf16 autocast, channels_last and torch.compile.

fp32 eager is the reference; each fast path is a switch in ``PerfConfig`` so a
benchmark can put them side by side and a test can compare them against fp32.
These helpers take a resolved ``PerfConfig`` (``auto`` settled for the device by
cut_core.hardware.resolve_perf): an unresolved one is a bug, not a fallback.
"""

from __future__ import annotations

import contextlib
from typing import Callable, TypeVar

import torch
from torch import nn

from cut_core.config import PerfConfig

T = TypeVar("T", bound=Callable)


def autocast(perf: PerfConfig, device: torch.device | str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CPU (AMX/AVX-512 bf16) or GPU; a no-op for fp32."""
    _check_resolved(perf)
    device_type = torch.device(device).type
    if perf.precision == "bf16":
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_memory_format(perf: PerfConfig, x: torch.Tensor) -> torch.Tensor:
    """Move an NCHW image batch to channels_last when asked for."""
    _check_resolved(perf)
    return x.contiguous(memory_format=torch.channels_last) if perf.channels_last is True else x


def prepare_module(perf: PerfConfig, module: nn.Module) -> nn.Module:
    _check_resolved(perf)
    if perf.channels_last is True:
        module.to(memory_format=torch.channels_last)
    return module


def maybe_compile(perf: PerfConfig, fn: T) -> T:
    """torch.compile a callable (a bound method is fine) when ``perf.compile``."""
    return torch.compile(fn) if perf.compile else fn  # type: ignore[return-value]


def _check_resolved(perf: PerfConfig) -> None:
    if not perf.resolved:
        raise ValueError(f"{perf} still says auto: settle it with cut_core.hardware.resolve_perf(perf, device) first")
