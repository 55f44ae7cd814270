"""`raycut env`: what raycut sees on this machine, in one screen (or as JSON).

The versions it runs with, what the CPU and GPUs report, what ``auto`` settles on for
training and for translation here and the measurements behind it, what raycut does to
malloc, and where a run would go (a Ray cluster or a local Ray, and how full the disk
under a local Ray's files is; the MLflow store).
It is the first thing to look at when a run is slower than expected, and the thing
to paste into a bug report. It starts no Ray and opens no tracking store.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from cut_core.cores import thread_cap, usable_cores
from jobs.disk import human_bytes, nearest_existing, room

PACKAGES = ("raycut", "torch", "torchvision", "ray", "mlflow", "pyarrow")


@dataclass(frozen=True)
class DeviceReport:
    """One device: what it reports, and what ``auto`` picks on it (None: not probed)."""

    device: str  # cpu | cuda:N
    name: str
    isa: str  # torch's CPU capability, or the CUDA compute capability
    native_bf16: bool
    vnni: bool
    training: str | None  # e.g. "precision auto -> bf16, channels_last auto -> on"
    translation: str | None  # e.g. "precision auto -> int8, channels_last off"
    reason: str | None  # the measurements behind it (FastPaths.reason)
    probed: str  # "probed now" | "from the cache" | "not probed yet"


@dataclass(frozen=True)
class EnvReport:
    python: str
    platform: str
    packages: dict[str, str]
    cpu_count: int  # the host's logical CPUs
    usable_cores: int  # what this process may run on: affinity, cgroup quota (cut_core.cores)
    torch_threads: int
    isa_limits: dict[str, str]  # ONEDNN_MAX_CPU_ISA and the like, where set
    devices: tuple[DeviceReport, ...]
    probe_cache: str
    probe_cache_writable: bool  # False: every process probes again (seconds each)
    malloc: str
    ray: str
    ray_files: str | None  # a local Ray's folder and its disk (None on a cluster: its nodes' disks count)
    ray_disk_over_limit: bool  # the raylet refuses to spill objects there
    mlflow: str


def gather(*, probe: bool = True) -> EnvReport:
    """Read this machine. With ``probe`` a device without a cached probe is probed now
    (a few seconds) and the cache filled, as the first training process would; without
    it only the cache is read."""
    import torch

    from cut_core.allocator import keep_freed_memory
    from cut_core.capabilities import ISA_ENV
    from cut_core.hardware import cache_file
    from jobs.tracking import tracking_uri

    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    cores = usable_cores()
    ray_files, over = (None, False) if os.environ.get("RAY_ADDRESS") else _ray_disk()
    return EnvReport(
        python=f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        platform=f"{platform.system()} {platform.machine()}",
        packages={p: _version(p) for p in PACKAGES},
        cpu_count=os.cpu_count() or 1,
        usable_cores=cores,
        torch_threads=torch.get_num_threads(),
        isa_limits={k: os.environ[k] for k in ISA_ENV if os.environ.get(k)},
        devices=tuple(_device(d, probe) for d in devices),
        probe_cache=str(cache_file()),
        probe_cache_writable=_writable(cache_file().parent),
        # What raycut's training and translation processes do to malloc (and this one now).
        malloc=keep_freed_memory() if platform.system() == "Linux" else "unchanged (not Linux)",
        ray=(f"RAY_ADDRESS={os.environ['RAY_ADDRESS']}: commands run on that cluster"
             if os.environ.get("RAY_ADDRESS") else
             f"no RAY_ADDRESS: each command starts a local Ray with at least {cores} logical CPUs"),
        ray_files=ray_files,
        ray_disk_over_limit=over,
        mlflow=tracking_uri() + ("" if os.environ.get("MLFLOW_TRACKING_URI") else
                                 " (no MLFLOW_TRACKING_URI: the SQLite file in the working directory)"),
    )


def _device(device: str, probe: bool) -> DeviceReport:
    from cut_core.capabilities import capabilities
    from cut_core.config import PerfConfig
    from cut_core.hardware import cached_fast_paths, fast_paths, resolve_translation, settle_perf

    caps = capabilities(device)
    paths = cached_fast_paths(device)
    probed = "from the cache" if paths is not None else "not probed yet"
    if paths is None and probe:
        paths, probed = fast_paths(device, refine=False), "probed now"
    if paths is None:
        return DeviceReport(device, caps.name, caps.isa, caps.bf16, caps.vnni, None, None, None, probed)
    translation = resolve_translation("auto", "auto", device)  # reads the entry just cached
    return DeviceReport(device, caps.name, caps.isa, caps.bf16, caps.vnni, settle_perf(PerfConfig(), paths).summary,
                        translation.summary, paths.reason, probed)


def _ray_disk() -> tuple[str, bool]:
    """Where a local Ray writes its session files (logs, spilled objects) and how full
    that disk is, as the raylet measures it (1 - available/capacity): over its threshold
    (``RAY_local_fs_capacity_threshold``, 95% by default) it refuses to spill there and
    logs an ERROR line every 10 s (jobs.console says it once). The folder follows Ray's
    own rule (ray._common.utils.get_default_ray_temp_dir), read here without importing Ray."""
    system = os.environ.get("RAY_TMPDIR") or (os.environ.get("TMPDIR") if sys.platform.startswith("linux") else None)
    root = Path(system or "/tmp") / "ray"
    free, total = room(root)
    full = 1 - free / total
    limit = float(os.environ.get("RAY_local_fs_capacity_threshold", "0.95"))
    text = f"{root}, on a disk with {human_bytes(free)} free of {human_bytes(total)} ({full:.0%} full)"
    if full > limit:
        text += (f": over Ray's {limit:.0%} limit, so Ray fails any task that must spill objects there; free space "
                 "on it, or set RAY_TMPDIR to a folder on a roomier disk")
    return text, full > limit


def _writable(folder: Path) -> bool:
    """Whether ``folder`` can be written, or created under its nearest existing parent
    (which must be a folder, not a file)."""
    folder = nearest_existing(folder)
    return folder.is_dir() and os.access(folder, os.W_OK)


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def format_env(report: EnvReport) -> str:
    lines = [f"python    {report.python} on {report.platform}",
             "packages  " + ", ".join(f"{k} {v}" for k, v in report.packages.items()),
             f"cores     {report.cpu_count} logical"
             + (f", {report.usable_cores} of them usable here (CPU affinity or a cgroup quota)"
                if report.usable_cores < report.cpu_count else "")
             + f", torch uses {report.torch_threads} thread{'' if report.torch_threads == 1 else 's'} here"
             + (f" (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']})" if thread_cap() else "")
             + (f"; ISA limited by {', '.join(f'{k}={v}' for k, v in report.isa_limits.items())}"
                if report.isa_limits else "")]
    for d in report.devices:
        lines.append(f"{d.device:<9} {d.name} ({d.isa}; native bf16 {_yes(d.native_bf16)}"
                     + (f", VNNI {_yes(d.vnni)}" if d.device == "cpu" else "") + ")")
        if d.training is None:
            lines.append("          auto: not probed yet on this machine (the first training process probes, a few "
                         "seconds; `raycut env` without --no-probe probes now)")
            continue
        # The cache is per thread count (a 2-worker run on 2 cores probes at 1 thread).
        per = f" at {report.torch_threads} threads" if d.device == "cpu" else ""
        lines += [f"          training:    {d.training}", f"          translation: {d.translation}",
                  f"          why ({d.probed}{per}): {d.reason}"]
    cache = (f"probes    {report.probe_cache} (RAYCUT_CACHE moves it)" if report.probe_cache_writable else
             f"probes    {report.probe_cache} cannot be written: every process probes again (seconds each); "
             "set RAYCUT_CACHE to a writable folder")
    lines += [cache, f"malloc    {report.malloc}",
              f"ray       {report.ray}"]
    if report.ray_files:
        lines.append(f"          its files: {report.ray_files}")
    lines.append(f"mlflow    {report.mlflow}")
    return "\n".join(lines)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def run_env(*, as_json: bool = False, probe: bool = True) -> int:
    report = gather(probe=probe)
    print(json.dumps(asdict(report), indent=1) if as_json else format_env(report))
    return 0
