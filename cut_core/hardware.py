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

This module decides and caches; the probe itself is cut_core.probe, and what a device
reports of itself is cut_core.capabilities. Pure PyTorch, no IO but the cache file
(and, on a CPU, glibc's malloc settings: cut_core.allocator).
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from cut_core.allocator import keep_freed_memory
from cut_core.capabilities import ISA_ENV, Capabilities, capabilities, cpu_model
from cut_core.config import PerfConfig
from cut_core.probe import WIN_MARGIN, Probe, choose_precision, layout_ratio, probe, wins

PROBE_VERSION = 7  # 4: variants timed round by round, in a shuffled order; 5: layout on a slice of G;
# 6: each variant's fastest round, not the median (on a busy machine, see cut_core.probe);
# 7: probes on crowded cores kept apart (cut_core.machine_load), the layout's rounds on a budget


def cache_dir() -> Path:
    """``$RAYCUT_CACHE``, else ``$XDG_CACHE_HOME/raycut``, else ``~/.cache/raycut``."""
    if os.environ.get("RAYCUT_CACHE"):
        return Path(os.environ["RAYCUT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "raycut"


@dataclass(frozen=True)
class FastPaths:
    """The fastest variants of one device, and why. ``probe_ms`` holds the probes'
    fastest time per variant (``fp32``, ``bf16``, ``int8`` on one conv; ``G-fp32`` and
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
        return wins(self.probe_ms, f"G-{precision}-channels_last", f"G-{precision}")

    def layout_ratio(self) -> float:
        """channels_last's time over NCHW's on the slice of G (nan if not probed)."""
        return layout_ratio(self.probe_ms, self.precision)

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



def decide(caps: Capabilities, probe_ms: dict[str, float], gave_up: tuple[str, ...] = ()) -> FastPaths:
    """The fastest variants from a probe: a fast path must be native (capability) and
    measurably faster (by WIN_MARGIN) than the plain one."""
    precision = choose_precision(caps, probe_ms, gave_up)
    channels_last = wins(probe_ms, f"G-{precision}-channels_last", f"G-{precision}")
    # int8 against the float path auto takes: its conv, scaled by the layout's gain.
    best_float = probe_ms[precision] * (layout_ratio(probe_ms, precision) if channels_last else 1.0)
    int8 = caps.device == "cpu" and caps.vnni and "int8" not in gave_up and probe_ms.get("int8", float("inf")) < WIN_MARGIN * best_float
    return FastPaths(caps.device, precision, channels_last, int8, caps, dict(probe_ms), tuple(gave_up))


def machine_key(device: torch.device | str = "cpu") -> str:
    """What the probe's answer depends on: the device model, torch, the ISA limits in
    the environment and (CPU) the thread count."""
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{cpu_model()}|threads={torch.get_num_threads()}"
    env = ",".join(f"{k}={os.environ[k]}" for k in ISA_ENV if os.environ.get(k))
    return f"v{PROBE_VERSION}|{dev.type}|{name}|torch={torch.__version__}|{env}"


def cache_file() -> Path:
    """The per-machine cache of probes: ``cache_dir() / fast_paths.json``."""
    return cache_dir() / "fast_paths.json"


def cached_fast_paths(device: torch.device | str = "cpu") -> FastPaths | None:
    """This machine's cache entry for ``device``, as it is (None where there is none or
    it cannot be read): what the next process would start from, without probing."""
    return _cached_entry(machine_key(_indexed(torch.device(device))))


def _cached_entry(key: str) -> FastPaths | None:
    hit = _read_cache().get(key)
    try:
        return FastPaths.from_json(hit) if hit is not None else None
    except (KeyError, TypeError, ValueError):
        return None  # an older or damaged entry: measure again


def _read_cache() -> dict[str, dict[str, object]]:
    try:
        data = json.loads(cache_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(key: str, paths: FastPaths) -> None:
    """Best effort (a read-only home must not stop a run); atomic, so processes that
    probe at the same time never leave a torn file."""
    path = cache_file()
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
    earlier = _cached_entry(key) if use_cache else None
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
    dev = _indexed(torch.device(device))
    return _fast_paths(machine_key(dev), str(dev), use_cache, refine)


def _indexed(dev: torch.device) -> torch.device:
    """``cuda`` as the current CUDA device (the cache is per GPU model)."""
    return torch.device("cuda", torch.cuda.current_device()) if dev.type == "cuda" and dev.index is None else dev


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


__all__ = ["TranslationPaths", "resolve_translation", "FastPaths", "ResolvedPerf", "settle_perf", "cache_dir", "cache_file", "cached_fast_paths", "decide",
           "emulation_warning", "fast_paths", "machine_key", "merge_probe", "resolve_perf"]
