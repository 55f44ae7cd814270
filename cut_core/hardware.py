"""What this machine runs fast, measured: the resolution of ``precision: auto`` and
``channels_last: auto``.

A capability flag is not enough. A CPU may report bf16 and still run it slowly
(oneDNN restricted by ``ONEDNN_MAX_CPU_ISA``, a hypervisor hiding AVX-512, an old
oneDNN), and on a CPU with no native bf16 at all, PyTorch emulates it at a cost of
about 35x fp32 for CUT's step. channels_last wins on some CPUs and costs 1.3x on
others. So ``auto`` is settled by a short probe in two stages, forward and backward:

1. precision: one convolution of G's residual blocks (256 -> 256 channels, 3x3) in
   fp32 and in bf16. The residual blocks are most of G's arithmetic, and G is most
   of the step's; a variant that is emulated is timed once and dropped.
2. layout, in the precision stage 1 chose: a slice of G (every kind of layer it has:
   the 7x7 stem, both anti-aliased downsamplings, one residual block, both
   upsamplings; ngf 64, one 128 px image) in NCHW and in channels_last. One conv
   cannot settle this. On an Intel Xeon with AMX, channels_last loses 3-10% on that
   conv yet makes the whole bf16 step 1.7x faster (the NCHW step spends its time
   converting large activations between layouts around oneDNN's kernels); on an
   AVX2-only CPU it wins nothing on the conv and costs 1.4x on the step, in the
   convolutions' backward at full resolution. The slice reproduces both (0.58-0.65x
   and 1.09-1.18x).

The probe takes about a second on an AMX Xeon, where everything is fast, and up to
6.5 s on one thread of an older AVX2-only EPYC (2026-12-03), where one call of the
slice of G takes 1.2 s: the slice's timed rounds stop after LAYOUT_BUDGET_S (three
rounds made that probe 12 s), and an emulated variant is timed once, then dropped. Its
result is cached per machine (CPU or GPU model, torch version, ISA limits in the
environment, thread count) in ``$RAYCUT_CACHE`` (default ``~/.cache/raycut``): the
first three training processes on a machine probe, the cache keeps each variant's
fastest time over their probes (a busy moment only adds time), and later processes read
it (translation reads it from the first probe on). A probe during which other processes
crowded the cores (cut_core.machine_load) is not counted: see merge_probe.

Pure PyTorch, no IO but the cache file (and, on a CPU, glibc's malloc settings:
cut_core.allocator).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from cut_core.allocator import keep_freed_memory
from cut_core.config import CUTConfig, PerfConfig
from cut_core.machine_load import Load, LoadWindow
from cut_core.networks import build_generator  # the probe times the layers of the real G

PROBE_VERSION = 7  # 4: variants timed round by round, in a shuffled order; 5: layout on a slice of G;
# 6: each variant's fastest round, not the median (on a busy machine, see _fastest);
# 7: probes on crowded cores kept apart (cut_core.machine_load), the layout's rounds on a budget
# Environment variables that change which kernels run, and so the probe's answer.
ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "DNNL_MAX_CPU_ISA", "ONEDNN_DEFAULT_FPMATH_MODE")
# A fast path must beat the plain one by this much to be chosen: rows closer than
# this are within the noise of a shared machine, and the plain path is the reference.
WIN_MARGIN = 0.92
# A variant whose first call takes this many times fp32's is not timed again.
GIVE_UP_RATIO = 4.0


def cache_dir() -> Path:
    """``$RAYCUT_CACHE``, else ``$XDG_CACHE_HOME/raycut``, else ``~/.cache/raycut``."""
    if os.environ.get("RAYCUT_CACHE"):
        return Path(os.environ["RAYCUT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "raycut"


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


@dataclass(frozen=True)
class FastPaths:
    """The fastest variants of one device, and why. ``probe_ms`` holds the probe's
    median per variant (``fp32``, ``bf16``, ``int8`` on one conv; ``G-fp32`` and
    ``G-fp32-channels_last`` (or ``G-bf16...``) on a slice of G; a variant that was
    given up on after one call is listed in ``gave_up``)."""

    device: str
    precision: str  # for training and float translation: fp32 | bf16
    channels_last: bool
    int8: bool  # translation: int8 is the fastest path (CPU, VNNI, measured)
    capabilities: Capabilities
    probe_ms: dict[str, float] = field(default_factory=dict)
    gave_up: tuple[str, ...] = ()
    cached: bool = False  # read from the cache file, not measured in this process
    probes: int = 1  # how many probes' fastest times ``probe_ms`` holds (see merge_probe)
    crowded_probes: int = 0  # probes taken on crowded cores, kept apart from the counted ones

    def trusted(self) -> bool:
        """Whether the cache's entry is final: ``probes_to_trust()`` counted probes, or
        twice that many in all on a machine that is never quiet (a probe costs seconds)."""
        n = probes_to_trust()
        return self.probes >= n or self.probes + self.crowded_probes >= 2 * n

    def layout_for(self, precision: str) -> bool:
        """channels_last for ``precision``: the probe's choice for the precision it
        timed the layouts in; NCHW, the reference layout, for one it did not time (an
        explicit precision other than auto's)."""
        if precision == self.precision:
            return self.channels_last
        return _wins(self.probe_ms, f"G-{precision}-channels_last", f"G-{precision}")

    def layout_ratio(self) -> float:
        """channels_last's time over NCHW's on the slice of G (nan if not probed)."""
        return _layout_ratio(self.probe_ms, self.precision)

    def slowdown(self, variant: str) -> float:
        """How many times fp32's probe time ``variant`` took (nan if not probed)."""
        base = self.probe_ms.get("fp32")
        return self.probe_ms[variant] / base if base and variant in self.probe_ms else float("nan")

    @property
    def reason(self) -> str:
        """One line: what auto chose and the measurements behind it."""
        c = self.capabilities
        parts = [f"{c.name} ({c.isa}, native bf16 {'yes' if c.bf16 else 'no'}"
                 + (f", VNNI {'yes' if c.vnni else 'no'}" if c.device == "cpu" else "") + ")"]
        for v in ("bf16", "int8"):
            if v in self.probe_ms:
                parts.append(f"{v} {self.slowdown(v):.2f}x fp32's time" + (" (emulated; gave up)" if v in self.gave_up else ""))
        if f"G-{self.precision}" in self.probe_ms:
            parts.append(f"channels_last {self.layout_ratio():.2f}x NCHW's time in {self.precision} on a slice of G")
        return "; ".join(parts) + f" [{self._provenance()}]"

    def _provenance(self) -> str:
        crowded = f"{self.crowded_probes} on crowded cores" if self.crowded_probes else ""
        if self.cached:
            return "cached probe" + (f"; {crowded}" if crowded else "")
        if not self.probes:
            return f"no quiet probe yet; {crowded}"
        return f"probe {self.probes} of {probes_to_trust()}" + (f"; {crowded}" if crowded else "")

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        out["gave_up"] = list(self.gave_up)
        return out

    @classmethod
    def from_json(cls, data: dict[str, object]) -> FastPaths:
        caps = Capabilities(**data["capabilities"])  # type: ignore[arg-type]
        return cls(device=str(data["device"]), precision=str(data["precision"]),
                   channels_last=bool(data["channels_last"]), int8=bool(data["int8"]), capabilities=caps,
                   probe_ms={str(k): float(v) for k, v in dict(data["probe_ms"]).items()},  # type: ignore[arg-type]
                   gave_up=tuple(data.get("gave_up", ())), cached=True,  # type: ignore[arg-type]
                   probes=int(data.get("probes", 1)),  # type: ignore[arg-type]
                   crowded_probes=int(data.get("crowded_probes", 0)))  # type: ignore[arg-type]


# ---- the probe ---------------------------------------------------------------------


def sync(device: torch.device | str) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; a CPU does not)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed_ms(fn: Callable[[], object], device: torch.device | str) -> float:
    """Wall milliseconds of one call of ``fn``, the work it queued on the device included:
    the timing primitive of the probe here and of the benchmarks (cut_core.timing, jobs/bench)."""
    t0 = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - t0) * 1000


def interleaved_ms(calls: dict[str, Callable[[], object]], device: torch.device | str, *, rounds: int,
                   warmup: int = 1, give_up_against: str | None = None, seed: int = 0,
                   on_round: Callable[[int, dict[str, float]], None] | None = None,
                   budget_s: float | None = None,
                   ) -> tuple[dict[str, list[float]], tuple[str, ...]]:
    """ms per call of each variant over ``rounds`` rounds; each round calls every
    variant once, in an order shuffled anew each round (seeded). Timed one variant after
    another, the first paid for the machine waking up (thread pool, clock ramp): on an
    Intel Xeon that made fp32 look 1.5x slower than it is, and slow bf16 the winner.
    Rotating a fixed order is not enough either: each variant would always follow the
    same neighbour. ``warmup`` calls each first (one-off set-up); a variant whose first
    call takes more than ``2 * GIVE_UP_RATIO`` times that of ``give_up_against`` is
    emulated: it is not timed again and its list holds that one call. With ``budget_s``
    no round starts once the timed rounds have taken that long (one round at least). Returns
    ({variant: [ms per round]}, variants given up on); ``on_round(r, {variant: ms})``
    after each round."""
    dev = torch.device(device)
    first = {name: timed_ms(call, dev) for name, call in calls.items()}
    limit = first[give_up_against] * GIVE_UP_RATIO * 2 if give_up_against in first else float("inf")
    gave_up = [name for name, ms in first.items() if name != give_up_against and ms > limit]
    live = [n for n in calls if n not in gave_up]
    for _ in range(warmup - 1):
        for name in live:
            calls[name]()
    sync(dev)
    times: dict[str, list[float]] = {n: [] for n in live}
    order, rng = list(live), random.Random(seed)
    started = time.perf_counter()
    for r in range(rounds):
        if r and budget_s is not None and time.perf_counter() - started >= budget_s:
            break
        rng.shuffle(order)
        for name in order:
            times[name].append(timed_ms(calls[name], dev))
        if on_round is not None:
            on_round(r, {n: times[n][-1] for n in live})
    return {n: times[n] if n in times else [first[n]] for n in calls}, tuple(gave_up)


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
    precision = _precision(caps, out, gave_up)
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


def _wins(probe_ms: dict[str, float], variant: str, against: str, gave_up: tuple[str, ...] = ()) -> bool:
    return variant not in gave_up and probe_ms.get(variant, float("inf")) < WIN_MARGIN * probe_ms.get(against, float("nan"))


def _layout_ratio(probe_ms: dict[str, float], precision: str) -> float:
    """channels_last's time over NCHW's on the slice of G in ``precision`` (nan if not probed)."""
    cl, plain = probe_ms.get(f"G-{precision}-channels_last"), probe_ms.get(f"G-{precision}")
    return cl / plain if cl and plain else float("nan")


def _precision(caps: Capabilities, probe_ms: dict[str, float], gave_up: tuple[str, ...] = ()) -> str:
    """bf16 where it is native (capability) and measurably faster (WIN_MARGIN) than fp32."""
    return "bf16" if caps.bf16 and _wins(probe_ms, "bf16", "fp32", gave_up) else "fp32"


def decide(caps: Capabilities, probe_ms: dict[str, float], gave_up: tuple[str, ...] = ()) -> FastPaths:
    """The fastest variants from a probe: a fast path must be native (capability) and
    measurably faster (by WIN_MARGIN) than the plain one."""
    precision = _precision(caps, probe_ms, gave_up)
    channels_last = _wins(probe_ms, f"G-{precision}-channels_last", f"G-{precision}")
    # int8 against the float path auto takes: its conv, scaled by the layout's gain.
    best_float = probe_ms[precision] * (_layout_ratio(probe_ms, precision) if channels_last else 1.0)
    int8 = caps.device == "cpu" and caps.vnni and "int8" not in gave_up and probe_ms.get("int8", float("inf")) < WIN_MARGIN * best_float
    return FastPaths(caps.device, precision, channels_last, int8, caps, dict(probe_ms), tuple(gave_up))


def machine_key(device: torch.device | str = "cpu") -> str:
    """What the probe's answer depends on: the device model, torch, the ISA limits in
    the environment and (CPU) the thread count."""
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{cpu_model()}|threads={torch.get_num_threads()}"
    env = ",".join(f"{k}={os.environ[k]}" for k in ISA_ENV if os.environ.get(k))
    return f"v{PROBE_VERSION}|{dev.type}|{name}|torch={torch.__version__}|{env}"


def _cache_file() -> Path:
    return cache_dir() / "fast_paths.json"


def _read_cache() -> dict[str, dict[str, object]]:
    try:
        data = json.loads(_cache_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(key: str, paths: FastPaths) -> None:
    """Best effort (a read-only home must not stop a run); atomic, so processes that
    probe at the same time never leave a torn file."""
    path = _cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache()
        data[key] = paths.to_json()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass


@functools.lru_cache(maxsize=None)
def _fast_paths(key: str, device: str, use_cache: bool, refine: bool = True) -> FastPaths:
    # The first caller may be inside no_grad or inference_mode (a calibration, an
    # actor's set-up): the probe times backward passes, so it needs autograd on.
    with torch.inference_mode(False), torch.enable_grad():
        return _probe_or_cached(key, device, use_cache, refine)


PROBES_ENV = "RAYCUT_PROBES"  # how many probes the cache gathers before it is trusted
PROBES_TO_TRUST = 3


def probes_to_trust() -> int:
    try:
        return max(1, int(os.environ.get(PROBES_ENV, PROBES_TO_TRUST)))
    except ValueError:
        return PROBES_TO_TRUST


def merge_probe(earlier: FastPaths | None, caps: Capabilities, new: Probe) -> FastPaths:
    """The cache's entry after probe ``new``. Counted probes (cores not crowded) keep
    each variant's fastest time over them: another process that leaves the probe its
    cores only adds time, in bursts (seen on a 2-core EPYC: one probe taken while the
    machine was busy put channels_last at 0.98x NCHW's time in bf16, so off, where quiet
    probes measure 0.75x; a cache that trusted its first probe kept that for good).
    A probe on crowded cores is biased, not just slow (cut_core.machine_load: 0.71x
    against 1.17x): it decides only until a counted probe exists, which then replaces
    its times instead of merging with them, and it never merges into counted ones."""
    crowded = new.crowded
    ms, gave_up = dict(new.ms), tuple(new.gave_up)
    probes, crowded_probes = (0, 1) if crowded else (1, 0)
    if earlier is not None:
        probes += earlier.probes
        crowded_probes += earlier.crowded_probes
        if crowded and earlier.probes:
            ms, gave_up = dict(earlier.probe_ms), tuple(earlier.gave_up)  # the counted times stand
        elif crowded or earlier.probes:
            ms = {k: min(v, earlier.probe_ms.get(k, v)) for k, v in ms.items()}
            gave_up = tuple(sorted(set(gave_up) | set(earlier.gave_up)))
    return replace(decide(caps, ms, gave_up), probes=probes, crowded_probes=crowded_probes)


def _probe_or_cached(key: str, device: str, use_cache: bool, refine: bool = True) -> FastPaths:
    """The cache's answer once it is trusted (FastPaths.trusted); until then probe again
    and merge (merge_probe). ``refine=False`` (translation, whose actors start for short
    jobs too) takes any cached entry as it is and probes only where there is none;
    training refines it."""
    earlier: FastPaths | None = None
    if use_cache:
        hit = _read_cache().get(key)
        if hit is not None:
            try:
                earlier = FastPaths.from_json(hit)
            except (KeyError, TypeError, ValueError):
                pass  # an older or damaged entry: measure again
            if earlier is not None and (earlier.trusted() or not refine):
                return earlier
    paths = merge_probe(earlier, capabilities(device), probe(device))
    if use_cache:
        _write_cache(key, paths)
    return paths


def fast_paths(device: torch.device | str = "cpu", *, use_cache: bool = True, refine: bool = True) -> FastPaths:
    """The fastest variants of ``device``: from this process's memory, else the cache
    file, else a probe (which then fills both). With ``refine`` (the default) a cache
    entry that holds fewer than ``probes_to_trust()`` probes is probed again and merged."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return _fast_paths(machine_key(dev), str(dev), use_cache, refine)


@dataclass(frozen=True)
class ResolvedPerf:
    """A ``PerfConfig`` with ``auto`` settled for one device, and what to tell the user."""

    perf: PerfConfig  # concrete: precision fp32|bf16, channels_last a bool
    requested: PerfConfig
    paths: FastPaths | None  # None when nothing was left to auto and no check was needed
    warnings: tuple[str, ...] = ()
    malloc: str = ""  # on a CPU: what cut_core.allocator did to this process's malloc

    @property
    def summary(self) -> str:
        """e.g. ``precision auto -> fp32, channels_last auto -> off``."""
        bits = []
        for name in ("precision", "channels_last"):
            asked, got = getattr(self.requested, name), getattr(self.perf, name)
            shown = got if name == "precision" else ("on" if got else "off")
            bits.append(f"{name} {'auto -> ' if asked == 'auto' else ''}{shown}")
        return ", ".join(bits)

    def params(self) -> dict[str, object]:
        """For MLflow params and benchmark records."""
        out: dict[str, object] = {"resolved_precision": self.perf.precision,
                                  "resolved_channels_last": self.perf.channels_last}
        if self.paths is not None:
            out["fast_paths_reason"] = self.paths.reason[:500]
        if self.malloc:
            out["cpu_malloc"] = self.malloc
        return out


def emulation_warning(paths: FastPaths, variant: str) -> str | None:
    """The one line for a variant the user forced although this device runs it slowly."""
    ratio = paths.slowdown(variant)
    if variant == "bf16" and not paths.capabilities.bf16 or ratio >= 1.5:
        what = "emulated" if not paths.capabilities.bf16 and variant.startswith("bf16") else "slow"
        return (f"{variant} is {what} on this {paths.device} ({paths.capabilities.name}): {ratio:.1f}x the time of fp32 "
                f"in the probe; use precision auto (or fp32)")
    return None


def resolve_perf(perf: PerfConfig, device: torch.device | str = "cpu", *, use_cache: bool = True) -> ResolvedPerf:
    """Settle ``auto`` for ``device`` from the (cached) probe. An explicit bf16 on a
    device that runs it slowly is kept, with a warning that names the measured cost.
    On a CPU, also tunes this process's malloc for training (cut_core.allocator)."""
    malloc = keep_freed_memory() if torch.device(device).type == "cpu" else ""
    needs_probe = perf.precision in ("auto", "bf16") or perf.channels_last == "auto"
    if not needs_probe:
        return ResolvedPerf(perf, perf, None, malloc=malloc)
    return settle_perf(perf, fast_paths(device, use_cache=use_cache), malloc=malloc)


def settle_perf(perf: PerfConfig, paths: FastPaths, *, malloc: str = "") -> ResolvedPerf:
    """``perf`` with ``auto`` settled from the measurements ``paths`` (resolve_perf's rule,
    for paths at hand: a cache entry, another rank's, a test's)."""
    precision = paths.precision if perf.precision == "auto" else perf.precision
    if perf.channels_last == "auto":
        channels_last = paths.layout_for(precision)
    else:
        channels_last = bool(perf.channels_last)
    warnings = []
    if perf.precision == "bf16":
        line = emulation_warning(paths, "bf16")
        if line:
            warnings.append(line)
    return ResolvedPerf(replace(perf, precision=precision, channels_last=channels_last), perf, paths, tuple(warnings),
                        malloc=malloc)


@dataclass(frozen=True)
class TranslationPaths:
    """How one device translates: precision fp32 | bf16 | int8, and the layout."""

    precision: str
    channels_last: bool
    requested: str
    paths: FastPaths | None
    warnings: tuple[str, ...] = ()

    @property
    def summary(self) -> str:
        arrow = "auto -> " if self.requested == "auto" else ""
        return f"precision {arrow}{self.precision}, channels_last {'on' if self.channels_last else 'off'}"

    def label(self, device: torch.device | str) -> str:
        """What G runs in on ``device``, in a few words: ``cpu int8``, ``cuda bf16
        channels_last`` (a translation manifest's ``fast_path`` column)."""
        return " ".join([torch.device(device).type, self.precision] + (["channels_last"] if self.channels_last else []))


def resolve_translation(precision: str, channels_last: bool | str, device: torch.device | str = "cpu", *,
                        int8_ok: bool = True, use_cache: bool = True) -> TranslationPaths:
    """Settle translation's ``auto``: int8 where its kernels are fast here (a CPU with
    VNNI, measured) and ``int8_ok`` (a ResNet G, ranges at hand), else bf16 where
    native and faster, else fp32. int8 runs NHWC by construction (channels_last off).
    On a CPU, also tunes this process's malloc (cut_core.allocator: a 2048x1024 image's
    activations are hundreds of MB, mapped and zeroed again for every image otherwise)."""
    if torch.device(device).type == "cpu":
        keep_freed_memory()
    needs = precision in ("auto", "bf16") or channels_last == "auto"
    paths = fast_paths(device, use_cache=use_cache, refine=False) if needs else None
    chosen = precision
    if precision == "auto":
        assert paths is not None
        chosen = "int8" if paths.int8 and int8_ok else paths.precision
    if chosen == "int8":
        layout = False
    elif channels_last == "auto":
        assert paths is not None
        layout = paths.layout_for(chosen)
    else:
        layout = bool(channels_last)
    warnings = []
    if precision == "bf16" and paths is not None:
        line = emulation_warning(paths, "bf16")
        if line:
            warnings.append(line)
    return TranslationPaths(chosen, layout, precision, paths, tuple(warnings))


__all__ = ["TranslationPaths", "resolve_translation", "Capabilities", "FastPaths", "ResolvedPerf", "settle_perf", "cache_dir", "capabilities", "decide", "emulation_warning",
           "fast_paths", "interleaved_ms", "machine_key", "merge_probe", "probe", "Probe", "resolve_perf"]
