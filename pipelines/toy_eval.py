"""Score translations of the toy dataset against its paired truth, with the two
baselines that any translation must beat: identity and histogram matching."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from pipelines.local_images import list_images, read_rgb
from pipelines.toy_data import per_class_colour_error

Translate = Callable[[np.ndarray], np.ndarray]  # (N, H, W, 3) uint8 -> same


def channel_cdfs(images: Sequence[np.ndarray]) -> np.ndarray:
    """Pooled per-channel CDFs of uint8 RGB images: (3, 256)."""
    out = np.empty((3, 256))
    for c in range(3):
        hist = sum(np.bincount(im[..., c].ravel(), minlength=256) for im in images)
        out[c] = np.cumsum(hist) / np.sum(hist)
    return out


def histogram_match(img: np.ndarray, reference_cdfs: np.ndarray) -> np.ndarray:
    """Map each channel of (H, W, 3) uint8 so its histogram follows ``reference_cdfs``."""
    out = np.empty_like(img)
    for c in range(3):
        src_cdf = np.cumsum(np.bincount(img[..., c].ravel(), minlength=256)) / img[..., c].size
        lut = np.searchsorted(reference_cdfs[c], src_cdf).clip(0, 255).astype(np.uint8)
        out[..., c] = lut[img[..., c]]
    return out


def load_toy_test(root: str | Path) -> tuple[list[Path], np.ndarray, np.ndarray, np.ndarray]:
    """(paths, testA (N,H,W,3), testB truth (N,H,W,3), labels (N,H,W)) of a toy dataset."""
    root = Path(root)
    paths = list_images(root / "testA")
    a = np.stack([read_rgb(p) for p in paths])
    b = np.stack([read_rgb(root / "testB" / p.name) for p in paths])
    # Labels are single-channel class ids: read them as they are, not through read_rgb.
    labels = np.stack([np.asarray(Image.open(root / "labels" / "testA" / p.name)) for p in paths])
    return paths, a, b, labels


def score(preds: np.ndarray, truth: np.ndarray, labels: np.ndarray) -> float:
    """Mean per-class colour error over a set of images (grey levels; lower is better)."""
    return float(np.mean([per_class_colour_error(p, t, l) for p, t, l in zip(preds, truth, labels)]))


def evaluate_toy(root: str | Path, translations: dict[str, Translate]) -> dict[str, float]:
    """Per-class colour error of each named translation and of the baselines."""
    _, a, b, labels = load_toy_test(root)
    ref = channel_cdfs([read_rgb(p) for p in list_images(Path(root) / "trainB")])
    results = {
        "baseline/identity": score(a, b, labels),
        "baseline/histogram": score(np.stack([histogram_match(x, ref) for x in a]), b, labels),
    }
    for name, fn in translations.items():
        results[name] = score(fn(a), b, labels)
    return results
