"""What a device says it can do: its model, torch's CPU capability, native bf16 and
int8 dot products (VNNI), with the ISA limits of the environment taken into account.
A capability is not a speed: cut_core.probe measures, cut_core.hardware decides."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

# Environment variables that change which kernels run, and so the probe's answer.
ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "DNNL_MAX_CPU_ISA", "ONEDNN_DEFAULT_FPMATH_MODE")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _isa_limited_below_avx512() -> bool:
    """Whether the environment caps oneDNN or ATen at AVX2 or less."""
    limits = [os.environ.get(k, "").lower() for k in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")]
    return any(v and "avx512" not in v and "amx" not in v and v not in ("all", "default") for v in limits)


@dataclass(frozen=True)
class Capabilities:
    """What the device says it can do (not yet what it does fast)."""

    device: str  # "cpu" or "cuda"
    name: str  # CPU model or GPU name
    isa: str  # torch's CPU capability (AVX2, AVX512, ...) or the CUDA compute capability
    bf16: bool  # native bf16: oneDNN's bf16 kernels (CPU) or torch.cuda.is_bf16_supported()
    # int8 dot products without saturation (AVX-512 VNNI or AMX). Without them the
    # x86 kernels add pairs of u8 x s8 products in int16, which saturates unless the
    # activations use 7 bits (PyTorch's own x86 observers reduce the range there).
    vnni: bool

    @property
    def int8_reduce_range(self) -> bool:
        return self.device == "cpu" and not self.vnni


def capabilities(device: torch.device | str = "cpu") -> Capabilities:
    dev = torch.device(device)
    if dev.type == "cuda":
        major, minor = torch.cuda.get_device_capability(dev)
        return Capabilities("cuda", torch.cuda.get_device_name(dev), f"sm_{major}{minor}",
                            bool(torch.cuda.is_bf16_supported()), vnni=False)
    isa = torch.backends.cpu.get_cpu_capability()
    flags = _cpu_flags()
    limited = _isa_limited_below_avx512()
    # oneDNN also "supports" bf16 on AVX-512 CPUs without bf16 instructions (by
    # conversion, slowly): native means the instructions are there too.
    has_bf16_insns = not flags or bool(flags & {"avx512_bf16", "amx_bf16"})
    bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and has_bf16_insns and not limited
    vnni = bool(flags & {"avx512_vnni", "amx_int8"}) and isa.startswith("AVX512") and not limited
    return Capabilities("cpu", cpu_model(), isa, bf16, vnni)

