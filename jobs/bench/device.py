"""Timing of cut_core on any machine with torch (CPU or GPU): the training step per
fast path, an in-run baseline with the official implementation's schedule of
work, full-resolution translation, and the correctness checks to run on a new device
first. Also the benchmark record every `raycut bench` writes (machine_info,
format_table, write_record).

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
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Callable, TypeVar

import torch

from cut_core import losses
from cut_core.config import CUTConfig
from cut_core.fast_paths import autocast
from cut_core.hardware import ISA_ENV, FastPaths, cpu_model, fast_paths, interleaved_ms, sync
from cut_core.networks import build_generator, use_reference_layers
from cut_core.timing import Timing, spread, time_calls
from cut_core.training import TrainState, build_train_state, flip_coin, train_step

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


def machine_info(device: str) -> dict[str, object]:
    """The machine a record was measured on, with what ``auto`` resolves to there."""
    paths = fast_paths(device)
    info: dict[str, object] = {
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "isa_env": {k: os.environ[k] for k in ISA_ENV if os.environ.get(k)},
        "fast_paths": paths.to_json(),
        "auto_resolves_to": {"precision": paths.precision, "channels_last": paths.channels_last,
                             "int8_translation": paths.int8, "why": paths.reason},
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def official_schedule_step(state: TrainState, real_A: torch.Tensor, real_B: torch.Tensor) -> None:
    """The reference implementation's work per iteration, in fp32 eager, on raycut's
    networks run with the reference's layers (``state_for``): a baseline for the
    benchmark, not for training.

    Differences from ``train_step`` that cost time: the keys are re-encoded with a
    graph (once per NCE call), each NCE call encodes separately, and F runs on the
    keys with gradients.
    """
    L = state.config.loss
    G, D, Fm = state.G, state.D, state.F
    b = real_A.shape[0]
    real = torch.cat([real_A, real_B]) if L.nce_idt else real_A
    flipped = L.flip_equivariance and flip_coin(state.rng)
    if flipped:
        real = torch.flip(real, [3])
    fake = G(real)
    fake_B, idt_B = fake[:b], fake[b:]
    state.opt_D.zero_grad()
    loss_D = 0.5 * (
        losses.gan_loss(L.gan_mode, D(fake_B.detach()), target_is_real=False).mean()
        + losses.gan_loss(L.gan_mode, D(real_B), target_is_real=True).mean()
    )
    loss_D.backward()
    state.opt_D.step()
    for p in D.parameters():
        p.requires_grad_(False)
    state.opt_G.zero_grad()
    state.opt_F.zero_grad()

    def nce(src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        feat_q = G.encode(tgt, L.nce_layers)
        if flipped:
            feat_q = [torch.flip(f, [3]) for f in feat_q]
        feat_k = G.encode(src, L.nce_layers)
        # One draw per layer, shared by every image of the batch, as the reference.
        shared = [
            torch.randperm(f.shape[2] * f.shape[3], generator=state.rng)[: L.num_patches].to(f.device).expand(f.shape[0], -1)
            for f in feat_k
        ]
        k, q = Fm(feat_k, shared), Fm(feat_q, shared)
        per_layer = [losses.patch_nce(qi, ki, tau=L.nce_T, negatives_from_batch=False).mean() for qi, ki in zip(q, k)]
        return sum(per_layer) * L.lambda_NCE / len(per_layer)

    loss_G = losses.gan_loss(L.gan_mode, D(fake_B), target_is_real=True).mean() * L.lambda_GAN
    loss_nce = nce(real_A, fake_B)
    loss_G = loss_G + (0.5 * (loss_nce + nce(real_B, idt_B)) if L.nce_idt else loss_nce)
    loss_G.backward()
    state.opt_G.step()
    state.opt_F.step()
    for p in D.parameters():
        p.requires_grad_(True)


def step_gflop(kind: str, cfg: CUTConfig, device: str, a: torch.Tensor, b: torch.Tensor) -> float:
    """The arithmetic of one step in GFLOP (torch's FlopCounterMode: convolutions and
    matmuls, forward and backward), on a fresh state of its own. Where the preset flips
    its input on half of the steps (FastCUT), the mean of a flipped and an unflipped
    step: the two do different work. Precision and memory layout change how fast the
    arithmetic runs, not how much of it there is, so one count serves every fast path."""
    from torch.utils.flop_counter import FlopCounterMode

    step = official_schedule_step if kind == "official" else train_step
    coins = coins_per_round(cfg)
    total = 0
    for flipped in coins:
        state = state_for(kind, cfg, device)
        if flipped is not None:
            _next_coin(state.rng, flipped)
        with FlopCounterMode(display=False) as counter:
            step(state, a, b)
        total += counter.get_total_flops()
    return total / len(coins) / 1e9


def coins_per_round(cfg: CUTConfig) -> tuple[bool | None, ...]:
    """The flip coins of one timed round of a row: FastCUT's step does different work
    when its coin says flip (it must encode the unflipped source again), so a round of
    one step would time whichever side the coin fell on, and the rows' coins part ways
    after the first step (their steps draw from their generators differently). A
    round of one step of each side times the mean step, the same in every row."""
    return (False, True) if cfg.loss.flip_equivariance else (None,)  # None: no coin to force


def steps_of_a_round(step: Callable[[TrainState, torch.Tensor, torch.Tensor], object], state: TrainState,
                     a: torch.Tensor, b: torch.Tensor) -> Callable[[], None]:
    """One timed round of a row: a step per coin of ``coins_per_round`` (forced, where the
    preset flips: the step's first draw from ``state.rng`` is its coin), on ``a``, ``b``."""
    coins = coins_per_round(state.config)

    def run() -> None:
        for flipped in coins:
            if flipped is not None:
                _next_coin(state.rng, flipped)
            step(state, a, b)

    return run


def _next_coin(rng: torch.Generator, flipped: bool) -> None:
    """Advance ``rng`` until the step's next ``flip_coin`` says ``flipped``."""
    while True:
        before = rng.get_state()
        if flip_coin(rng) == flipped:
            rng.set_state(before)
            return


def fixed_pair(shape: tuple[int, ...], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Two image batches in [-1, 1] from a fixed seed: every row of a bench steps on
    the same inputs."""
    g = torch.Generator().manual_seed(0)
    a, b = ((torch.rand(shape, generator=g) * 2 - 1).to(device) for _ in range(2))
    return a, b


def state_for(kind: str, cfg: CUTConfig, device: str) -> TrainState:
    """A fresh state for a row. The baseline's layers and optimizers are the
    reference's: G and D run its upsampling and in-place activations (the same
    function; ``use_reference_layers``), and Adam is as torch defaults it (a loop of
    small ops on a CPU), not raycut's fused one."""
    state = build_train_state(cfg, device=device)
    if kind == "official":
        use_reference_layers(state.G)
        use_reference_layers(state.D)
        betas = (cfg.optim.beta1, cfg.optim.beta2)
        for name in ("opt_G", "opt_D", "opt_F"):
            params = [p for group in getattr(state, name).param_groups for p in group["params"]]
            setattr(state, name, torch.optim.Adam(params, lr=cfg.optim.lr, betas=betas))
    return state


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


def sanity_check(device: str, log: Callable[[str], None] = print) -> None:
    """Fail fast on a machine where cut_core computes wrong: every preset trains a
    few tiny steps to finite losses, and bf16 G output stays close to fp32."""
    for preset in ("cut", "fastcut", "sincut"):
        cfg = CUTConfig.tiny(preset)
        for prec in ("fp32", "bf16"):
            state = build_train_state(cfg.with_overrides({"precision": prec}), device=device)
            x = torch.rand(2, 3, 32, 32, device=device) * 2 - 1
            out = [train_step(state, x, x.flip(0)) for _ in range(3)][-1]
            bad = [k for k, v in out.items() if not torch.isfinite(v)]
            if bad:
                raise RuntimeError(f"{preset}/{prec}: non-finite losses {bad} on {device}")
    G = build_generator(CUTConfig.cut().model).to(device).eval()
    x = torch.rand(1, 3, 256, 256, device=device) * 2 - 1
    with torch.no_grad():
        ref = G(x)
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
            low = G(x).float()
    err = (ref - low).abs().max().item()
    log(f"  check: all presets train to finite losses; max |G_bf16 - G_fp32| = {err:.4f} on {device}")
    if err > 0.1:
        raise RuntimeError(f"bf16 output differs from fp32 by {err:.3f} on {device}")


def channels_last_agreement(cfg: CUTConfig, a: torch.Tensor, b: torch.Tensor, device: str = "cpu") -> dict[str, float]:
    """One training step from the same start in NCHW and in channels_last, in fp64 on
    ``device``: the relative difference of each loss (``loss/<name>``) and of G's, D's
    and F's gradient, each taken as one vector (``grad/<net>``). channels_last runs
    its own instance norm and resampling code, so this shows that it computes the same
    function on a device. fp64, because at test sizes the deepest instance norms see
    8x8 pixels and amplify fp32 rounding to ~1% of G's gradient between any two fp32
    implementations."""
    states = [build_train_state(cfg.with_overrides({"channels_last": cl}), device=device) for cl in (False, True)]
    for state in states:
        for module in state.modules().values():
            module.double()
    a, b = a.double().to(device), b.double().to(device)
    ref, cl = (train_step(state, a, b) for state in states)
    out = {f"loss/{k}": abs(cl[k].item() - ref[k].item()) / max(abs(ref[k].item()), 1e-30) for k in ref}
    for name in ("G", "D", "F"):
        grads = [torch.cat([p.grad.flatten() for p in getattr(state, name).parameters()]) for state in states]
        if grads[0].norm() == 0:
            raise RuntimeError(f"{name} got no gradient: the comparison would prove nothing")
        out[f"grad/{name}"] = ((grads[1] - grads[0]).norm() / grads[0].norm()).item()
    return out


def check_channels_last(device: str, log: Callable[[str], None] = print) -> float:
    """``channels_last_agreement`` for CUT and FastCUT at 32 px on ``device``; returns
    the largest relative difference and raises past 1e-9."""
    worst = 0.0
    for preset in ("cut", "fastcut"):
        cfg = CUTConfig.tiny(preset)
        g = torch.Generator().manual_seed(1)
        a, b = (torch.rand(2, 3, 32, 32, generator=g) * 2 - 1 for _ in range(2))
        diffs = channels_last_agreement(cfg, a, b, device)
        worst = max(worst, *diffs.values())
        if max(diffs.values()) > 1e-9:
            raise RuntimeError(f"{preset}: channels_last differs from NCHW on {device}: {diffs}")
    log(f"  check: channels_last steps match NCHW in fp64 (losses and G/D/F gradients) to {worst:.1e} on {device}")
    return worst


def check_resume_under_ddp(device: str, log: Callable[[str], None] = print) -> float:
    """The distributed training path on this device, world size 1: G/D/F in DDP (nccl
    on CUDA, gloo on CPU), a checkpoint after 2 steps, 2 more steps; a fresh state
    restored from the checkpoint must take the same 2 steps. Returns the largest weight
    difference (0 on CPU; on CUDA, non-deterministic kernels may leave rounding)."""
    import tempfile

    import torch.distributed as dist

    from cut_core.distributed import wrap_data_parallel
    from cut_core.train_checkpoint import load_train_state, save_train_state

    dev = torch.device(device)
    cfg = CUTConfig.tiny("fastcut")
    g = torch.Generator().manual_seed(0)
    a, b = ((torch.rand(2, 3, 32, 32, generator=g) * 2 - 1).to(dev) for _ in range(2))
    ids = [dev.index or 0] if dev.type == "cuda" else None
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", init_method=f"file://{tmp}/pg", rank=0, world_size=1)
        try:
            first = build_train_state(cfg, device=dev)
            wrap_data_parallel(first, device_ids=ids)
            for _ in range(2):
                train_step(first, a, b)
            save_train_state(first, f"{tmp}/ckpt")
            for _ in range(2):
                train_step(first, a, b)
            second = build_train_state(cfg, device=dev)
            load_train_state(second, f"{tmp}/ckpt")
            wrap_data_parallel(second, device_ids=ids)
            for _ in range(2):
                train_step(second, a, b)
        finally:
            dist.destroy_process_group()
    diff = max(
        (p - q).abs().max().item()
        for name in ("G", "D", "F")
        for p, q in zip(first.modules()[name].parameters(), second.modules()[name].parameters())
    )
    log(f"  check: DDP training resumed from a checkpoint matches the uninterrupted run to {diff:.2e} on {device}")
    if diff > 1e-3:
        raise RuntimeError(f"resumed DDP training drifts by {diff:.3g} on {device}")
    return diff


def format_table(rows: list[dict[str, object]]) -> str:
    """One line per row name: ms/iter (median +- half the IQR) or images/s, peak memory
    where measured, and the speed-up over the in-run baseline of the same preset (for
    rows timed round by round with it: the median of the per-round speed-ups), and for
    training rows the arithmetic of a step as a fraction of the baseline's ("work") and
    the rate it ran at ("GFLOP/s": a row's time over the baseline's is its work ratio
    over the ratio of these rates, so the column says which of the two a path gains by).
    Rows whose medians lie closer than their spreads are marked: they cannot be ranked."""
    by_name: dict[str, dict[str, object]] = {}
    for r in rows:
        entry = by_name.setdefault(str(r["name"]), {})
        entry[str(r["metric"])] = r["value"]
        for k in ("spread_ms", "skipped", "resolved", "model_busy", "paired_vs_baseline", "arith_vs_baseline",
                  "gflop_per_s"):
            if k in r:
                entry[k] = r[k]
    lines = [f"{'name':44s} {'speed':>22s} {'peak MB':>9s} {'vs baseline':>11s} {'work':>6s} {'GFLOP/s':>8s}"]
    for name, m in by_name.items():
        note = ""
        if m.get("skipped"):
            lines.append(f"{name:44s} {'-':>22s} {'':>9s} {'':>11s} {'':>6s} {'':>8s}  {m['skipped']}")
            continue
        if "ms_per_iter" in m:
            speed = f"{m['ms_per_iter']:.0f} ms/iter" + (f" +-{m['spread_ms']:.0f}" if "spread_ms" in m else "")
            preset = name.split("/")[1].split("-official")[0] if name.startswith("baseline") else name.split("/")[0]
            suffix = name[name.index("@"):] if "@" in name else ""
            base = by_name.get(f"baseline/{preset}-official-schedule{suffix}", {}).get("ms_per_iter")
            if base is None and not name.startswith("baseline"):  # any in-run baseline of the preset
                base = next((v["ms_per_iter"] for k, v in by_name.items() if k.startswith(f"baseline/{preset}-")
                             and k.endswith(suffix) and v.get("ms_per_iter")), None)
            ratio = f"{float(base) / float(m['ms_per_iter']):.2f}x" if base else ""
            if "paired_vs_baseline" in m:  # the median of per-round ratios, when rounds were interleaved
                ratio = f"{float(m['paired_vs_baseline']):.2f}x"
            close = [k.split("/", 1)[1] for k, v in by_name.items() if k != name and k.startswith(name.split("/")[0] + "/")
                     and k.endswith(suffix) and v.get("ms_per_iter") and "spread_ms" in v and "spread_ms" in m
                     and abs(float(v["ms_per_iter"]) - float(m["ms_per_iter"])) < float(v["spread_ms"]) + float(m["spread_ms"])]
            if close:
                note = "  within the noise of " + ", ".join(close)
            if m.get("resolved"):
                note = f"  [{m['resolved']}]" + note
        elif "ms_per_image" in m:  # an encoding cost
            speed, ratio = f"{m['ms_per_image']:.0f} ms/img", ""
            note = f"  {m['file_mb']:.2f} MB" if "file_mb" in m else ""
        else:
            speed = f"{m.get('images_per_s', 0):.3g} img/s"
            if "model_busy" in m:
                note = f"  model busy {float(m['model_busy']):.0%}"
            suffix = name[name.index("@"):] if "@" in name else ""
            base = next((v["images_per_s"] for k, v in by_name.items() if k.startswith("baseline/")
                         and k.endswith(suffix) and "images_per_s" in v), None)
            ratio = f"{float(m['images_per_s']) / float(base):.2f}x" if base and not name.startswith("baseline") else ""
            if "images_per_s" not in m:
                continue
        peak = m.get("peak_mem_mb")
        work = f"{float(m['arith_vs_baseline']):.3f}" if "arith_vs_baseline" in m else ""
        rate = f"{float(m['gflop_per_s']):.0f}" if "gflop_per_s" in m else ""
        lines.append(f"{name:44s} {speed:>22s} {'' if peak is None else f'{peak:9.0f}':>9s} {ratio:>11s} {work:>6s} {rate:>8s}{note}")
    return "\n".join(lines)


def write_record(path: str | Path, bench: str, rows: list[dict[str, object]], device: str) -> Path:
    record = {"bench": bench, "machine": machine_info(device), "results": rows}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    return out


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
