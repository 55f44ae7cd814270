"""A whole training state on disk, for resume: no pickle, like the model directory.

Layout (format version 1)::

    CKPT_DIR/
      train_state.json          step, epoch, lr, the resolved CUTConfig, the
                                optimizers' param groups and non-tensor state
      networks.safetensors      G.*, D.*, F.* state dicts (official G keys after "G.")
      optimizers.safetensors    Adam moments: "<G|D|F>/<param index>/<exp_avg|...>"
      rng_rank<r>.safetensors   rank r's patch/flip generator and torch CPU (+CUDA) RNG

The networks and optimizers are equal on every data-parallel rank, so rank 0 writes
them; each rank writes its own RNG file, because each rank draws its own patches.
The learning rate needs no scheduler state: it is a function of the epoch
(``training.set_epoch``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from cut_core.config import FORMAT_VERSION, CUTConfig
from cut_core.errors import RaycutError
from cut_core.training import TrainState, set_epoch

STATE_NAME = "train_state.json"
NETWORKS_NAME = "networks.safetensors"
OPTIMIZERS_NAME = "optimizers.safetensors"
FORMAT_NAME = "raycut-train-state"


class CheckpointError(RaycutError):
    """A training checkpoint that cannot be used for this run."""


# Parts of the state that a run may turn on when it resumes (--set ema_decay=0.999 or
# d_augment_target=0.6 on a run saved without them): absent from the checkpoint, they
# start fresh instead of failing the load.
ADDABLE_MODULES = ("G_ema", "ADA", "lr_plateau")


def rng_name(rank: int) -> str:
    return f"rng_rank{rank}.safetensors"


def save_train_state(state: TrainState, path: str | Path, *, rank: int = 0) -> Path:
    """Write ``state`` into ``path``: everything on rank 0, the RNG file on every rank."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    save_file(_rng_tensors(state), str(out / rng_name(rank)))
    if rank != 0:
        return out
    nets = {f"{name}.{k}": v.detach().cpu().contiguous() for name, m in state.modules().items() for k, v in m.state_dict().items()}
    save_file(nets, str(out / NETWORKS_NAME))
    tensors: dict[str, torch.Tensor] = {}
    opt_meta: dict[str, Any] = {}
    for name, opt in state.optimizers().items():
        sd = opt.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for idx, slots in sd["state"].items():
            for key, value in slots.items():
                if torch.is_tensor(value):
                    tensors[f"{name}/{idx}/{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars.setdefault(str(idx), {})[key] = value
        opt_meta[name] = {"param_groups": sd["param_groups"], "scalars": scalars}
    save_file(tensors, str(out / OPTIMIZERS_NAME))
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "step": state.step,
        "epoch": state.epoch,
        "lr": state.opt_G.param_groups[0]["lr"],
        "config": state.config.to_dict(),
        "optimizers": opt_meta,
    }
    (out / STATE_NAME).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return out


def read_train_meta(path: str | Path) -> dict[str, Any]:
    """The JSON half of a checkpoint (step, epoch, config...), checked for format."""
    f = Path(path) / STATE_NAME
    if not f.is_file():
        raise CheckpointError(f"{path} is not a raycut training checkpoint (no {STATE_NAME})")
    meta = json.loads(f.read_text())
    if meta.get("format") != FORMAT_NAME or meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{f} has format {meta.get('format')} v{meta.get('format_version')}; "
                              f"this raycut reads {FORMAT_NAME} up to v{FORMAT_VERSION}")
    return meta


def load_train_state(state: TrainState, path: str | Path, *, rank: int = 0) -> dict[str, Any]:
    """Restore ``state`` in place from ``path``; returns the checkpoint's metadata.

    The networks must have the same architecture (a changed ``ngf`` or ``nce_layers``
    is refused); loss and optimisation settings may differ, and the caller's win.
    A rank with no RNG file of its own (the run restarted with more workers) gets a
    generator seeded from (seed, rank, step), so it still draws fresh patches.
    """
    root = Path(path)
    meta = read_train_meta(root)
    saved_model = CUTConfig.from_dict(meta["config"]).model
    if saved_model != state.config.model:
        raise CheckpointError(f"checkpoint {root} holds a different architecture ({saved_model}) than this run "
                              f"({state.config.model}); start a new run instead of resuming")
    nets = load_file(str(root / NETWORKS_NAME))
    saved_modules = {k.split(".", 1)[0] for k in nets}
    for name, module in state.modules().items():
        if name in ADDABLE_MODULES and name not in saved_modules:
            continue  # turned on at this resume: starts fresh (the EMA from the loaded G, below)
        prefix = f"{name}."
        module.load_state_dict({k[len(prefix):]: v for k, v in nets.items() if k.startswith(prefix)}, strict=True)
    if state.G_ema is not None and "G_ema" not in saved_modules:
        state.G_ema.average.load_state_dict(state.G.state_dict())
    moments = load_file(str(root / OPTIMIZERS_NAME))
    for name, opt in state.optimizers().items():
        saved = meta["optimizers"][name]
        slots: dict[int, dict[str, Any]] = {}
        for key, value in moments.items():
            net, idx, slot = key.split("/")
            if net == name:
                slots.setdefault(int(idx), {})[slot] = value
        for idx, extra in saved["scalars"].items():
            slots.setdefault(int(idx), {}).update(extra)
        opt.load_state_dict({"state": slots, "param_groups": saved["param_groups"]})
    state.step = int(meta["step"])
    set_epoch(state, int(meta["epoch"]))
    rng_file = root / rng_name(rank)
    if rng_file.is_file():
        _set_rng(state, load_file(str(rng_file)))
    else:
        state.rng.manual_seed(hash((state.config.seed, rank, state.step)) & 0x7FFF_FFFF_FFFF_FFFF)
    return meta


def _rng_tensors(state: TrainState) -> dict[str, torch.Tensor]:
    out = {"patch_rng": state.rng.get_state(), "torch_cpu": torch.get_rng_state()}
    if state.device.type == "cuda":
        out["torch_cuda"] = torch.cuda.get_rng_state(state.device)
    return out


def _set_rng(state: TrainState, saved: dict[str, torch.Tensor]) -> None:
    state.rng.set_state(saved["patch_rng"])
    torch.set_rng_state(saved["torch_cpu"])
    if state.device.type == "cuda" and "torch_cuda" in saved:
        torch.cuda.set_rng_state(saved["torch_cuda"], state.device)
