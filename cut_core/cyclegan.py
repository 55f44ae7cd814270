"""CycleGAN (Zhu et al. 2017) as a mode of the same trainer: the baseline CUT is
measured against, on a user's own data, through the same Ray Train, MLflow,
translation and evaluation path.

Two generators, G: A -> B (``state.G``, the one translated with and registered) and
G_B: B -> A, and two PatchGAN discriminators, D judging domain B (``state.D``) and
D_A judging domain A. One iteration, as the official ``optimize_parameters``:

1. ``cycle_pass``: fake_B = G(real_A), rec_A = G_B(fake_B), fake_A = G_B(real_B),
   rec_B = G(fake_A).
2. ``cycle_g_step``: both Gs learn, both Ds frozen: lambda_GAN * (GAN(D(fake_B)) +
   GAN(D_A(fake_A))) + lambda_A * |rec_A - real_A| + lambda_B * |rec_B - real_B|
   + lambda_identity * (lambda_B * |G(real_B) - real_B| + lambda_A * |G_B(real_A) - real_A|).
3. ``cycle_d_step``: each D learns its real images against a fake drawn from its
   image pool (the last ``pool_size`` fakes; half the time an older one).

The networks are raycut's CUT networks (anti-aliased ResNet G, PatchGAN D), so a
CycleGAN model directory translates, quantizes and serves as a CUT one does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cut_core import losses
from cut_core.config import CUTConfig
from cut_core.fast_paths import autocast, prepare_module, to_memory_format
from cut_core.hardware import ResolvedPerf, resolve_perf
from cut_core.networks import Discriminator, Generator, build_discriminator, build_generator
from cut_core.training import TrainState, adam, rate_plateau


class ImagePool(nn.Module):
    """The official image buffer: a D sees a mix of the newest fakes and older ones, so
    it does not chase G's latest move only. A module so checkpoints keep the images.

    ``query(images)``: (B, C, H, W) -> (B, C, H, W). While the pool fills, each image
    is stored and returned; then, per image, with probability 1/2 a random stored image
    is returned and replaced by the new one, else the new one is returned."""

    def __init__(self, size: int, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("images", torch.zeros((size, *shape)))
        # How many slots hold a fake: a host int (reading a GPU counter per image would
        # wait for the device), saved with the images as the module's extra state.
        self.count = 0

    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor(self.count)

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.count = int(state)

    @torch.no_grad()
    def query(self, images: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            if self.count < self.size:
                self.images[self.count] = image.float()
                self.count += 1
                out.append(image)
            elif float(torch.rand((), generator=rng)) > 0.5:
                i = int(torch.randint(0, self.size, (), generator=rng))
                out.append(self.images[i].to(image.dtype).clone())
                self.images[i] = image.float()
            else:
                out.append(image)
        return torch.stack(out)


@dataclass
class CycleGANState(TrainState):
    """TrainState's interface (checkpoints, epochs, the worker loop) over CycleGAN's
    four networks: ``G``/``D`` are A -> B and its judge; ``F``/``opt_F`` are unused."""

    G_B: Generator | None = None
    D_A: Discriminator | None = None
    pool_A: ImagePool | None = None  # past fakes of domain A, for D_A
    pool_B: ImagePool | None = None  # past fakes of domain B, for D

    def modules(self) -> dict[str, nn.Module]:
        out: dict[str, nn.Module] = {"G": self.G, "G_B": self.G_B, "D": self.D, "D_A": self.D_A,
                                     "pool_A": self.pool_A, "pool_B": self.pool_B}
        if self.G_ema is not None:
            out["G_ema"] = self.G_ema
        if self.lr_plateau is not None:
            out["lr_plateau"] = self.lr_plateau
        return out

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"G": self.opt_G, "D": self.opt_D}


def build_cyclegan_state(cfg: CUTConfig, *, device: torch.device | str = "cpu", rank: int = 0,
                         fast: ResolvedPerf | None = None) -> CycleGANState:
    """Fresh Gs, Ds and pools; one Adam over both Gs and one over both Ds (as the
    official code). Weights depend on ``cfg.seed`` only; ``fast`` as in build_train_state."""
    from cut_core.ema import GeneratorEMA

    device = torch.device(device)
    fast = fast or resolve_perf(cfg.perf, device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        G, G_B = build_generator(cfg.model), build_generator(cfg.model)
        D, D_A = build_discriminator(cfg), build_discriminator(cfg)
    for m in (G, G_B, D, D_A):
        prepare_module(fast.perf, m.to(device))
    o = cfg.optim
    shape = (cfg.model.output_nc, cfg.data.crop_size, cfg.data.crop_size)
    state = CycleGANState(
        config=cfg, fast=fast, G=G, D=D, F=None,  # type: ignore[arg-type]
        opt_G=adam([*G.parameters(), *G_B.parameters()], o, device),
        opt_D=adam([*D.parameters(), *D_A.parameters()], o, device),
        opt_F=None,  # type: ignore[arg-type]
        rng=torch.Generator().manual_seed(cfg.seed + rank), device=device,
        G_B=G_B, D_A=D_A, pool_A=ImagePool(cfg.loss.pool_size, shape).to(device),
        pool_B=ImagePool(cfg.loss.pool_size, shape).to(device),
    )
    if o.ema_decay:
        state.G_ema = GeneratorEMA(G, o.ema_decay)
    state.lr_plateau = rate_plateau(o)
    # Each network's first call of a step goes through ``run``: under DDP the wrapper
    # that syncs its gradients (cut_core.distributed). Its other calls in the same
    # backward (the reconstructions, the identity terms, a D read by the G step with
    # D frozen) use the plain module: autograd sums every use of a weight before DDP's
    # hook on it fires, so one synced call per network and backward covers them all.
    state.run = {"G": G, "G_B": G_B, "D": D, "D_A": D_A}
    return state


@dataclass
class CyclePass:
    fake_B: torch.Tensor  # G(real_A)
    rec_A: torch.Tensor  # G_B(G(real_A))
    fake_A: torch.Tensor  # G_B(real_B)
    rec_B: torch.Tensor  # G(G_B(real_B))


def cycle_pass(state: CycleGANState, real_A: torch.Tensor, real_B: torch.Tensor) -> CyclePass:
    """Phase 1: both translations and both reconstructions, (B, 3, H, W) each."""
    assert state.G_B is not None
    with autocast(state.perf, state.device):
        fake_B = state.run["G"](real_A)
        fake_A = state.run["G_B"](real_B)
        return CyclePass(fake_B=fake_B, rec_A=state.G_B(fake_B), fake_A=fake_A, rec_B=state.G(fake_A))


def cycle_g_step(state: CycleGANState, fwd: CyclePass, real_A: torch.Tensor, real_B: torch.Tensor) -> dict[str, torch.Tensor]:
    """Phase 2: one Adam step of both Gs (Ds frozen)."""
    assert state.G_B is not None and state.D_A is not None
    L = state.config.loss
    Ds = (state.D, state.D_A)
    for d in Ds:
        d.requires_grad_(False)
    state.opt_G.zero_grad(set_to_none=True)
    out: dict[str, torch.Tensor] = {}
    with autocast(state.perf, state.device):
        gan_B = losses.gan_loss(L.gan_mode, state.D(fwd.fake_B), target_is_real=True).mean() * L.lambda_GAN
        gan_A = losses.gan_loss(L.gan_mode, state.D_A(fwd.fake_A), target_is_real=True).mean() * L.lambda_GAN
        cycle_A = F.l1_loss(fwd.rec_A.float(), real_A.float()) * L.lambda_A
        cycle_B = F.l1_loss(fwd.rec_B.float(), real_B.float()) * L.lambda_B
        loss = gan_B + gan_A + cycle_A + cycle_B
        if L.lambda_identity > 0:
            idt_B = F.l1_loss(state.G(real_B).float(), real_B.float()) * L.lambda_B * L.lambda_identity
            idt_A = F.l1_loss(state.G_B(real_A).float(), real_A.float()) * L.lambda_A * L.lambda_identity
            loss = loss + idt_A + idt_B
            out.update(idt_A=idt_A.detach(), idt_B=idt_B.detach())
    loss.backward()
    state.opt_G.step()
    for d in Ds:
        d.requires_grad_(True)
    out.update(G_GAN=gan_B.detach(), G_B_GAN=gan_A.detach(), cycle_A=cycle_A.detach(), cycle_B=cycle_B.detach(),
               G=loss.detach())
    return out


def cycle_d_step(state: CycleGANState, fwd: CyclePass, real_A: torch.Tensor, real_B: torch.Tensor) -> dict[str, torch.Tensor]:
    """Phase 3: one Adam step of both Ds, each on its reals against a pooled fake.
    ``D`` is the mean of the two D losses (what the 'D has won' watch reads)."""
    assert state.D_A is not None and state.pool_A is not None and state.pool_B is not None
    L = state.config.loss
    state.opt_D.zero_grad(set_to_none=True)
    fake_B = to_memory_format(state.perf, state.pool_B.query(fwd.fake_B.detach(), state.rng))
    fake_A = to_memory_format(state.perf, state.pool_A.query(fwd.fake_A.detach(), state.rng))
    with autocast(state.perf, state.device):
        pred_B = state.run["D"](torch.cat([fake_B, real_B]))
        pred_A = state.run["D_A"](torch.cat([fake_A, real_A]))
    b = real_A.shape[0]
    d_B = 0.5 * (losses.gan_loss(L.gan_mode, pred_B[b:], target_is_real=True).mean()
                 + losses.gan_loss(L.gan_mode, pred_B[:b], target_is_real=False).mean())
    d_A = 0.5 * (losses.gan_loss(L.gan_mode, pred_A[b:], target_is_real=True).mean()
                 + losses.gan_loss(L.gan_mode, pred_A[:b], target_is_real=False).mean())
    (d_A + d_B).backward()
    state.opt_D.step()
    return {"D_B": d_B.detach(), "D_A": d_A.detach(), "D": (0.5 * (d_A + d_B)).detach()}


def cyclegan_step(state: CycleGANState, real_A: torch.Tensor, real_B: torch.Tensor) -> dict[str, torch.Tensor]:
    """One CycleGAN iteration (G step, then D step, as the official order); returns
    detached scalars G, G_GAN, G_B_GAN, cycle_A, cycle_B (+ idt_A, idt_B), D, D_A, D_B."""
    fwd = cycle_pass(state, real_A, real_B)
    out = cycle_g_step(state, fwd, real_A, real_B)
    out.update(cycle_d_step(state, fwd, real_A, real_B))
    state.step += 1
    if state.G_ema is not None:
        state.G_ema.update(state.G, state.step)
    return out
