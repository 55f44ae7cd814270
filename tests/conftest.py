"""Shared fixtures: tiny configs (ngf 8, 32 px) so the suite runs in minutes on 2 cores."""

from __future__ import annotations

import pytest
import torch

from cut_core import CUTConfig

torch.set_num_threads(2)


def tiny(preset: str = "cut", **overrides: object) -> CUTConfig:
    """A preset shrunk for tests: ngf/ndf 8, 3 blocks, 32 px crops, batch 2."""
    base = {
        "ngf": 8,
        "ndf": 8,
        "n_blocks": 3,
        "netF_nc": 16,
        "nce_layers": "0,4,8,12,14",
        "num_patches": 32,
        "crop_size": 32,
        "load_size": 32,
        "preprocess": "crop",
        "batch_size": 2,
    }
    base.update(overrides)
    return CUTConfig.from_preset(preset).with_overrides(base)


@pytest.fixture
def images() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    b = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    return a, b
