"""In-process image folders and unpaired batches, for single-process work (the
quickstart, tests, benchmarks). The Ray Data ingest streams the same rows at scale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from cut_core.config import DataConfig
from cut_core.errors import RaycutError
from pipelines.augment import augment
from pipelines.decode import decode_image
from pipelines.sources import Source, list_source_files


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted; a clear error if none."""
    _, files = list_source_files(Source("dir", str(folder)))
    return [Path(f) for f in files]


def read_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB through the same robust decoder as the Ray Data ingest."""
    result = decode_image(Path(path).read_bytes())
    if result.image is None:
        raise RaycutError(f"cannot decode image {path}: {result.reason}")
    return result.image


def load_folder(folder: str | Path) -> list[np.ndarray]:
    """Decode every image of a small folder into memory (toy data, tests)."""
    return [read_rgb(p) for p in list_images(folder)]


def unpaired_array_batches(
    images_a: list[np.ndarray],
    images_b: list[np.ndarray],
    data: DataConfig,
    batch_size: int,
    rng: np.random.Generator,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless (B, crop, crop, 3) uint8 pairs; A and B are shuffled independently each
    epoch, and an epoch is max(|A|, |B|) images as in the official loader."""
    n = max(len(images_a), len(images_b))
    while True:
        order_a = np.concatenate([rng.permutation(len(images_a)) for _ in range(n // len(images_a) + 1)])[:n]
        order_b = np.concatenate([rng.permutation(len(images_b)) for _ in range(n // len(images_b) + 1)])[:n]
        for start in range(0, n - batch_size + 1, batch_size):
            a = [augment(images_a[i], data, rng) for i in order_a[start : start + batch_size]]
            b = [augment(images_b[i], data, rng) for i in order_b[start : start + batch_size]]
            yield np.stack(a), np.stack(b)
