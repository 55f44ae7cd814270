"""Checks to run on a new device before timing it (``python -m jobs.bench.device
--check``): every preset trains to finite losses, bf16 stays near fp32, channels_last
computes the same step as NCHW, and DDP training resumes exactly from a checkpoint."""

from __future__ import annotations

from typing import Callable

import torch

from cut_core.config import CUTConfig
from cut_core.networks import build_generator
from cut_core.training import build_train_state, train_step


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
