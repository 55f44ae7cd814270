"""The CPU stages of a translation job: read + decode, and encode + atomic write.

    read_and_decode    a Ray Data task: path (or Parquet bytes) -> (H, W, 3) uint8
    encode_and_write   a Ray Data task: translated image -> PNG/JPEG/WebP file -> manifest row

No torch here (nor pyarrow at import): Ray Data runs these on the CPU task workers of
every node, which then never load torch (about 2.5 s of CPU and 300 MB per worker
process), and jobs.bench.translate_speed times them on a machine with only torch and
Pillow. The model stage is pipelines.translate.

A failed row carries its error through the later stages with a 1x1 placeholder image.
A write goes to a temporary name in the target folder and is renamed into place, so an
output file either exists whole or not at all, whatever kills the job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.decode import DEFAULT_MAX_PIXELS, decode_image

TMP_SUFFIX = ".raycut-tmp"
OUTPUT_FORMATS = ("png", "jpg", "webp")
ROW_COLUMNS = ("input", "output", "height", "width", "status", "error")  # what the write stage returns
# What the G stage adds to each row and the write stage passes on: its running totals
# (for model_busy) and what G ran in (the manifest's fast_path).
G_COLUMNS = ("actor", "busy_s", "wall_s", "fast_path")


@dataclass(frozen=True)
class TranslateSpec:
    """What every stage needs; plain data, sent once per actor or task."""

    model_dir: str
    out_root: str
    fmt: str = "png"  # png (lossless) | jpg | webp (lossless)
    precision: str = "auto"  # auto | fp32 | bf16 | int8; auto is settled in each actor, on its device
    channels_last: bool | str = "auto"
    tile: int = 0
    overlap: int = 32
    jpeg_quality: int = 95
    # zlib level of PNG: PIL's default (6) costs more than G on a big frame; 1 is several
    # times faster for files about a quarter larger, and just as lossless.
    png_level: int = 1
    max_pixels: int = DEFAULT_MAX_PIXELS
    int8_ranges: dict[str, list[float]] | None = None  # precision int8: calibrate_int8's ranges

    def output_path(self, out: str) -> str:
        return str(Path(self.out_root) / f"{out}.{self.fmt}")


def write_atomic(image: np.ndarray, path: str, *, fmt: str, quality: int = 95, png_level: int = 1) -> None:
    """Save (H, W, 3) uint8 to ``path`` via a temporary file and a rename."""
    from PIL import Image

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        if fmt == "jpg":
            Image.fromarray(image).save(tmp, format="JPEG", quality=quality)
        elif fmt == "webp":
            Image.fromarray(image).save(tmp, format="WEBP", lossless=True, method=0)  # method 0: the fastest lossless
        else:
            Image.fromarray(image).save(tmp, format="PNG", compress_level=png_level)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a write cut short (a full disk) gives back its space at once
        raise
    os.replace(tmp, target)


def first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:300]


def object_array(values: list[Any]) -> np.ndarray:
    """A 1-D object array of ``values`` (np.array would stack equal-shaped images)."""
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


PLACEHOLDER = np.zeros((1, 1, 3), dtype=np.uint8)


def _read(path: str, fs: Any) -> bytes:
    if fs is None:
        with open(path, "rb") as f:
            return f.read()
    # Imported here: pipelines.sources needs pyarrow, which a bare GPU box timing
    # the UDFs (jobs.bench.translate_speed) does not have.
    from pipelines.sources import read_bytes

    return read_bytes(path, fs)


def decode_one(path: str, encoded: Any, i: int, *, max_pixels: int, fs: Any = None) -> tuple[np.ndarray, str]:
    """Row ``i``'s image as (H, W, 3) uint8 and "" — or the placeholder and why it failed.
    ``encoded``: the batch's ``bytes`` column (Parquet rows), or None to read ``path``
    (through ``fs`` when given)."""
    try:
        data = _read(path, fs) if encoded is None else encoded[i]
        if data is None:
            raise ValueError("empty row: no image bytes")
        decoded = decode_image(bytes(data), max_pixels=max_pixels)
        if decoded.image is None:
            raise ValueError(decoded.reason)
        return decoded.image, ""
    except Exception as e:  # noqa: BLE001 - one bad input must not stop the job
        return PLACEHOLDER, first_line(e)


def read_and_decode(batch: dict[str, np.ndarray], *, max_pixels: int = DEFAULT_MAX_PIXELS,
                    filesystem: Any = None) -> dict[str, np.ndarray]:
    """Stage 1, a Ray Data task on a CPU. In: ``path``, ``out`` and optionally ``bytes``
    (Parquet rows; else the file at ``path`` is read, through ``filesystem`` when given).
    Out: ``path``, ``out``, ``image`` ((H, W, 3) uint8 of any size) and ``error`` ("" or
    why the input is unusable). The bytes stay on the node that read them."""
    encoded = batch.get("bytes")
    images, errors = [], []
    for i, path in enumerate(map(str, batch["path"])):
        image, error = decode_one(path, encoded, i, max_pixels=max_pixels, fs=filesystem)
        images.append(image)
        errors.append(error)
    return {"path": batch["path"], "out": batch["out"], "image": object_array(images), "error": object_array(errors)}


def write_one(spec: TranslateSpec, image: np.ndarray, out: str) -> None:
    write_atomic(image, spec.output_path(out), fmt=spec.fmt, quality=spec.jpeg_quality, png_level=spec.png_level)


def encode_and_write(batch: dict[str, np.ndarray], *, spec: dict[str, Any]) -> dict[str, np.ndarray]:
    """Stage 3, a Ray Data task on a CPU: encode each translation and write it
    atomically. In: stage 2's columns. Out: manifest rows ``input``, ``output``,
    ``height``, ``width``, ``status``, ``error`` and the busy totals: no pixels travel
    on to the driver."""
    s = TranslateSpec(**spec)
    rows: dict[str, list[Any]] = {k: [] for k in ROW_COLUMNS}
    for i, path in enumerate(map(str, batch["path"])):
        error, image = str(batch["error"][i]), np.asarray(batch["image"][i])
        h, w = (0, 0) if error else image.shape[:2]
        if not error:
            try:
                write_one(s, image, str(batch["out"][i]))
            except Exception as e:  # noqa: BLE001 - a failed write fails its row, not the batch
                error = f"write failed: {first_line(e)}"
        for k, v in zip(ROW_COLUMNS, (path, s.output_path(str(batch["out"][i])), h, w,
                                      "failed" if error else "done", error)):
            rows[k].append(v)
    out = {k: np.array(v, dtype=np.int32 if k in ("height", "width") else object) for k, v in rows.items()}
    for k in G_COLUMNS:
        if k in batch:
            out[k] = batch[k]
    return out
