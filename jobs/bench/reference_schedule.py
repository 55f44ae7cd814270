"""The reference implementation's schedule of work per training step, on raycut's
networks, and how a benchmark steps a state: the in-run baseline of ``raycut bench
train``, its arithmetic, and the rounds that time both sides of FastCUT's flip coin.
For the benchmark, not for training."""

from __future__ import annotations

from typing import Callable

import torch

from cut_core import losses
from cut_core.config import CUTConfig
from cut_core.networks import use_reference_layers
from cut_core.training import TrainState, build_train_state, flip_coin, train_step


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
