"""Batch translation on Ray Data: files in, translated files out, one row per input.

    input files (minus those already done) -> from_items(path) ->
    TranslateFiles actor pool (G loaded once per actor: read, decode, translate at
    full resolution, write atomically) -> rows {input, output, height, width, status,
    error} -> the driver appends them to the manifest as they stream in

Outputs mirror their inputs' paths below a root, with the same stem. A write goes to
a temporary name in the target folder and is renamed into place, so an output file
either exists whole or not at all, whatever kills the job.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cut_core import load_generator
from cut_core.errors import RaycutError
from cut_core.hardware import resolve_translation
from cut_core.images import to_model_input, to_uint8_images
from cut_core.quantize import Int8ResnetGenerator, calibrate_int8
from cut_core.translate import translate
from pipelines.decode import DEFAULT_MAX_PIXELS, decode_image

TMP_SUFFIX = ".raycut-tmp"
MANIFEST_DIR = "manifest"  # Parquet parts, one per flush: <output>/manifest/part-*.parquet
MANIFEST_COLUMNS = (("input", "string"), ("output", "string"), ("height", "int32"), ("width", "int32"),
                    ("status", "string"), ("error", "string"), ("model_uri", "string"), ("model_version", "string"))


def manifest_schema():
    # pyarrow is imported here, not at module level: the translation UDF itself runs
    # (and is timed) on machines that have only torch and Pillow.
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, kind)()) for name, kind in MANIFEST_COLUMNS])


@dataclass(frozen=True)
class TranslateSpec:
    """What every actor needs; plain data, sent once per actor."""

    model_dir: str
    out_root: str
    fmt: str = "png"  # png | jpg
    precision: str = "auto"  # auto | fp32 | bf16 | int8; auto is settled in each actor, on its device
    channels_last: bool | str = "auto"
    tile: int = 0
    overlap: int = 32
    jpeg_quality: int = 95
    max_pixels: int = DEFAULT_MAX_PIXELS
    int8_ranges: dict[str, list[float]] | None = None  # precision int8: calibrate_int8's ranges


def write_atomic(image: np.ndarray, path: str, *, fmt: str, quality: int = 95) -> None:
    """Save (H, W, 3) uint8 to ``path`` via a temporary file and a rename."""
    from PIL import Image

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}{TMP_SUFFIX}")
    kwargs = {"quality": quality} if fmt == "jpg" else {"compress_level": 1}
    Image.fromarray(image).save(tmp, format="JPEG" if fmt == "jpg" else "PNG", **kwargs)
    os.replace(tmp, target)


class TranslateFiles:
    """Ray Data UDF. Input columns: ``path`` (str: the input's id), ``out`` (str: the
    output path below ``out_root``, without extension; pipelines.translate_inputs
    names them) and optionally ``bytes`` (the encoded image, for Parquet rows; without
    it the UDF reads ``path``, through ``filesystem`` when given). Output
    columns: ``input``, ``output`` (str), ``height``, ``width`` (int32), ``status``
    ("done" | "failed"), ``error`` (str).

    G is loaded once per actor (for precision int8, quantized with the spec's ranges).
    Encoding and writing run in a small thread pool, so the next image is translated
    while the previous one is saved."""

    def __init__(self, spec: dict[str, Any], device: str = "cpu", threads: int = 1, filesystem: Any = None) -> None:
        # Ray sets OMP_NUM_THREADS to the actor's CPU count; say it to torch as well.
        torch.set_num_threads(max(1, threads))
        self.spec = TranslateSpec(**spec)
        self.fs = filesystem
        self.device = torch.device("cuda" if device == "cuda" and torch.cuda.is_available() else "cpu")
        self.G = load_generator(self.spec.model_dir, device=self.device)
        # auto: the fastest path of this actor's own device (the driver's may differ).
        self.paths = resolve_translation(self.spec.precision, self.spec.channels_last, self.device,
                                         int8_ok=self.spec.int8_ranges is not None)
        if self.paths.precision == "int8":
            # Every actor builds the same int8 network from the ranges the driver measured
            # (with the activation range its own CPU's kernels need).
            self.G = Int8ResnetGenerator(self.G, self.spec.int8_ranges or {})
        elif self.paths.channels_last:
            self.G.to(memory_format=torch.channels_last)
        self.writers = ThreadPoolExecutor(max_workers=2)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows: dict[str, list[Any]] = {k: [] for k in ("input", "output", "height", "width", "status", "error")}
        pending = []
        encoded = batch.get("bytes")
        for i, path in enumerate(map(str, batch["path"])):
            out = str(Path(self.spec.out_root) / f"{batch['out'][i]}.{self.spec.fmt}")
            h = w = 0
            try:
                data = self._read(path) if encoded is None else encoded[i]
                if data is None:
                    raise ValueError("empty row: no image bytes")
                decoded = decode_image(bytes(data), max_pixels=self.spec.max_pixels)
                if decoded.image is None:
                    raise ValueError(decoded.reason)
                h, w = decoded.image.shape[:2]
                x = to_model_input(decoded.image[None]).to(self.device)
                y = translate(self.G, x, precision=self.paths.precision, channels_last=self.paths.channels_last,
                              tile=self.spec.tile, overlap=self.spec.overlap)
                image = to_uint8_images(y)[0]
                pending.append((len(rows["input"]), self.writers.submit(
                    write_atomic, image, out, fmt=self.spec.fmt, quality=self.spec.jpeg_quality)))
                status, error = "done", ""
            except Exception as e:  # noqa: BLE001 - one bad input must not stop the job
                status, error = "failed", (str(e).splitlines() or [type(e).__name__])[0][:300]
            for k, v in zip(rows, (path, out, h, w, status, error)):
                rows[k].append(v)
        for i, fut in pending:  # a failed write fails its row, not the batch
            try:
                fut.result()
            except Exception as e:  # noqa: BLE001
                rows["status"][i], rows["error"][i] = "failed", f"write failed: {str(e).splitlines()[0][:300]}"
        return {k: np.array(v, dtype=np.int32 if k in ("height", "width") else object) for k, v in rows.items()}

    def _read(self, path: str) -> bytes:
        if self.fs is None:
            with open(path, "rb") as f:
                return f.read()
        # Imported here: pipelines.sources needs pyarrow, which a bare GPU box timing
        # this UDF (pipelines.translate_speed) does not have.
        from pipelines.sources import read_bytes

        return read_bytes(path, self.fs)


def calibrate_from_bytes(model_dir: str, head: list[tuple[str, bytes | None]], n: int, *,
                        max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[dict[str, list[float]], list[str]]:
    """int8 ranges of a model directory's G over the first ``n`` images of ``head``
    ((id, encoded bytes) pairs) that decode, at their full size. Returns (ranges, the
    ids used)."""
    images, used = [], []
    for input_id, data in head:
        decoded = decode_image(bytes(data), max_pixels=max_pixels) if data else None
        if decoded is not None and decoded.image is not None:
            images.append(to_model_input(decoded.image[None]))
            used.append(input_id)
        if len(used) == n:
            break
    if not images:
        raise RaycutError(f"int8 calibration found no readable image among the first {len(head)} inputs; "
                          "check the input or use --precision bf16")
    return calibrate_int8(load_generator(model_dir), images), used


# ---- manifest ----------------------------------------------------------------------


def _part_order(path: Path) -> tuple[int, int, int]:
    """Write order of a manifest part: ``part-RUN-INDEX-PID`` (zero-padded run id that
    grows with every run, then the part index). Parts of the older naming,
    ``part-INDEX-PID``, come first, as run 0."""
    fields = path.name.removesuffix(".parquet").split("-")[1:]
    try:
        numbers = [int(f) for f in fields]
    except ValueError:
        return (0, 0, 0)
    if len(numbers) == 3:
        return (numbers[0], numbers[1], numbers[2])
    return (0, numbers[0], numbers[1] if len(numbers) > 1 else 0)


def manifest_parts(out_root: str | Path) -> list[Path]:
    """The manifest's parts in write order over every run (rows of a killed run count)."""
    folder = Path(out_root) / MANIFEST_DIR
    return sorted(folder.glob("part-*.parquet"), key=_part_order) if folder.is_dir() else []


def read_manifest(out_root: str | Path, columns: list[str] | None = None):
    """Every row written so far (all parts, in write order) as a pyarrow Table; empty
    when there is none."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = manifest_schema()
    if columns:
        schema = pa.schema([schema.field(c) for c in columns])
    parts = manifest_parts(out_root)
    if not parts:
        return schema.empty_table()
    return pa.concat_tables([pq.read_table(p, schema=schema, columns=columns) for p in parts])


def latest_rows(out_root: str | Path, columns: list[str]):
    """The last row of each input over every run (the manifest's truth), computed in
    Arrow: a million rows take about a second, not a Python loop over dicts."""
    import numpy as np
    import pyarrow as pa

    table = read_manifest(out_root, columns=sorted(set(columns) | {"input"}))
    table = table.append_column("_row", pa.array(np.arange(len(table), dtype=np.int64)))
    last = table.group_by("input").aggregate([("_row", "max")])
    return table.take(last["_row_max"]).drop_columns(["_row"])


def done_inputs(out_root: str | Path) -> set[str]:
    """Inputs whose latest manifest row is "done" and whose output file exists."""
    import pyarrow.compute as pc

    latest = latest_rows(out_root, ["output", "status"])
    done = latest.filter(pc.equal(latest["status"], "done"))
    return {i for i, o in zip(done["input"].to_pylist(), done["output"].to_pylist()) if os.path.isfile(o)}


def new_manifest_run(out_root: str | Path) -> int:
    """Claim the next run id of an output folder (1 + the highest seen), atomically:
    two runs started at once never share one."""
    folder = Path(out_root) / MANIFEST_DIR
    folder.mkdir(parents=True, exist_ok=True)
    seen = [_part_order(p)[0] for p in folder.glob("part-*.parquet")]
    seen += [int(p.name.split("-")[1]) for p in folder.glob("run-*.claim") if p.name.split("-")[1].isdigit()]
    run = max(seen, default=0) + 1
    while True:
        try:
            os.close(os.open(folder / f"run-{run:06d}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return run
        except FileExistsError:
            run += 1


def append_manifest(out_root: str | Path, rows: list[dict[str, Any]], index: int, *, run: int) -> Path:
    """Write one manifest part atomically (temporary name, then rename), named so that
    parts sort in write order across runs: ``part-RUN-INDEX-PID.parquet``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(out_root) / MANIFEST_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"part-{run:06d}-{index:06d}-{os.getpid():010d}.parquet"
    tmp = path.with_name(path.name + TMP_SUFFIX)
    pq.write_table(pa.Table.from_pylist(rows, schema=manifest_schema()), tmp)
    os.replace(tmp, path)
    return path


def remove_partial_files(out_root: str | Path) -> int:
    """Delete the temporary files a killed run left behind; returns how many."""
    count = 0
    for p in Path(out_root).rglob(f"*{TMP_SUFFIX}"):
        p.unlink(missing_ok=True)
        count += 1
    return count


def copy_labels(label_files: list[str], mirror_root: str, out_root: str, *, link: bool = False) -> int:
    """Copy (or hard-link) label files into the output tree, mirrored like the images."""
    n = 0
    for f in label_files:
        target = Path(out_root) / os.path.relpath(f, mirror_root)
        if target.is_file():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}{TMP_SUFFIX}")
        if link:
            try:
                os.link(f, tmp)
            except OSError:
                shutil.copyfile(f, tmp)
        else:
            shutil.copyfile(f, tmp)
        os.replace(tmp, target)
        n += 1
    return n
