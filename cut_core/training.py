"""The CUT training step as explicit phases over a small state object.

One iteration (Park et al. 2020, Sec. 3; the official ``optimize_parameters``):

1. ``generator_pass``: G translates real_A (and real_B for the identity branch) in
   one batch; the same pass yields the PatchNCE keys, so the source images are not
   encoded a second time (the keys are detached in the loss anyway).
2. ``d_step``: D learns real_B against the detached fake_B (+ R1 for SinCUT), both
   seen through the same random augmentation when ``d_augment`` is on.
3. ``g_step``: G and F learn: GAN loss through the updated D (on augmented fakes
   likewise), plus PatchNCE between the encodings of fake_B (queries) and real_A
   (keys), at the same patch ids.
4. the moving average of G takes the new weights (``ema_decay`` > 0).

Every phase returns a dict of detached scalar tensors. Randomness (patch ids, the
flip of FastCUT) comes from ``state.rng``, a ``torch.Generator`` the caller seeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from cut_core import losses
from cut_core.config import CUTConfig, FlipCentre, OptimConfig, PerfConfig, parse_policy
from cut_core.d_balance import AdaptiveP, augment, overfit_sign
from cut_core.ema import GeneratorEMA
from cut_core.fast_paths import autocast, maybe_compile, prepare_module, to_memory_format
from cut_core.grad_guard import GradSpikeGuard, grad_norm, gradients
from cut_core.hardware import ResolvedPerf, resolve_perf
from cut_core.lr_plateau import RatePlateau
from cut_core.lr_schedule import constant_steps, lr_factor, schedule_epoch
from cut_core.memory_bank import MomentumKeyEncoder, PatchMemoryBank
from cut_core.networks import (
    Discriminator,
    Generator,
    PatchSampleMLP,
    build_discriminator,
    build_generator,
    build_patch_mlp,
)
from cut_core.padding import reflect_pad


@dataclass
class TrainState:
    """Networks, optimizers and counters of one training run (one worker).

    ``config`` is the run's configuration as asked for (it may say ``auto``);
    ``fast`` is its fast paths settled for this device, which the phases run with."""

    config: CUTConfig
    fast: ResolvedPerf
    G: Generator
    D: Discriminator
    F: PatchSampleMLP
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    opt_F: torch.optim.Optimizer
    rng: torch.Generator  # CPU generator: patch ids and flips
    device: torch.device
    step: int = 0
    epoch: int = 0  # of the LR schedule (schedule_epoch), not passes over the data
    # The callables the phases run: the modules' methods, or their torch.compile'd
    # versions. Kept apart from the modules so state dicts keep their plain keys.
    run: dict[str, Callable] = field(default_factory=dict)
    # External negatives (loss.nce_bank_size > 0): momentum copies of G and F, and the bank.
    key_encoder: MomentumKeyEncoder | None = None
    bank: PatchMemoryBank | None = None
    G_ema: GeneratorEMA | None = None  # optim.ema_decay > 0
    d_aug_p: AdaptiveP | None = None  # loss.d_augment_target > 0: ADA's probability
    lr_plateau: RatePlateau | None = None  # optim.lr_plateau_patience > 0: the LR's scale
    d_ops: tuple[str, ...] = ()  # loss.d_augment, parsed
    # optim.grad_clip_median > 0: one guard per net, {"G": ..., "F": ...}
    grad_guards: dict[str, GradSpikeGuard] = field(default_factory=dict)

    def modules(self) -> dict[str, nn.Module]:
        """Everything a checkpoint holds: G, D, F (+ the key encoder and bank, the EMA
        of G, ADA's probability and the LR's plateau scale, when used)."""
        out: dict[str, nn.Module] = {"G": self.G, "D": self.D, "F": self.F}
        if self.key_encoder is not None and self.bank is not None:
            out.update(K=self.key_encoder, bank=self.bank)
        if self.G_ema is not None:
            out["G_ema"] = self.G_ema
        if self.d_aug_p is not None:
            out["ADA"] = self.d_aug_p
        if self.lr_plateau is not None:
            out["lr_plateau"] = self.lr_plateau
        out.update({f"guard_{name}": guard for name, guard in self.grad_guards.items()})
        return out

    @property
    def inference_G(self) -> nn.Module:
        """The generator to evaluate, show and register: the EMA of G when kept, else G."""
        return self.G_ema.average if self.G_ema is not None else self.G

    @property
    def d_augment_p(self) -> float:
        """This step's probability of each D augmentation op (0 when off)."""
        if not self.d_ops:
            return 0.0
        return self.d_aug_p.value if self.d_aug_p is not None else self.config.loss.d_augment_p

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"G": self.opt_G, "D": self.opt_D, "F": self.opt_F}

    @property
    def perf(self) -> PerfConfig:
        """The concrete fast paths of this device (no ``auto`` left)."""
        return self.fast.perf


def adam(params: Iterable[torch.nn.Parameter], o: OptimConfig, device: torch.device | str) -> torch.optim.Adam:
    """The official Adam (betas from ``o``), as one fused kernel where torch has one for
    the device: the same update, in one pass over the weights instead of a loop of
    small ops (CUT's G, 11.4M weights, on 2 AVX2 cores: 12 ms a step against 80 ms)."""
    fused = torch.device(device).type in ("cpu", "cuda")
    return torch.optim.Adam(params, lr=o.lr, betas=(o.beta1, o.beta2), fused=fused or None)


def build_train_state(cfg: CUTConfig, *, device: torch.device | str = "cpu", rank: int = 0,
                      fast: ResolvedPerf | None = None) -> TrainState:
    """Fresh G, D, F and Adam optimizers. Weights depend on ``cfg.seed`` only (so all
    data-parallel ranks start equal); the patch/flip RNG is seeded with seed + rank.
    ``auto`` fast paths are settled here for ``device`` (cut_core.hardware), unless
    ``fast`` brings them settled already (data-parallel ranks settle them together:
    cut_core.distributed.agree_fast_paths)."""
    if cfg.is_cyclegan:
        from cut_core.cyclegan import build_cyclegan_state  # it builds on TrainState

        return build_cyclegan_state(cfg, device=device, rank=rank, fast=fast)
    device = torch.device(device)
    fast = fast or resolve_perf(cfg.perf, device)
    perf = fast.perf
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        G = build_generator(cfg.model)
        D = build_discriminator(cfg)
        Fm = build_patch_mlp(cfg.model, G, cfg.loss.nce_layers)
    for m in (G, D, Fm):
        prepare_module(perf, m.to(device))
    o = cfg.optim
    state = TrainState(
        config=cfg,
        fast=fast,
        G=G,
        D=D,
        F=Fm,
        opt_G=adam(G.parameters(), o, device),
        opt_D=adam(D.parameters(), o, device),
        opt_F=adam(Fm.parameters(), o, device),
        rng=torch.Generator().manual_seed(cfg.seed + rank),
        device=device,
    )
    if cfg.loss.nce_bank_size:
        state.key_encoder = MomentumKeyEncoder(G, Fm, cfg.loss.nce_bank_momentum).to(device)
        state.bank = PatchMemoryBank(len(cfg.loss.nce_layers), cfg.model.netF_nc, cfg.loss.nce_bank_size,
                                     seed=cfg.seed).to(device)
    if o.ema_decay:
        state.G_ema = GeneratorEMA(G, o.ema_decay)
    if o.grad_clip_median:
        state.grad_guards = {name: GradSpikeGuard(o.grad_clip_median, target=o.grad_clip_target).to(device)
                             for name in ("G", "F")}
    state.d_ops = parse_policy(cfg.loss.d_augment)
    if cfg.loss.d_augment_target:
        state.d_aug_p = AdaptiveP(cfg.loss.d_augment_target, speed_images=cfg.loss.d_augment_speed)
    state.lr_plateau = rate_plateau(o)
    state.run = {
        "G_forward_and_encode": maybe_compile(perf, G.forward_and_encode),
        "G_encode": maybe_compile(perf, G.encode),
        "D": maybe_compile(perf, D),
        "F": maybe_compile(perf, Fm),
    }
    # G's GAN loss reads D with D frozen. A separate entry because under DDP the
    # D step goes through the gradient-syncing wrapper and this call must not
    # (cut_core.distributed).
    state.run["D_for_G"] = state.run["D"]
    return state


# ---- learning rate ----------------------------------------------------------------


def set_epoch(state: TrainState, epoch: int) -> float:
    """Enter schedule ``epoch``: set every optimizer's LR from the schedule; returns the LR.

    The LR is derived from the epoch rather than kept in a scheduler object, so a
    resumed run only needs the epoch number to be exact."""
    state.epoch = epoch
    lr = state.config.optim.lr * lr_factor(state.config.optim, epoch)
    if state.lr_plateau is not None:
        lr *= state.lr_plateau.value
    for opt in state.optimizers().values():
        for group in opt.param_groups:
            group["lr"] = lr
    return lr


def set_step_lr(state: TrainState, total_steps: int) -> float:
    """Set the LR of the run's next step (``state.step``) from the schedule fitted to
    ``total_steps`` (lr_schedule.schedule_epoch); returns it. Called every step: a few
    dict writes, nothing next to the step itself."""
    return set_epoch(state, schedule_epoch(state.config.optim, state.step, total_steps))


def rate_plateau(o: OptimConfig) -> RatePlateau | None:
    """The run's plateau cut of the LR, or None where ``lr_plateau_patience`` is 0."""
    if not o.lr_plateau_patience:
        return None
    return RatePlateau(patience=o.lr_plateau_patience, factor=o.lr_plateau_factor, min_scale=o.lr_plateau_min)


def observe_val_metric(state: TrainState, value: float | None, total_steps: int, *, order: str = "min") -> bool:
    """Give the LR's plateau cut (optim.lr_plateau_patience) the val metric of the
    evaluation after ``state.step`` steps of a ``total_steps`` run (rank 0's value,
    ``None`` on the other ranks, which must call this at the same step); returns
    whether the rate was cut. The cut takes effect at the next ``set_step_lr``."""
    if state.lr_plateau is None:
        return False
    decaying = state.step >= constant_steps(state.config.optim, total_steps)
    return state.lr_plateau.observe(value, decaying=decaying, order=order, device=state.device)


# ---- phases -----------------------------------------------------------------------


@dataclass
class GeneratorPass:
    """Output of phase 1. B = batch size of real_A."""

    fake: torch.Tensor  # (B or 2B, 3, H, W): G(real_A) (then G(real_B)), attached to G's graph
    with_idt: bool  # the second half of ``fake`` is G(real_B)
    keys: list[torch.Tensor]  # per NCE layer (B or 2B, C_l, H_l, W_l), detached
    flipped: bool  # FastCUT: this iteration ran G on horizontally flipped inputs
    batch: int  # B
    src: torch.Tensor | None = None  # (B or 2B, 3, H, W) unflipped sources: the memory-bank keys' input

    @property
    def fake_B(self) -> torch.Tensor:
        return self.fake[: self.batch]

    @property
    def idt_B(self) -> torch.Tensor | None:
        return self.fake[self.batch :] if self.with_idt else None


def mirror(x: torch.Tensor, centre: FlipCentre = "edge") -> torch.Tensor:
    """Left-right mirror image of (B, C, H, W).

    "edge": about the line between the two middle columns (torch.flip), as the official
    FastCUT flips. Column j goes to W-1-j, so the even columns that a stride-2
    downsampling keeps become odd ones: no G with these downsamplings can make its
    features at 1/2 and 1/4 resolution commute with this flip, even with mirror-symmetric
    kernels (there they differ by 22-60%, measured), and the flip term of PatchNCE asks
    for that anyway.
    "pixel": about column W/2, so column j goes to W-j and, at every resolution
    W/2^k, even columns stay even: the sampling grids map onto themselves (with W a
    multiple of 4, as G needs). Column 0 has no partner and takes column W-2's value
    (a reflection), so applied twice it returns x except in column 0.
    """
    if centre == "edge":
        return torch.flip(x, dims=[3])
    return torch.flip(reflect_pad(x, (0, 1, 0, 0)), dims=[3])[..., : x.shape[3]]


def flip_coin(rng: torch.Generator) -> bool:
    """FastCUT's coin for one iteration: True (flip the input) with probability 1/2.
    One draw from ``rng``; the reference schedule and the benchmark draw it the same way."""
    return bool(torch.rand((), generator=rng) < 0.5)


def generator_pass(state: TrainState, real_A: torch.Tensor, real_B: torch.Tensor) -> GeneratorPass:
    """Phase 1: G on real_A (+ real_B), (B, 3, H, W) each in [-1, 1]."""
    cfg = state.config
    layers = cfg.loss.nce_layers
    with_idt = cfg.loss.nce_idt or cfg.loss.lambda_identity > 0
    src = torch.cat([real_A, real_B]) if with_idt else real_A
    flipped = cfg.loss.flip_equivariance and flip_coin(state.rng)
    x = mirror(src, cfg.loss.flip_centre) if flipped else src
    with autocast(state.perf, state.device):
        fake, feats = state.run["G_forward_and_encode"](x, layers)
        if flipped:
            # Flip equivariance: keys come from the unflipped source, queries from
            # G(flip(x)) flipped back, so G must commute with the flip.
            with torch.no_grad():
                keys = state.run["G_encode"](src, layers)
        else:
            keys = [f.detach() for f in feats]
    return GeneratorPass(fake=fake, with_idt=with_idt, keys=keys, flipped=flipped, batch=real_A.shape[0], src=src)


def _seen_by_D(state: TrainState, x: torch.Tensor) -> torch.Tensor:
    """x as D sees it: through ``d_augment``'s ops (each image its own draw), else as is."""
    p = state.d_augment_p
    if not p:
        return x
    return to_memory_format(state.perf, augment(x, state.d_ops, p, state.rng))


def d_step(state: TrainState, fake_B: torch.Tensor, real_B: torch.Tensor) -> dict[str, torch.Tensor]:
    """Phase 2: one Adam step of D on real_B vs the detached fake_B. Reports D's
    balance as ``D_rt`` (ADA's r_t: 1 when D calls every real patch real with margin)."""
    cfg = state.config
    r1_on = cfg.loss.lambda_R1 > 0
    real = real_B.detach().requires_grad_(r1_on)
    state.opt_D.zero_grad(set_to_none=True)
    b = fake_B.shape[0]
    with autocast(state.perf, state.device):
        # One D call on [fake; real]: instance norm is per image, so this equals two
        # calls, at half the kernel launches. One augmentation call too: the same ops,
        # each image with its own parameters, so neither side is treated differently.
        pred = state.run["D"](_seen_by_D(state, torch.cat([fake_B.detach(), real])))
    pred_fake, pred_real = pred[:b], pred[b:]
    rt = overfit_sign(pred_real, cfg.loss.gan_mode)
    loss_D_real = losses.gan_loss(cfg.loss.gan_mode, pred_real, target_is_real=True).mean()
    loss_D_fake = losses.gan_loss(cfg.loss.gan_mode, pred_fake, target_is_real=False).mean()
    loss_D = 0.5 * (loss_D_real + loss_D_fake)
    out = {"D_real": loss_D_real.detach(), "D_fake": loss_D_fake.detach(), "D_rt": rt}
    if state.d_ops:
        out["D_aug_p"] = torch.tensor(state.d_augment_p)
    if state.d_aug_p is not None:
        state.d_aug_p.observe(rt, b)  # p for the next steps
    if r1_on:
        loss_R1 = losses.r1_penalty(pred_real, real).mean() * (0.5 * cfg.loss.lambda_R1)
        loss_D = loss_D + loss_R1
        out["D_R1"] = loss_R1.detach()
    loss_D.backward()
    state.opt_D.step()
    out["D"] = loss_D.detach()
    return out


def g_step(state: TrainState, fwd: GeneratorPass, real_A: torch.Tensor, real_B: torch.Tensor) -> dict[str, torch.Tensor]:
    """Phase 3: one Adam step of G and F: lambda_GAN * GAN + PatchNCE (+ identity L1)."""
    cfg = state.config
    L = cfg.loss
    for p in state.D.parameters():
        p.requires_grad_(False)  # D only passes gradients through to G here
    state.opt_G.zero_grad(set_to_none=True)
    state.opt_F.zero_grad(set_to_none=True)
    out: dict[str, torch.Tensor] = {}
    b = real_A.shape[0]
    with autocast(state.perf, state.device):
        pred = state.run["D_for_G"](_seen_by_D(state, fwd.fake_B))
        loss_G_GAN = losses.gan_loss(L.gan_mode, pred, target_is_real=True).mean() * L.lambda_GAN
        loss_G = loss_G_GAN
        out["G_GAN"] = loss_G_GAN.detach()
        if L.lambda_NCE > 0:
            # With the identity branch, fake is already [G(real_A); G(real_B)]: encode it whole.
            targets = fwd.fake if L.nce_idt else fwd.fake_B
            keys = fwd.keys if L.nce_idt else [k[:b] for k in fwd.keys]
            src = fwd.src if L.nce_idt else fwd.src[:b]
            nce = _patch_nce_per_image(state, targets, keys, fwd.flipped, src)
            out["NCE"] = nce[:b].mean().detach()
            if L.nce_idt:
                # CUT: the identity NCE(G(real_B), real_B) averaged with NCE(G(real_A), real_A).
                out["NCE_Y"] = nce[b:].mean().detach()
                loss_G = loss_G + 0.5 * (nce[:b].mean() + nce[b:].mean())
            else:
                loss_G = loss_G + nce.mean()
        if L.lambda_identity > 0:
            assert fwd.idt_B is not None
            loss_idt = F.l1_loss(fwd.idt_B.float(), real_B.float()) * L.lambda_identity
            loss_G = loss_G + loss_idt
            out["idt"] = loss_idt.detach()
    loss_G.backward()
    # The size of this step's update, before Adam rescales it: where a loss jumps (a
    # PatchNCE spike on one toy seed, docs/quality.md), these show which net it came from.
    for name in ("G", "F"):
        net, guard = getattr(state, name), state.grad_guards.get(name)
        if guard is None:
            out[f"{name}_grad_norm"] = grad_norm(gradients(net))
        else:
            out[f"{name}_grad_norm"], out[f"{name}_clipped"] = guard.clip_(net)
    state.opt_G.step()
    state.opt_F.step()
    if state.key_encoder is not None and state.bank is not None:
        state.bank.commit()
        state.key_encoder.update(state.G, state.F)  # after the step, as MoCo
    for p in state.D.parameters():
        p.requires_grad_(True)
    out["G"] = loss_G.detach()
    return out


def _patch_nce_per_image(
    state: TrainState, targets: torch.Tensor, keys: list[torch.Tensor], flipped: bool, src: torch.Tensor | None = None
) -> torch.Tensor:
    """lambda_NCE * PatchNCE averaged over layers, per target image: (N,).

    targets: (N, 3, H, W) translations; keys: per layer (N, C_l, H_l, W_l) encodings
    of their sources ``src``. With batch negatives, the A->B half and the B->B identity
    half are separate groups (as the official code calls the loss once for each).
    With a memory bank, the keys come from the momentum encoder on ``src`` and the
    negatives from the bank, which then takes this step's keys.
    """
    L = state.config.loss
    feat_q = state.run["G_encode"](targets, L.nce_layers)
    if flipped:
        feat_q = [mirror(f, L.flip_centre) for f in feat_q]
    ids = PatchSampleMLP.sample_ids(keys, L.num_patches, state.rng)
    q_proj = state.run["F"](feat_q, ids)
    n = targets.shape[0]
    total = torch.zeros(n, device=targets.device)
    if state.bank is not None and state.key_encoder is not None and src is not None:
        k_proj = state.key_encoder.keys(src, L.nce_layers, ids)
        for layer, (q, k) in enumerate(zip(q_proj, k_proj, strict=True)):
            total = total + losses.patch_nce_bank(q, k, state.bank.negatives(layer), tau=L.nce_T).mean(dim=1)
            state.bank.stage(layer, k.float())  # enqueued after the step: a key is never its own negative
        return total * (L.lambda_NCE / len(q_proj))
    with torch.no_grad():
        k_proj = state.run["F"](keys, ids)
    halves = 2 if (L.nce_idt and L.nce_includes_all_negatives_from_minibatch) else 1
    for q, k in zip(q_proj, k_proj, strict=True):
        parts = [
            losses.patch_nce(qh, kh, tau=L.nce_T, negatives_from_batch=L.nce_includes_all_negatives_from_minibatch)
            for qh, kh in zip(q.chunk(halves), k.chunk(halves))
        ]
        total = total + torch.cat(parts).mean(dim=1)  # (N,)
    return total * (L.lambda_NCE / len(q_proj))


def train_step(state: TrainState, real_A: torch.Tensor, real_B: torch.Tensor) -> dict[str, torch.Tensor]:
    """One CUT iteration (a CycleGAN one for the cyclegan preset: cut_core.cyclegan).
    real_A, real_B: (B, 3, H, W) float in [-1, 1] on ``state.device``.
    Returns detached scalars: the losses D, D_real, D_fake, G, G_GAN, NCE (+ NCE_Y, idt,
    D_R1), D's balance D_rt (+ D_aug_p, the augmentation probability, when on), and the
    norms of G's and F's gradients in this step, G_grad_norm and F_grad_norm (before
    clipping; with optim.grad_clip_median also G_clipped and F_clipped, 1 where clipped)."""
    _check_batch(real_A, real_B)
    perf = state.perf
    real_A, real_B = to_memory_format(perf, real_A), to_memory_format(perf, real_B)
    if state.config.is_cyclegan:
        from cut_core.cyclegan import cyclegan_step

        return cyclegan_step(state, real_A, real_B)  # type: ignore[arg-type]
    fwd = generator_pass(state, real_A, real_B)
    out = d_step(state, fwd.fake_B, real_B)
    out.update(g_step(state, fwd, real_A, real_B))
    state.step += 1
    if state.G_ema is not None:
        state.G_ema.update(state.G, state.step)
    return out


def _check_batch(real_A: torch.Tensor, real_B: torch.Tensor) -> None:
    for name, x in (("real_A", real_A), ("real_B", real_B)):
        if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ValueError(f"{name} must be a float (B, 3, H, W) batch in [-1, 1], got {x.dtype} {tuple(x.shape)}")
    if real_A.shape != real_B.shape:
        raise ValueError(f"real_A {tuple(real_A.shape)} and real_B {tuple(real_B.shape)} must have the same shape")
