"""Batch translation on Ray Data: files in, translated files out, one row per input.

    input files (minus those already done) -> from_items(path, out)
    -> read_and_decode      CPU tasks: bytes stay on the node that read them
    -> GeneratorStage       actor pool (autoscaling min..max): G only, at full resolution
    -> encode_and_write     CPU tasks: PNG/JPEG/WebP, atomic write
    -> rows {input, output, height, width, status, error} + G's busy time
    -> the driver appends them to the manifest as they stream in

On a GPU node the CPU stages run on the host's cores while G runs on the GPU, so the
accelerator is not kept waiting on decode and PNG work. ``TranslateFiles`` fuses the
three in one actor (the single-actor job, and the path of a machine without Ray).

Outputs mirror their inputs' paths below a root, with the same stem. A write goes to
a temporary name in the target folder and is renamed into place, so an output file
either exists whole or not at all, whatever kills the job.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cut_core import load_generator
from cut_core.errors import RaycutError
from cut_core.hardware import resolve_translation
from cut_core.images import to_model_input
from cut_core.quantize import Int8ResnetGenerator, calibrate_int8
from cut_core.translate import translate_uint8
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


OUTPUT_FORMATS = ("png", "jpg", "webp")
ROW_COLUMNS = ("input", "output", "height", "width", "status", "error")  # what the write stage returns
BUSY_COLUMNS = ("actor", "busy_s", "wall_s")  # the G stage's running totals, for model_busy


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
    if fmt == "jpg":
        Image.fromarray(image).save(tmp, format="JPEG", quality=quality)
    elif fmt == "webp":
        Image.fromarray(image).save(tmp, format="WEBP", lossless=True, method=0)  # method 0: the fastest lossless
    else:
        Image.fromarray(image).save(tmp, format="PNG", compress_level=png_level)
    os.replace(tmp, target)


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:300]


def _objects(values: list[Any]) -> np.ndarray:
    """A 1-D object array of ``values`` (np.array would stack equal-shaped images)."""
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


# ---- the three stages ---------------------------------------------------------------
#   read + decode (CPU tasks) -> G (actor pool, GPU or CPU) -> encode + write (CPU tasks)
# A failed row carries its error through the later stages with a 1x1 placeholder image.

_PLACEHOLDER = np.zeros((1, 1, 3), dtype=np.uint8)


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
        return _PLACEHOLDER, _first_line(e)


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
    return {"path": batch["path"], "out": batch["out"], "image": _objects(images), "error": _objects(errors)}


class GeneratorStage:
    """Stage 2, a Ray Data actor: G and nothing else, so an accelerator is never kept
    waiting on PNG work. In: ``path``, ``out``, ``image``, ``error``. Out: the same, the
    image translated (same size), plus this actor's running totals ``actor``, ``busy_s``
    (seconds inside G) and ``wall_s`` (seconds since it was ready): model_busy.

    G is loaded once per actor (for int8, quantized with the spec's ranges); ``auto``
    is settled here, for this actor's own device."""

    def __init__(self, spec: dict[str, Any], device: str = "cpu", threads: int = 1) -> None:
        # Ray sets OMP_NUM_THREADS to the actor's CPU count; say it to torch as well.
        torch.set_num_threads(max(1, threads))
        self.spec = TranslateSpec(**spec)
        self.device = torch.device("cuda" if device == "cuda" and torch.cuda.is_available() else "cpu")
        G = load_generator(self.spec.model_dir, device=self.device)
        self.paths = resolve_translation(self.spec.precision, self.spec.channels_last, self.device,
                                         int8_ok=self.spec.int8_ranges is not None)
        if self.paths.precision == "int8":
            # Every actor builds the same int8 network from the ranges the driver measured
            # (with the activation range its own CPU's kernels need).
            G = Int8ResnetGenerator(G, self.spec.int8_ranges or {})
        elif self.paths.channels_last:
            G.to(memory_format=torch.channels_last)
        self.G = G
        self.actor = f"{os.uname().nodename}:{os.getpid()}"
        self.busy = 0.0
        self.ready = time.perf_counter()

    def translate_one(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (H, W, 3) uint8 at full resolution; the time counts as busy."""
        t0 = time.perf_counter()
        out = translate_uint8(self.G, image[None], precision=self.paths.precision, channels_last=self.paths.channels_last,
                              tile=self.spec.tile, overlap=self.spec.overlap, device=self.device)[0]
        self.busy += time.perf_counter() - t0  # the result is on the host: the device's time is in
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images, errors = list(batch["image"]), [str(e) for e in batch["error"]]
        for i, image in enumerate(images):
            if errors[i]:
                continue
            try:
                images[i] = self.translate_one(np.asarray(image))
            except Exception as e:  # noqa: BLE001 - e.g. out of memory on one huge frame
                images[i], errors[i] = _PLACEHOLDER, _first_line(e)
        n = len(images)
        wall = time.perf_counter() - self.ready
        return {"path": batch["path"], "out": batch["out"], "image": _objects(images), "error": _objects(errors),
                "actor": _objects([self.actor] * n), "busy_s": np.full(n, self.busy), "wall_s": np.full(n, wall)}


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
                error = f"write failed: {_first_line(e)}"
        for k, v in zip(ROW_COLUMNS, (path, s.output_path(str(batch["out"][i])), h, w,
                                      "failed" if error else "done", error)):
            rows[k].append(v)
    out = {k: np.array(v, dtype=np.int32 if k in ("height", "width") else object) for k, v in rows.items()}
    for k in BUSY_COLUMNS:
        if k in batch:
            out[k] = batch[k]
    return out


class TranslateFiles:
    """The three stages fused in one actor (the single-actor job): read, decode, G,
    and the encode + write in a small thread pool, so the next image is translated
    while the previous one is saved. For a machine without Ray (the actor-level
    benchmark) and as the staged job's baseline. Input and output columns as
    ``read_and_decode``'s input and ``encode_and_write``'s output."""

    def __init__(self, spec: dict[str, Any], device: str = "cpu", threads: int = 1, filesystem: Any = None) -> None:
        self.model = GeneratorStage(spec, device=device, threads=threads)
        self.spec = self.model.spec
        self.fs = filesystem
        self.writers = ThreadPoolExecutor(max_workers=2)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows: dict[str, list[Any]] = {k: [] for k in ROW_COLUMNS}
        pending = []
        encoded = batch.get("bytes")
        for i, path in enumerate(map(str, batch["path"])):
            out = self.spec.output_path(str(batch["out"][i]))
            image, error = decode_one(path, encoded, i, max_pixels=self.spec.max_pixels, fs=self.fs)
            h = w = 0
            if not error:
                h, w = image.shape[:2]
                try:
                    fake = self.model.translate_one(image)
                    pending.append((len(rows["input"]), self.writers.submit(write_one, self.spec, fake, str(batch["out"][i]))))
                except Exception as e:  # noqa: BLE001
                    error = _first_line(e)
            for k, v in zip(ROW_COLUMNS, (path, out, h, w, "failed" if error else "done", error)):
                rows[k].append(v)
        for i, fut in pending:  # a failed write fails its row, not the batch
            try:
                fut.result()
            except Exception as e:  # noqa: BLE001
                rows["status"][i], rows["error"][i] = "failed", f"write failed: {_first_line(e)}"
        out = {k: np.array(v, dtype=np.int32 if k in ("height", "width") else object) for k, v in rows.items()}
        n = len(rows["input"])
        out.update(actor=_objects([self.model.actor] * n), busy_s=np.full(n, self.model.busy),
                   wall_s=np.full(n, time.perf_counter() - self.model.ready))
        return out


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


def append_manifest(out_root: str | Path, rows: list[dict[str, Any]], index: int, *, run: int,
                    metadata: dict[str, str] | None = None) -> Path:
    """Write one manifest part atomically (temporary name, then rename), named so that
    parts sort in write order across runs: ``part-RUN-INDEX-PID.parquet``. ``metadata``
    goes into the part's key-value metadata (the job's model_busy so far)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(out_root) / MANIFEST_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"part-{run:06d}-{index:06d}-{os.getpid():010d}.parquet"
    tmp = path.with_name(path.name + TMP_SUFFIX)
    schema = manifest_schema().with_metadata({f"raycut.{k}": v for k, v in (metadata or {}).items()})
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
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
