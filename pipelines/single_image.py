"""SinCUT's data: whole minibatches of crops cut from one image per domain.

Two recipes (``DataConfig.preprocess``):

``zoom_and_patch`` (the official SinCUT loader)
    Scale the image by (sx, sy), each drawn from U(1/random_scale_max, 1) once per
    minibatch, then take ``batch`` crops of ``crop_size`` from distinct cells of a
    crop-sized grid (slid by a random offset) and flip each at random.
    Distinct cells matter: with ``nce_includes_all_negatives_from_minibatch`` the
    other crops are the negatives, and a crop of the same place would be a false one.

``random_width_and_patch`` (the paper's appendix recipe, preset ``sincut-paper``)
    Scale the image to a width drawn from U[random_width_min, load_size] (aspect kept)
    once per minibatch, then take ``batch`` crops at distinct places the same way.

When the scaled image holds fewer grid cells than the batch, crops are drawn at
distinct top-left corners instead (they may overlap, but never coincide).

The Ray Data side (:func:`read_single_image`) decodes the image once per actor and
emits one row per training step holding the whole (batch, crop, crop, 3) minibatch,
so that a step's crops share their scale whatever the streaming split does.
An epoch is 100,000 crops, as in the official loader.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from cut_core.config import DataConfig
from cut_core.errors import RaycutError
from pipelines.decode import decode_image
from pipelines.sources import list_source_files, parse_source

EPOCH_CROPS = 100_000  # the official SingleImageDataset's length


@dataclass(frozen=True)
class CropBatch:
    """One minibatch and where it came from (the tests and the report read the latter)."""

    images: np.ndarray  # (B, crop, crop, 3) uint8
    scaled_size: tuple[int, int]  # (H', W') of the rescaled image the crops come from
    scale: tuple[float, float]  # (sy, sx) = scaled / original size
    corners: np.ndarray  # (B, 2) top-left (y, x) of each crop in the scaled image
    flipped: np.ndarray  # (B,) bool


def sample_minibatch(image: np.ndarray, data: DataConfig, batch: int, rng: np.random.Generator) -> CropBatch:
    """(H, W, 3) uint8 -> ``batch`` crops of ``data.crop_size`` by ``data.preprocess``."""
    h, w = image.shape[:2]
    c = data.crop_size
    if data.preprocess == "zoom_and_patch":
        lo = 1.0 / data.random_scale_max
        sx, sy = rng.uniform(lo, 1.0, size=2)
        nw, nh = max(c, round(w * sx)), max(c, round(h * sy))
    elif data.preprocess == "random_width_and_patch":
        nw = int(rng.integers(data.random_width_min, data.load_size + 1))
        nh = max(c, round(h * nw / w))
    else:
        raise ValueError(f"preprocess {data.preprocess!r} is not a single-image recipe")
    scaled = image if (nw, nh) == (w, h) else np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    corners = _distinct_corners(nh, nw, c, batch, rng)
    flipped = (rng.random(batch) < 0.5) if not data.no_flip else np.zeros(batch, bool)
    crops = np.stack([scaled[y : y + c, x : x + c] for y, x in corners])
    crops[flipped] = crops[flipped][:, :, ::-1]
    return CropBatch(np.ascontiguousarray(crops), (nh, nw), (nh / h, nw / w), corners, flipped)


def _distinct_corners(h: int, w: int, c: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) top-left corners of c x c crops inside h x w, no two the same: distinct
    grid cells (non-overlapping) when the grid has n of them, else distinct pixels."""
    rows, cols = h // c, w // c
    if rows * cols >= n:
        cells = rng.choice(rows * cols, size=n, replace=False)
        # The grid slides by one random offset within the slack it leaves. (The official
        # __patch slides each crop on its own, which lets neighbours overlap.)
        off_y = int(rng.integers(0, h - rows * c + 1))
        off_x = int(rng.integers(0, w - cols * c + 1))
        return np.stack([cells // cols * c + off_y, cells % cols * c + off_x], axis=1)
    ny, nx = h - c + 1, w - c + 1
    if ny * nx < n:
        raise RaycutError(f"a {w}x{h} image holds only {ny * nx} distinct {c}px crops, fewer than the batch of {n}; "
                          "lower batch_size or crop_size")
    flat = rng.choice(ny * nx, size=n, replace=False)
    return np.stack([flat // nx, flat % nx], axis=1)


def steps_per_epoch(*, batch_size: int, workers: int = 1) -> int:
    return max(1, EPOCH_CROPS // (batch_size * workers))


def single_image_file(spec: str) -> tuple[Any, str]:
    """The (filesystem, path) of a domain that must be one image; one clear line if not."""
    source = parse_source(spec)
    fs, files = list_source_files(source)
    if len(files) != 1:
        raise RaycutError(f"SinCUT trains on one image per domain, but {spec} holds {len(files)} images; "
                          "pass the image file itself (e.g. --data-a painting.jpg)")
    return fs, files[0]


def load_single_image(spec: str, *, max_pixels: int | None = None) -> np.ndarray:
    """Decode a single-image domain to (H, W, 3) uint8; one clear line if it is unreadable."""
    fs, path = single_image_file(spec)
    try:
        with fs.open_input_file(path) as f:
            data = f.readall()
    except OSError as e:
        raise RaycutError(f"cannot read {path} ({e})") from None
    result = decode_image(data, **({"max_pixels": max_pixels} if max_pixels else {}))
    if result.image is None:
        raise RaycutError(f"{path} is not a usable image ({result.reason}); SinCUT needs one readable image per domain")
    return result.image


def preview(image: np.ndarray, *, width: int = 384) -> np.ndarray:
    """The whole image at ``width`` (aspect kept, sides multiples of 4): (1, H', W', 3),
    the input of a SinCUT run's sample grids."""
    h, w = image.shape[:2]
    nw = min(width, w) // 4 * 4
    nh = max(4, round(h * nw / w / 4) * 4)
    return np.asarray(Image.fromarray(image).resize((nw, nh), Image.BICUBIC))[None]


class SingleImageBatches:
    """Ray Data UDF: each input row (a step number) -> one row holding a whole
    (batch, crop, crop, 3) uint8 minibatch in column ``image``. The image is decoded
    once, when the actor starts."""

    def __init__(self, spec: str, data: dict[str, Any], *, batch: int, seed: int = 0, nice: int = 0) -> None:
        if nice:
            os.nice(nice)
        self.image = load_single_image(spec)
        self.data = DataConfig(**data)
        self.batch = batch
        self.rng = np.random.default_rng([seed, os.getpid(), id(self)])

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(rows["id"])
        return {"image": np.stack([sample_minibatch(self.image, self.data, self.batch, self.rng).images for _ in range(n)])}


def read_single_image(spec: str, data: DataConfig, *, batch: int, steps_per_pass: int = 256, seed: int = 0,
                      concurrency: int | tuple[int, int] = 1, num_cpus: float = 1.0, nice: int = 0) -> Any:
    """A lazy Dataset of ``steps_per_pass`` rows, each a whole minibatch (see the module
    docstring); the trainer starts a new pass when one runs out."""
    import ray

    from pipelines.ingest import actor_pool

    single_image_file(spec)  # one clear line now rather than in an actor later
    # from_items: the rows exist on the driver, so no read task competes with the actors
    # for CPUs (a range() read can starve behind them and hang the pass).
    steps = ray.data.from_items([{"id": i} for i in range(steps_per_pass)], override_num_blocks=max(1, steps_per_pass // 8))
    return steps.map_batches(
        SingleImageBatches,
        fn_constructor_kwargs={"spec": spec, "data": asdict(data), "batch": batch, "seed": seed, "nice": nice},
        batch_size=1,
        batch_format="numpy",
        compute=actor_pool(concurrency),
        num_cpus=num_cpus,
    )
