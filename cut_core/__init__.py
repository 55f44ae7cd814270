"""cut_core: CUT, FastCUT and SinCUT in pure PyTorch.

Imports torch (and safetensors for the model directory) only: no Ray, no MLflow,
so it runs and is benchmarked on any machine that has torch.
"""

from cut_core.config import (
    CUTConfig,
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    PerfConfig,
    parse_overrides,
)
from cut_core.errors import ConfigError, ModelDirError, RaycutError
from cut_core.model_dir import import_official_generator, load_generator, save_generator
from cut_core.networks import PatchGANDiscriminator, PatchSampleMLP, ResnetGenerator
from cut_core.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator
from cut_core.training import TrainState, build_train_state, set_epoch, train_step

__all__ = [
    "CUTConfig",
    "ConfigError",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "ModelDirError",
    "OptimConfig",
    "PatchGANDiscriminator",
    "PatchSampleMLP",
    "PerfConfig",
    "RaycutError",
    "ResnetGenerator",
    "StyleGAN2Discriminator",
    "StyleGAN2Generator",
    "TrainState",
    "build_train_state",
    "import_official_generator",
    "load_generator",
    "parse_overrides",
    "save_generator",
    "set_epoch",
    "train_step",
]
