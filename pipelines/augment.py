"""Training-time preprocessing as the official ``--preprocess`` options, on uint8 arrays.

Pure functions of (image, config, rng): the same code runs in a Ray Data
``map_batches`` UDF and in the in-process loader. Crops stay uint8 until the
worker turns them into float [-1, 1] (``to_model_input``), which keeps the data
that travels between processes four times smaller.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from cut_core.config import DataConfig


def _round4(x: float) -> int:
    # G downsamples twice; sizes that are multiples of 4 come back at the same size.
    return max(4, int(round(x / 4)) * 4)


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    if img.shape[1] == w and img.shape[0] == h:
        return img
    return np.asarray(Image.fromarray(img).resize((w, h), Image.BICUBIC))


def will_upscale(shape: tuple[int, ...], data: DataConfig) -> bool:
    """Whether an image of ``shape`` (H, W, ...) is smaller than the crop after the
    preset's resize, so that ``augment`` must upscale it (said in the ingest report)."""
    h, w = shape[:2]
    c = data.crop_size
    if data.preprocess == "crop":
        return h < c or w < c
    if data.preprocess == "scale_width_and_crop":
        return h * data.load_size / w < c
    return False  # resize_and_crop resizes to load_size >= crop; none keeps the size


def augment(img: np.ndarray, data: DataConfig, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 -> (crop, crop, 3) uint8 for the crop presets, or the whole image
    rounded to multiples of 4 for ``none``. Random crop position and horizontal flip."""
    h, w = img.shape[:2]
    c = data.crop_size
    if data.preprocess == "resize_and_crop":
        img = _resize(img, data.load_size, data.load_size)
    elif data.preprocess == "scale_width_and_crop":
        # Keep the aspect ratio; the short side must still hold a crop.
        nw = data.load_size
        nh = max(c, _round4(h * nw / w))
        img = _resize(img, nw, nh)
    elif data.preprocess == "none":
        img = _resize(img, _round4(w), _round4(h))
    if data.preprocess != "none":
        hh, ww = img.shape[:2]
        if hh < c or ww < c:  # smaller than the crop: upscale the short side to it
            s = c / min(hh, ww)
            img = _resize(img, max(c, _round4(ww * s)), max(c, _round4(hh * s)))
            hh, ww = img.shape[:2]
        y = int(rng.integers(0, hh - c + 1))
        x = int(rng.integers(0, ww - c + 1))
        img = img[y : y + c, x : x + c]
    if not data.no_flip and rng.random() < 0.5:
        img = img[:, ::-1]
    return np.ascontiguousarray(img)
