"""uint8 image batches <-> G's float tensors (the normalisation of the model directory)."""

from __future__ import annotations

import numpy as np
import torch


def to_model_input(batch: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [-1, 1]."""
    batch = np.ascontiguousarray(batch)
    if not batch.flags.writeable:  # Ray hands out read-only views of its object store
        batch = batch.copy()
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def to_uint8_images(x: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float in [-1, 1] -> (B, H, W, 3) uint8."""
    y = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return y.permute(0, 2, 3, 1).cpu().numpy()
