"""Full-resolution translation with a trained G: any H x W, optionally in tiles.

G is fully convolutional but needs H and W divisible by 4 (two stride-2 stages), so
the input is reflect-padded on the right and bottom and the output cropped back:
every output has exactly its input's size.

Tiling bounds memory on huge frames: overlapping tiles are translated one by one and
blended with weights that ramp linearly across each overlap, so no seam shows. It
is not identical to the untiled output even away from the overlaps: G's instance
norms see each tile's own statistics. With tiles covering most of the image the
difference is small; ``tile=0`` (the default) is exact.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cut_core.config import TRANSLATE_PRECISIONS as PRECISIONS
from cut_core.config import PerfConfig
from cut_core.fast_paths import autocast
from cut_core.images import to_model_input, to_uint8_images
from cut_core.padding import SIZE_MULTIPLE, pad_to_multiple
from cut_core.quantize import Int8ResnetGenerator


@torch.no_grad()
def translate(G: nn.Module, x: torch.Tensor, *, precision: str = "fp32", channels_last: bool = False,
              tile: int = 0, overlap: int = 32) -> torch.Tensor:
    """x: (B, 3, H, W) in [-1, 1] on G's device -> (B, 3, H, W) float32 in [-1, 1].
    ``precision`` int8 takes G as an ``Int8ResnetGenerator`` (cut_core.quantize);
    ``auto`` must be settled first (cut_core.hardware.resolve_translation)."""
    if precision not in PRECISIONS[1:]:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS[1:])} here, not {precision!r}")
    if (precision == "int8") != isinstance(G, Int8ResnetGenerator):
        raise ValueError("precision int8 goes with an Int8ResnetGenerator (cut_core.quantize), and only with it")
    if tile and (x.shape[-2] > tile or x.shape[-1] > tile):
        return _tiled(G, x, precision=precision, channels_last=channels_last, tile=tile, overlap=overlap)
    h, w = x.shape[-2:]
    x = pad_to_multiple(x)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if precision == "int8":
        y = G(x)
    else:
        with autocast(PerfConfig(precision=precision, channels_last=channels_last), x.device):
            y = G(x)
    return y[..., :h, :w].float().contiguous()


@torch.no_grad()
def translate_uint8(G: nn.Module, images: np.ndarray, *, precision: str = "fp32", channels_last: bool = False,
                    tile: int = 0, overlap: int = 32, batch_size: int = 8,
                    device: torch.device | str | None = None) -> np.ndarray:
    """uint8 in, uint8 out: (N, H, W, 3) -> (N, H, W, 3), any H x W, through G in eval
    mode (its training mode is restored), ``batch_size`` images at a time on ``device``
    (default: G's). The one uint8 path of raycut: the batch job, the MLflow model,
    sample grids and tests all translate through it. An ``Int8ResnetGenerator`` runs
    in int8 whatever ``precision`` says."""
    if isinstance(G, Int8ResnetGenerator):
        precision, device = "int8", "cpu"
    if device is None:
        device = next(G.parameters()).device
    was_training = G.training
    G.eval()
    try:
        out = [to_uint8_images(translate(G, to_model_input(images[i : i + batch_size]).to(device, non_blocking=True),
                                         precision=precision, channels_last=channels_last, tile=tile, overlap=overlap))
               for i in range(0, len(images), batch_size)]
    finally:
        G.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, *images.shape[1:]), dtype=np.uint8)


def _ramp(n: int, left: int, right: int, device: torch.device) -> torch.Tensor:
    """1D blending weights of length n: rising over ``left`` samples, falling over
    ``right``; strictly positive so every pixel has weight."""
    wgt = torch.ones(n, device=device)
    if left:
        wgt[:left] = torch.linspace(1.0 / (left + 1), 1.0, left + 2, device=device)[1:-1]
    if right:
        wgt[n - right :] = torch.linspace(1.0, 1.0 / (right + 1), right + 2, device=device)[1:-1]
    return wgt


def _starts(size: int, tile: int, step: int) -> list[int]:
    starts = list(range(0, max(size - tile, 0) + 1, step))
    if starts[-1] + tile < size:
        starts.append(size - tile)  # the last tile ends at the border
    return starts


def _tiled(G: nn.Module, x: torch.Tensor, *, precision: str, channels_last: bool, tile: int, overlap: int) -> torch.Tensor:
    if tile % SIZE_MULTIPLE or not 0 <= overlap < tile // 2:
        raise ValueError(f"tile must be a multiple of {SIZE_MULTIPLE} and overlap in [0, tile/2), got {tile}, {overlap}")
    b, _, h, w = x.shape
    th, tw = min(tile, h), min(tile, w)
    out = torch.zeros(b, 3, h, w, device=x.device)
    norm = torch.zeros(1, 1, h, w, device=x.device)
    ys, xs = _starts(h, th, th - overlap), _starts(w, tw, tw - overlap)
    for i, y0 in enumerate(ys):
        for j, x0 in enumerate(xs):
            piece = translate(G, x[..., y0 : y0 + th, x0 : x0 + tw], precision=precision, channels_last=channels_last)
            # Ramp only where a neighbour tile overlaps (the actual overlap, which is
            # larger for a last tile pulled back to the border).
            up = (ys[i - 1] + th - y0) if i else 0
            down = (y0 + th - ys[i + 1]) if i + 1 < len(ys) else 0
            left = (xs[j - 1] + tw - x0) if j else 0
            right = (x0 + tw - xs[j + 1]) if j + 1 < len(xs) else 0
            wgt = _ramp(th, up, down, x.device)[:, None] * _ramp(tw, left, right, x.device)[None, :]
            out[..., y0 : y0 + th, x0 : x0 + tw] += piece * wgt
            norm[..., y0 : y0 + th, x0 : x0 + tw] += wgt
    return out / norm
