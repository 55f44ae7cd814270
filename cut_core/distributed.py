"""Data-parallel CUT: G, D and F each wrapped in DistributedDataParallel (CycleGAN:
its two Gs and two Ds).

DDP averages gradients only for calls that go through its ``forward``, once per
backward. The CUT phases call G by method (``forward_and_encode``, ``encode``) and
call D in two roles, so the wrapping is explicit about which call is synced:

- G: the translation pass (``forward_and_encode``) goes through DDP. The query
  encoding in ``g_step`` uses the plain module: its gradient reaches the same
  parameters inside the same backward, where autograd sums both contributions
  before DDP's per-parameter hook fires, so one synced forward covers both.
- D: the D step goes through DDP; G's GAN loss uses the plain module, because D
  is frozen there and a DDP forward would wait for gradients that never come.
- F: the query projection goes through DDP; the key projection runs under
  no_grad, where DDP does not prepare a reduction.
- CycleGAN (cut_core.cyclegan): G, G_B, D and D_A each through DDP at their first
  call of a phase (``state.run``), the same rule for their other calls.

Ranks also settle ``auto`` fast paths together (``agree_fast_paths``) before any
network is built: DDP needs one memory layout on every rank, and each rank's own probe
can land on either side of a close call.

Pure torch: the process group is the caller's (Ray Train's TorchTrainer, torchrun,
or a test's ``init_process_group``).
"""

from __future__ import annotations

import inspect
from dataclasses import replace
from functools import partial
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cut_core.hardware import ResolvedPerf
from cut_core.training import TrainState


# No buffer is trained (instance norm keeps no running stats; the blur filters are
# constants), so skip the per-forward buffer broadcast. torch 2.14 renamed the option
# and warns on the old name; torch <= 2.13 (a GPU box's install) knows only the old one.
_NO_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
    else {"broadcast_buffers": False}
)


class _Dispatch(nn.Module):
    """Holds a module's parameters for DDP and routes ``forward(name, ...)`` to one of
    the callables that ``TrainState.run`` already uses (plain or compiled)."""

    def __init__(self, module: nn.Module, calls: dict[str, Callable[..., Any]]) -> None:
        super().__init__()
        self.module = module
        self._calls = calls

    def forward(self, name: str, *args: Any) -> Any:
        return self._calls[name](*args)


def wrap_data_parallel(state: TrainState, *, device_ids: list[int] | None = None) -> dict[str, DistributedDataParallel]:
    """Wrap G, D and F of ``state`` in DDP (in place: ``state.run`` is rerouted); for
    CycleGAN, its two Gs and two Ds.

    DDP's constructor broadcasts rank 0's parameters, so every replica starts equal
    even if a caller built them differently. Returns the three DDP modules (kept
    alive by ``state.run``); checkpoints keep using ``state.G/D/F`` and their plain
    state-dict keys.
    """
    if not dist.is_initialized():
        raise RuntimeError("wrap_data_parallel needs an initialised torch.distributed process group")
    if state.config.is_cyclegan:
        # Its four networks are called as modules: DDP wraps them as they are. The image
        # pools stay per rank, like the data each rank draws.
        cyclegan = {name: DistributedDataParallel(getattr(state, name), device_ids=device_ids, **_NO_BUFFER_SYNC)
                    for name in ("G", "G_B", "D", "D_A")}
        state.run.update(cyclegan)
        return cyclegan
    run = dict(state.run)
    plain = {"G": {"forward_and_encode": run["G_forward_and_encode"]}, "D": {"forward": run["D"]}, "F": {"forward": run["F"]}}
    wrapped = {
        name: DistributedDataParallel(
            _Dispatch(module, plain[name]),
            device_ids=device_ids,
            **_NO_BUFFER_SYNC,
        )
        for name, module in (("G", state.G), ("D", state.D), ("F", state.F))
    }
    state.run["G_forward_and_encode"] = partial(wrapped["G"], "forward_and_encode")
    state.run["D"] = partial(wrapped["D"], "forward")
    state.run["F"] = partial(wrapped["F"], "forward")
    # Unchanged and deliberately unsynced: G_encode and D_for_G (see the module doc).
    return wrapped


def agree_fast_paths(fast: ResolvedPerf, device: torch.device | str = "cpu") -> ResolvedPerf:
    """The fast paths that every rank of the process group runs, from each rank's own
    settlement ``fast`` (cut_core.hardware.resolve_perf). All ranks must call it.

    Each rank probes its own device, and two probes of one machine can fall on either
    side of a close call: one rank on channels_last and the other on NCHW makes DDP
    refuse the parameters (their strides differ; seen on a 2-core EPYC, where one
    rank's probe was taken while the other rank was probing too). Rule: bf16 only if
    every rank settled on it (a rank that emulates bf16 would set the whole group's
    pace, at tens of times fp32's), then channels_last only if every rank picks it for
    that precision; NCHW is the reference layout. When the ranks differed, every rank
    gets a warning line that says so (the lead prints it). Explicit settings are the
    same on every rank and pass through unchanged."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return fast
    world = dist.get_world_size()
    on = torch.device(device) if dist.get_backend() == "nccl" else torch.device("cpu")

    def count(flag: bool) -> int:
        n = torch.tensor([int(flag)], dtype=torch.int64, device=on)
        dist.all_reduce(n)
        return int(n.item())

    requested, own = fast.requested, fast.perf
    n_bf16 = count(own.precision == "bf16")
    precision = "bf16" if n_bf16 == world else "fp32" if requested.precision == "auto" else own.precision
    if requested.channels_last == "auto" and fast.paths is not None:
        layout = fast.paths.layout_for(precision)
    else:
        layout = bool(own.channels_last)
    n_layout = count(layout)
    channels_last = n_layout == world
    agreed = replace(own, precision=precision, channels_last=channels_last)
    if not (0 < n_bf16 < world or 0 < n_layout < world):
        return fast  # unanimous
    line = (f"the {world} data-parallel ranks measured different fast paths (bf16 on {n_bf16}, channels_last on "
            f"{n_layout}); all run {precision}, {'channels_last' if channels_last else 'NCHW'}")
    return replace(fast, perf=agreed, warnings=(*fast.warnings, line))


@torch.no_grad()
def replica_divergence(state: TrainState) -> float:
    """Largest absolute difference of any G, D or F weight across ranks (0.0 when the
    replicas are equal). All ranks must call it."""
    flat = torch.cat([p.detach().float().flatten() for m in state.modules().values() for p in m.parameters()])
    hi, lo = flat.clone(), flat.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    return float((hi - lo).max())
