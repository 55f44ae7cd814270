"""cut_core: CUT, FastCUT and SinCUT in pure PyTorch.

Imports torch (and safetensors for the model directory) only: no Ray, no MLflow,
so it runs and is benchmarked on any machine that has torch.

The names below load on first use (PEP 562). ``cut_core.config`` and
``cut_core.errors`` need no torch, and the data path (Ray Data's decode actors, its
split coordinators, the CLI's option parsing) imports only them: a process that
never touches a network then never pays torch's import (~2.5 s of CPU and ~300 MB
per process here), which on a 2-core machine is most of a Ray actor's start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the module that defines it
_EXPORTS = {
    "CUTConfig": "cut_core.config",
    "DataConfig": "cut_core.config",
    "LossConfig": "cut_core.config",
    "ModelConfig": "cut_core.config",
    "OptimConfig": "cut_core.config",
    "PerfConfig": "cut_core.config",
    "parse_overrides": "cut_core.config",
    "ConfigError": "cut_core.errors",
    "ModelDirError": "cut_core.errors",
    "RaycutError": "cut_core.errors",
    "import_official_generator": "cut_core.model_dir",
    "load_generator": "cut_core.model_dir",
    "save_generator": "cut_core.model_dir",
    "PatchGANDiscriminator": "cut_core.networks",
    "PatchSampleMLP": "cut_core.networks",
    "ResnetGenerator": "cut_core.networks",
    "StyleGAN2Discriminator": "cut_core.stylegan2",
    "StyleGAN2Generator": "cut_core.stylegan2",
    "TrainState": "cut_core.training",
    "build_train_state": "cut_core.training",
    "set_epoch": "cut_core.training",
    "set_step_lr": "cut_core.training",
    "train_step": "cut_core.training",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cut_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what type checkers and IDEs see
    from cut_core.config import (CUTConfig, DataConfig, LossConfig, ModelConfig, OptimConfig, PerfConfig,
                                 parse_overrides)
    from cut_core.errors import ConfigError, ModelDirError, RaycutError
    from cut_core.model_dir import import_official_generator, load_generator, save_generator
    from cut_core.networks import PatchGANDiscriminator, PatchSampleMLP, ResnetGenerator
    from cut_core.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator
    from cut_core.training import TrainState, build_train_state, set_epoch, set_step_lr, train_step
