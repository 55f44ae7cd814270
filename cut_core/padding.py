"""Reflection padding that keeps the dtype under autocast.

CPU autocast lists reflection/replication padding among the ops it runs in fp32, so
every pad in a bf16 forward turned bf16 activations into fp32 and the next conv cast
them back: two full-size copies per pad, ~15% of a bf16 training step. Padding only
moves values, so running it in the input's dtype loses nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def reflect_pad(x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    """F.pad(x, pad, mode="reflect") in x's own dtype, also under autocast."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        return F.pad(x, pad, mode="reflect")


class ReflectionPad2d(nn.ReflectionPad2d):
    """nn.ReflectionPad2d that keeps bf16 activations in bf16 under autocast."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reflect_pad(x, self.padding)


SIZE_MULTIPLE = 4  # CUT's G downsamples twice by 2
# The smallest side G takes: its 3x3 reflection pads at a quarter of the size need at
# least 2 pixels there. Smaller images (icons, thumbnails, a 1-pixel-wide strip) are
# padded up to it and cropped back, like any other size.
MIN_SIZE = 2 * SIZE_MULTIPLE


def pad_to_multiple(x: torch.Tensor, multiple: int = SIZE_MULTIPLE, minimum: int = MIN_SIZE) -> torch.Tensor:
    """Pad (B, C, H, W) on the right and bottom to multiples of ``multiple``, and to at
    least ``minimum`` (a multiple of it); crop ``[..., :H, :W]`` after. Reflects where
    the image is large enough to, replicates its edge where it is not."""
    h, w = x.shape[-2:]
    ph = max(minimum, h + (-h) % multiple) - h
    pw = max(minimum, w + (-w) % multiple) - w
    if not (ph or pw):
        return x
    return F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")
