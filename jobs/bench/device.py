"""Timing of cut_core on any machine with torch (CPU or GPU): the training step per
fast path beside an in-run baseline with the reference implementation's schedule of
work (jobs.bench.reference_schedule), and full-resolution translation. ``--check``
first runs the correctness checks of jobs.bench.device_checks; the record and its
table come from jobs.bench.records.

Imports neither Ray nor MLflow, so the same numbers come from a bare GPU box that
has only torch and a copy of this repository:

    python -m jobs.bench.device --device cuda --crops 256 512 --translate 2048x1024 --out gpu.json

``raycut bench train`` calls the same functions. Output rows follow the project's
benchmark record: ``{"name", "metric", "value", "unit"}``.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from typing import Callable, TypeVar

import torch

from cut_core.config import CUTConfig
from cut_core.fast_paths import autocast
from cut_core.hardware import FastPaths, fast_paths
from cut_core.timing import interleaved_ms, sync
from cut_core.networks import build_generator
from cut_core.timing import Timing, spread, time_calls
from cut_core.training import train_step
from jobs.bench.device_checks import check_channels_last, check_resume_under_ddp, sanity_check
from jobs.bench.records import format_table, machine_info, write_record
from jobs.bench.reference_schedule import (
    coins_per_round,
    fixed_pair,
    official_schedule_step,
    state_for,
    step_gflop,
    steps_of_a_round,
)

T = TypeVar("T")

# variant name -> PerfConfig overrides
TRAIN_VARIANTS: dict[str, dict[str, object]] = {
    "auto": {"precision": "auto", "channels_last": "auto"},  # what cut_core.hardware picks on this device
    "fp32-eager": {},
    "channels_last": {"channels_last": True},
    "bf16": {"precision": "bf16"},
    "bf16-channels_last": {"precision": "bf16", "channels_last": True},
    "bf16-compile": {"precision": "bf16", "compile": True},
    "fp32-compile": {"compile": True},
    # The negative sources a Tune search chooses between (cut_core.config.NEGATIVE_SOURCES),
    # in bf16; "image" is plain "bf16".
    "bf16-minibatch-negatives": {"precision": "bf16", "nce_includes_all_negatives_from_minibatch": True},
    "bf16-bank-negatives": {"precision": "bf16", "nce_bank_size": 16384},
    # fp32-eager in a process of its own with glibc's malloc as it comes (HostedStep):
    # the gain of cut_core.allocator, measured round by round beside the others.
    "fp32-eager-glibc-malloc": {},
}
DEFAULT_VARIANTS = ("auto", "fp32-eager", "channels_last", "bf16", "bf16-channels_last")
# Rows whose step runs in a child process with malloc left as glibc has it: the
# reference implementation's schedule (it runs so: it does not tune malloc), and the
# variant that shows what raycut's malloc settings gain.
GLIBC_MALLOC_VARIANTS = ("fp32-eager-glibc-malloc",)
GLIBC_AS_IT_COMES = "glibc as it comes (a process of its own)"  # such a row's ``malloc`` in the record


def time_train_variant(preset: str, kind: str, overrides: dict[str, object], device: str, warmup: int, iters: int) -> Timing:
    """Build a fresh state and time its step (runs inside a fresh process)."""
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    cfg = CUTConfig.from_preset(preset).with_overrides(overrides)
    state = state_for(kind, cfg, device)
    a, b = fixed_pair((cfg.optim.batch_size, 3, cfg.data.crop_size, cfg.data.crop_size), device)
    step = official_schedule_step if kind == "official" else train_step
    # torch.compile traces on the first calls: give it an extra warm-up.
    return time_calls(lambda: step(state, a, b), device=device, warmup=warmup + (2 if cfg.perf.compile else 0), iters=iters)


def in_fresh_process(fn: Callable[..., T], *args: object) -> T:
    """Run ``fn(*args)`` in a new interpreter: clean memory high-water mark, no
    allocator or autotuning state carried from the variant measured before."""
    from jobs.bench.processes import spawn_pool

    with spawn_pool(1) as pool:
        return pool.submit(fn, *args).result()


class HostedStep:
    """A bench row's training step in a child interpreter of its own whose malloc is
    left as glibc has it (``RAYCUT_MALLOC=default``): the bench process tunes its own
    malloc (cut_core.allocator) when it builds its first state, and that setting is
    process-wide, so a row that must run without it needs another process. Calling the
    object runs one step there and returns when it is done, so the row is timed round
    by round with the others, from this process."""

    def __init__(self, kind: str, cfg: CUTConfig, device: str) -> None:
        from jobs.bench.processes import spawn_pool

        self._pool = spawn_pool(1)  # one worker: it keeps the state between calls
        self._pool.submit(_hosted_build, kind, cfg.to_dict(), device).result()

    def __call__(self) -> None:
        self._pool.submit(_hosted_step).result()

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


_HOSTED: list[Callable[[], None]] = []  # in a HostedStep's worker: its one step


def _hosted_build(kind: str, cfg: dict[str, object], device: str) -> None:
    from cut_core.allocator import leave_as_it_comes

    leave_as_it_comes()  # before the first state
    config = CUTConfig.from_dict(cfg)
    state = state_for(kind, config, device)
    a, b = fixed_pair((config.optim.batch_size, 3, config.data.crop_size, config.data.crop_size), device)
    step = official_schedule_step if kind == "official" else train_step
    _HOSTED[:] = [steps_of_a_round(step, state, a, b), functools.partial(sync, device)]


def _hosted_step() -> None:
    for call in _HOSTED:  # the step, then waiting for the device's queued work
        call()


def skipped_as_emulated(overrides: dict[str, object], paths: FastPaths) -> str | None:
    """Why a variant is not worth timing on this device (bf16 that the probe found
    emulated: it would take tens of times longer), or None."""
    if overrides.get("precision") == "bf16" and ("bf16" in paths.gave_up or not paths.capabilities.bf16):
        return f"skipped: bf16 is emulated here, {paths.slowdown('bf16'):.1f}x fp32's time in the probe"
    return None


def bench_train(
    presets: tuple[str, ...] = ("cut", "fastcut"),
    variants: tuple[str, ...] = DEFAULT_VARIANTS,
    *,
    crop: int = 256,
    batch_size: int = 1,
    device: str = "cpu",
    warmup: int = 1,
    iters: int = 5,
    baseline: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict[str, object]]:
    """Rows ``<preset>/<variant>`` (and ``baseline/<preset>-official-schedule``) in
    ms_per_iter, all at one crop size. The variants of a preset are timed **round by
    round in one process** (one step of each, in an order shuffled each round, ``iters`` rounds
    after ``warmup``; for FastCUT, whose flip coin changes a step's work, an unflipped and a
    flipped step of each, reported per step), so a machine that slows down for a minute slows every row alike;
    each row gets its median and spread. ``auto`` is what cut_core.hardware resolves to
    here, timed as a row of its own; a bf16 variant that the probe finds emulated is
    listed as skipped with the probe's figure instead of being timed for an hour."""
    rows: list[dict[str, object]] = []
    suffix = "" if crop == 256 else f"@{crop}"
    paths = fast_paths(device)
    log(f"  fast paths here: {paths.precision}, channels_last {'on' if paths.channels_last else 'off'} ({paths.reason})")
    if baseline:
        log("  the baseline steps in a process of its own with glibc's malloc as it comes (the reference code does not"
            " tune it); raycut's rows in this one (cut_core.allocator)")
    for preset in presets:
        base = CUTConfig.from_preset(preset)
        # Single-image presets keep their load_size (the largest random width).
        load = base.data.load_size if base.data.single_image else max(crop, 286)
        shape = {"crop_size": crop, "load_size": load, "batch_size": batch_size}
        plain = {"precision": "fp32", "channels_last": False}
        runs: list[tuple[str, str, dict[str, object]]] = []
        if baseline:
            runs.append((f"baseline/{preset}-official-schedule{suffix}", "official", plain))
        for v in variants:
            runs.append((f"{preset}/{v}{suffix}", "raycut", {**plain, **TRAIN_VARIANTS[v]}))
        timed: list[tuple[str, Callable[[], object], dict[str, object]]] = []
        hosts: list[HostedStep] = []
        for name, kind, perf in runs:
            why = skipped_as_emulated(perf, paths)
            if why:
                rows.append({"name": name, "metric": "ms_per_iter", "value": None, "unit": "ms", "skipped": why})
                log(f"  {name}: {why}")
                continue
            cfg = base.with_overrides({**shape, **perf})
            if kind == "official" or name.split("/")[-1].split("@")[0] in GLIBC_MALLOC_VARIANTS:
                hosts.append(HostedStep(kind, cfg, device))
                timed.append((name, hosts[-1], {"malloc": GLIBC_AS_IT_COMES}))
                continue
            state = state_for(kind, cfg, device)
            a, b = fixed_pair((batch_size, 3, crop, crop), device)
            step = official_schedule_step if kind == "official" else train_step
            extra = {"resolved": state.fast.summary} if v_is_auto(perf) else {}
            timed.append((name, steps_of_a_round(step, state, a, b), {**extra, "malloc": state.fast.malloc}))
        per_round = len(coins_per_round(base))

        def show(r: int, ms: dict[str, float]) -> None:
            log(f"  round {r + 1}/{iters}, ms a step: "
                + ", ".join(f"{n.split('/')[-1]} {v / per_round:.0f}" for n, v in ms.items()))

        try:
            by_name, _ = interleaved_ms({name: fn for name, fn, _ in timed}, device, rounds=iters, warmup=max(1, warmup),
                                        on_round=show)
        finally:
            for host in hosts:
                host.close()
        times = [[t / per_round for t in by_name[name]] for name, _, _ in timed]  # per step
        arith = _arithmetic(preset, base.with_overrides({**shape, **plain}), device, baseline, log)
        base_ts = next((ts for (name, _, _), ts in zip(timed, times) if name.startswith("baseline/")), None)
        for (name, _, extra), ts in zip(timed, times):
            med = statistics.median(ts)
            if base_ts is not None and not name.startswith("baseline/"):
                # Round by round: the baseline ran next to this row, so a slow minute of a
                # shared machine slows both; the median of these ratios ranks more surely
                # than a ratio of two medians.
                extra = {**extra, "paired_vs_baseline": round(statistics.median(b / t for b, t in zip(base_ts, ts)), 3)}
            kind = "official" if name.startswith("baseline/") else "raycut"
            rows.append({"name": name, "metric": "ms_per_iter", "value": round(med, 1), "unit": "ms",
                         "spread_ms": round(spread(ts), 1), "times_ms": [round(x, 1) for x in ts],
                         "steps_per_round": per_round,
                         **_arith_fields(arith, kind, med), **extra})
            log(f"    {name:44s} {med:9.1f} ms/iter  +- {spread(ts):7.1f}" + (f"  ({extra['resolved']})" if extra.get("resolved") else ""))
    return rows


def _arithmetic(preset: str, cfg: CUTConfig, device: str, baseline: bool, log: Callable[[str], None]) -> dict[str, float]:
    """GFLOP per step of raycut's step and (with ``baseline``) of the reference schedule.
    Their ratio is the floor of fp32's time ratio at an equal FLOP rate: a path that
    computes the reference's losses can beat it only by doing less arithmetic or doing
    it faster."""
    a, b = fixed_pair((cfg.optim.batch_size, 3, cfg.data.crop_size, cfg.data.crop_size), device)
    kinds = ("raycut", "official") if baseline else ("raycut",)
    out = {kind: step_gflop(kind, cfg, device, a, b) for kind in kinds}
    if baseline:
        log(f"  arithmetic per {preset} step: {out['raycut']:.1f} GFLOP, the reference schedule's {out['official']:.1f}"
            f" ({out['raycut'] / out['official']:.3f}x)")
    return out


def _arith_fields(arith: dict[str, float], kind: str, ms: float) -> dict[str, float]:
    """A row's arithmetic per step, the rate it ran at (median time), and its share of
    the baseline's arithmetic."""
    fields = {"gflop_per_iter": round(arith[kind], 2), "gflop_per_s": round(arith[kind] / ms * 1000.0, 1)}
    if "official" in arith:
        fields["arith_vs_baseline"] = round(arith[kind] / arith["official"], 3)
    return fields


def v_is_auto(perf: dict[str, object]) -> bool:
    return perf.get("precision") == "auto" or perf.get("channels_last") == "auto"


def bench_translate(
    size: tuple[int, int] = (1024, 2048),
    variants: tuple[str, ...] = ("fp32", "bf16", "bf16-channels_last"),
    *,
    device: str = "cpu",
    warmup: int = 1,
    iters: int = 3,
    preset: str = "cut",
    log: Callable[[str], None] = print,
) -> list[dict[str, object]]:
    """Full-resolution translation with the preset's G (CUT: ngf 64 ResNet): rows
    ``translate/<variant>@HxW`` (``translate-<preset>/...`` for other presets) in
    images_per_s, batch 1, no grad. A variant is a precision, optionally with
    ``-channels_last`` (weights and input in channels_last memory), and optionally
    ``-glibc-malloc``: timed in a process of its own with malloc as glibc has it, where
    the others run in this process with raycut's (cut_core.allocator), as translation
    does."""
    from cut_core.allocator import keep_freed_memory

    h, w = size
    malloc = keep_freed_memory() if torch.device(device).type == "cpu" else ""
    rows: list[dict[str, object]] = []
    for variant in variants:
        name = f"translate{'' if preset == 'cut' else '-' + preset}/{variant}@{h}x{w}"
        log(f"  timing {name} ...")
        plain, glibc, _ = variant.partition("-glibc-malloc")
        if glibc:
            t = in_fresh_process(_time_translation_as_glibc_has_it, preset, size, plain, device, warmup, iters)
        else:
            t = _time_translation(preset, size, plain, device, warmup, iters)
        rows.append({"name": name, "metric": "images_per_s", "value": round(1000 / t.median_ms, 3), "unit": "images/s",
                     "malloc": GLIBC_AS_IT_COMES if glibc else malloc})
        rows.append({"name": name, "metric": "peak_mem_mb", "value": round(t.peak_mem_mb, 1), "unit": "MB"})
        log(f"    {t.median_ms:9.1f} ms/image   peak {t.peak_mem_mb:8.1f} MB")
    return rows


def _time_translation(preset: str, size: tuple[int, int], variant: str, device: str, warmup: int, iters: int) -> Timing:
    """One full-resolution translation variant (precision[-channels_last]) of the
    preset's G, built from seed 0."""
    h, w = size
    cfg = CUTConfig.from_preset(preset)
    torch.manual_seed(0)
    G = build_generator(cfg.model).to(device).eval()
    prec, _, layout = variant.partition("-")
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    perf = cfg.with_overrides({"precision": prec, "channels_last": layout == "channels_last"}).perf
    G.to(memory_format=memory_format)
    x = (torch.rand(1, 3, h, w) * 2 - 1).to(device).contiguous(memory_format=memory_format)

    def run() -> None:
        with torch.no_grad(), autocast(perf, device):
            G(x)

    return time_calls(run, device=device, warmup=warmup, iters=iters)


def _time_translation_as_glibc_has_it(*args: object) -> Timing:
    """``_time_translation`` in a fresh process that leaves malloc alone."""
    from cut_core.allocator import leave_as_it_comes

    leave_as_it_comes()
    return _time_translation(*args)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.bench.device", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--presets", nargs="+", default=["cut", "fastcut"])
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=list(TRAIN_VARIANTS))
    p.add_argument("--crops", nargs="*", type=int, default=[256], help="training crops to time (none: translation only)")
    p.add_argument("--batch-size", type=int, default=1, help="images per step (the negative sources differ from 2 up)")
    p.add_argument("--iters", type=int, default=5, help="timed rounds (each times every variant once)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--translate", default="", help="also time translation at HxW, e.g. 1024x2048")
    p.add_argument("--translate-preset", default="cut", help="whose G --translate times (sincut: the StyleGAN2 G)")
    p.add_argument("--translate-variants", nargs="+", default=["fp32", "bf16", "bf16-channels_last"],
                   help="precision[-channels_last][-glibc-malloc] (the last: malloc as glibc has it, in a process of its own)")
    p.add_argument("--check", action="store_true", help="run a correctness check first")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    log(f"machine: {json.dumps(machine_info(args.device))}")
    if args.check:
        sanity_check(args.device, log)
        check_channels_last(args.device, log)
        check_resume_under_ddp(args.device, log)
    rows: list[dict[str, object]] = []
    for crop in args.crops:
        rows += bench_train(tuple(args.presets), tuple(args.variants), crop=crop, batch_size=args.batch_size,
                            device=args.device,
                            warmup=args.warmup, iters=args.iters, baseline=not args.no_baseline,
                            log=log)
    if args.translate:
        h, w = (int(v) for v in args.translate.lower().split("x"))
        rows += bench_translate((h, w), tuple(args.translate_variants), device=args.device, preset=args.translate_preset,
                                log=log)
    write_record(args.out, "train", rows, args.device)
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
