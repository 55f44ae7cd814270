"""DDP wiring of cut_core (no Ray): two gloo processes with one image each must
produce the gradients of one process with both images, and stay equal; for CUT and
for CycleGAN's four networks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from cut_core.config import PerfConfig
from cut_core.distributed import agree_fast_paths, replica_divergence, wrap_data_parallel
from cut_core.training import build_train_state, train_step
from tests.conftest import tiny

# Every patch location is sampled (num_patches > H*W of every layer) and the NCE
# negatives are per image, so the loss does not depend on which rank drew which
# patches: the 2-rank average must equal the 2-image batch exactly up to rounding.
# CycleGAN's losses are means over the batch, and its image pools hand back the new
# fakes while they fill, so the same holds for it without a setting.
EXACT = {"cut": {"num_patches": 4096, "batch_size": 1, "precision": "fp32"},
         "cyclegan": {"batch_size": 1, "precision": "fp32"}}


def _batches() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.rand(2, 3, 32, 32, generator=g) * 2 - 1


def _grads(state) -> dict[str, torch.Tensor]:
    """The gradients of the trained networks (not the EMA of G, a shadow with none)."""
    return {f"{n}.{k}": p.grad.detach().clone() for n, m in state.modules().items()
            for k, p in m.named_parameters() if p.requires_grad}


def _worker(rank: int, world: int, tmp: str, preset: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=rank, world_size=world)
    try:
        state = build_train_state(tiny(preset, **EXACT[preset]), rank=rank)
        wrap_data_parallel(state)
        a, b = _batches()
        train_step(state, a[rank : rank + 1], b[rank : rank + 1])
        grads = _grads(state)
        grads["divergence"] = torch.tensor(replica_divergence(state))
        save_file(grads, f"{tmp}/rank{rank}.safetensors")
        # Neither rank tears gloo down while the other may still talk to it: without
        # this barrier about one run in ten aborted ("terminate called without an
        # active exception") on a loaded 2-core machine. Only on success: a rank that
        # raised must not wait here for a peer that may never arrive.
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["cut", "cyclegan"])
def test_two_ranks_equal_one_batch_of_two(tmp_path: Path, preset: str) -> None:
    mp.spawn(_worker, args=(2, str(tmp_path), preset), nprocs=2, join=True)
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in range(2)]
    assert float(ranks[0].pop("divergence")) == 0.0
    assert float(ranks[1].pop("divergence")) == 0.0

    single = build_train_state(tiny(preset, **{**EXACT[preset], "batch_size": 2}))
    a, b = _batches()
    train_step(single, a, b)
    expected = _grads(single)
    assert set(expected) == set(ranks[0])
    # Rounding differs (a sum of two halves vs one batch), and biases in front of an
    # instance norm have a true gradient of 0 that shows up as rounding noise; so the
    # tolerance is relative to the largest gradient of the same network.
    nets = {name.split(".")[0] for name in expected}  # G, D, F; CycleGAN: G, G_B, D, D_A
    assert nets == ({"G", "G_B", "D", "D_A"} if preset == "cyclegan" else {"G", "D", "F"})
    scale = {net: max(float(g.abs().max()) for n, g in expected.items() if n.split(".")[0] == net) for net in nets}
    for name, g in expected.items():
        # DDP leaves the same averaged gradient on every rank.
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        err = float((ranks[0][name] - g).abs().max())
        net = name.split(".")[0]
        assert err <= 1e-5 * scale[net], f"{name}: {err} vs scale {scale[net]}"


def test_resume_under_ddp_is_exact_on_cpu() -> None:
    """The check `python -m jobs.bench.device --check` runs on a GPU machine, here on
    the CPU, where it must be bit-exact."""
    from jobs.bench.device_checks import check_resume_under_ddp

    assert check_resume_under_ddp("cpu", log=lambda s: None) == 0.0


# ---- fast paths settled together ----------------------------------------------------

# What each rank's probe reported, by hand (as two probes of one machine can, on either
# side of a close call): fp32 over bf16 on rank 1, channels_last winning on rank 0 only.
PROBED = {
    0: {"precision": "bf16", "ms": {"fp32": 1.0, "bf16": 0.5, "G-fp32": 2.0, "G-fp32-channels_last": 1.5,
                                    "G-bf16": 1.0, "G-bf16-channels_last": 0.8}},
    1: {"precision": "fp32", "ms": {"fp32": 1.0, "bf16": 30.0, "G-fp32": 1.5, "G-fp32-channels_last": 2.0}},
}


def _settled(rank: int, requested: PerfConfig, precision: str | None = None):
    """Rank ``rank``'s own settlement of ``requested`` from its hand-made probe."""
    from cut_core.capabilities import capabilities
    from cut_core.hardware import FastPaths, settle_perf

    ms = PROBED[rank]["ms"]
    precision = precision or PROBED[rank]["precision"]
    paths = FastPaths(device="cpu", precision=precision, int8=False, capabilities=capabilities("cpu"), probe_ms=ms,
                      channels_last=ms[f"G-{precision}-channels_last"] < ms[f"G-{precision}"])
    return settle_perf(requested, paths)


def _agree_worker(rank: int, world: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=rank, world_size=world)
    try:
        seen = {}
        for case, requested, precision in (
            ("layout", PerfConfig(precision="auto"), "fp32"),  # both fp32; channels_last on rank 0 only
            ("precision", PerfConfig(precision="auto"), None),  # bf16 on rank 0 only
            ("explicit", PerfConfig(precision="fp32", channels_last=True), None),
        ):
            own = _settled(rank, requested, precision)
            got = agree_fast_paths(own)
            seen[case] = {"own": [own.perf.precision, own.perf.channels_last],
                          "got": [got.perf.precision, got.perf.channels_last], "warnings": list(got.warnings)}
        # The case that failed in a real run: DDP takes the agreed layout on both ranks.
        agreed = agree_fast_paths(_settled(rank, PerfConfig(), "fp32"))
        state = build_train_state(tiny("cut", precision="fp32"), rank=rank, fast=agreed)
        wrap_data_parallel(state)
        a, b = _batches()
        train_step(state, a[rank : rank + 1], b[rank : rank + 1])
        seen["divergence"] = replica_divergence(state)
        seen["G_layout"] = next(state.G.parameters()).is_contiguous(memory_format=torch.channels_last) and \
            not next(state.G.parameters()).is_contiguous()
        Path(f"{tmp}/agree{rank}.json").write_text(json.dumps(seen))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ranks_settle_fast_paths_together(tmp_path: Path) -> None:
    """Each rank probes its own device; DDP needs one layout on all, and a rank that
    emulates bf16 would set the group's pace. So: bf16 only if every rank settled on
    it, then channels_last only if every rank picks it; a warning says when they
    differed; explicit settings pass through; and DDP then trains."""
    mp.spawn(_agree_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"agree{r}.json").read_text()) for r in range(2)]
    assert [r["layout"]["own"] for r in ranks] == [["fp32", True], ["fp32", False]]
    assert [r["precision"]["own"] for r in ranks] == [["bf16", True], ["fp32", False]]
    for r in ranks:
        assert r["layout"]["got"] == ["fp32", False] and r["precision"]["got"] == ["fp32", False]
        for case in ("layout", "precision"):
            assert len(r[case]["warnings"]) == 1 and "ranks measured different fast paths" in r[case]["warnings"][0]
        assert "bf16 on 1," in r["precision"]["warnings"][0]
        assert r["explicit"] == {"own": ["fp32", True], "got": ["fp32", True], "warnings": []}
        assert r["divergence"] == 0.0 and r["G_layout"] is False


# ---- ADA's probability and the LR's plateau cut, one for the whole group ------------


def _shared_worker(rank: int, world: int, tmp: str) -> None:
    from cut_core.d_balance import AdaptiveP
    from cut_core.lr_plateau import RatePlateau

    dist.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=rank, world_size=world)
    try:
        ada = AdaptiveP(0.6, interval=4, speed_images=1000)
        # Rank 0's D calls every real patch real, rank 1's only 40% of them: alone, rank
        # 0 would raise p and rank 1 keep it at 0; pooled, the mean 0.7 is above 0.6.
        for _ in range(8):
            ada.observe(torch.tensor(1.0 if rank == 0 else 0.4), batch=2)
        plateau = RatePlateau(patience=1, factor=0.5, min_scale=0.25)
        # Only rank 0 evaluates; the other rank passes None at the same steps.
        cuts = [plateau.observe(v if rank == 0 else None, decaying=False) for v in (0.5, 0.7, 0.4)]
        state = {k: float(v) for k, v in plateau.state_dict().items()}
        Path(f"{tmp}/shared{rank}.json").write_text(json.dumps({"p": ada.value, "cut_at": cuts, "plateau": state}))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_ranks_share_adas_probability_and_rank_0s_cut_of_the_rate(tmp_path: Path) -> None:
    """ADA pools r_t over the ranks and counts every rank's images, so p is one value
    for the group: two adjustments of 2 ranks x batch 2 x 4 steps / 1000 images. Rank
    0's evaluations decide the LR's cut (0.7 after 0.5, patience 1); every rank gets the
    same scale, best and count, and hears of the cut at the same step. (One spawn for
    both: each costs two torch imports.)"""
    mp.spawn(_shared_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    got = [json.loads((tmp_path / f"shared{r}.json").read_text()) for r in range(2)]
    assert got[0]["p"] == got[1]["p"] == pytest.approx(2 * 2 * 2 * 4 / 1000)
    assert got[0]["cut_at"] == got[1]["cut_at"] == [False, True, False]
    assert got[0]["plateau"] == got[1]["plateau"] == {"scale": 0.5, "best": 0.4, "bad": 0.0, "cuts": 1.0}
