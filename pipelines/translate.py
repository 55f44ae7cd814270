"""Batch translation on Ray Data: files in, translated files out, one row per input.

    input files (minus those already done) -> from_items(path, out)
    -> read_and_decode      CPU tasks: bytes stay on the node that read them
    -> GeneratorStage       actor pool (autoscaling min..max): G only, at full resolution
    -> encode_and_write     CPU tasks: PNG/JPEG/WebP, atomic write
    -> rows {input, output, height, width, status, error} + G's busy time
    -> the driver appends them to the manifest as they stream in

On a GPU node the CPU stages (pipelines.translate_io, no torch) run on the host's
cores while G runs on the GPU, so the accelerator is not kept waiting on decode and
PNG work. The manifest is pipelines.manifest. ``TranslateFiles`` fuses the
three in one actor (the single-actor job, and the path of a machine without Ray).

Outputs mirror their inputs' paths below a root, with the same stem. A write goes to
a temporary name in the target folder and is renamed into place, so an output file
either exists whole or not at all, whatever kills the job.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
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
from pipelines.translate_io import (PLACEHOLDER, ROW_COLUMNS, TranslateSpec, first_line, object_array, decode_one,
                                    write_one)


class GeneratorStage:
    """Stage 2, a Ray Data actor: G and nothing else, so an accelerator is never kept
    waiting on PNG work. In: ``path``, ``out``, ``image``, ``error``. Out: the same, the
    image translated (same size), plus this actor's running totals ``actor``, ``busy_s``
    (seconds inside G) and ``wall_s`` (seconds since it was ready): model_busy; and
    ``fast_path``, what G runs in here (``cpu int8``, ``cuda bf16``).

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
        self.fast_path = self.paths.label(self.device)
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
                images[i], errors[i] = PLACEHOLDER, first_line(e)
        n = len(images)
        wall = time.perf_counter() - self.ready
        return {"path": batch["path"], "out": batch["out"], "image": object_array(images), "error": object_array(errors),
                "actor": object_array([self.actor] * n), "busy_s": np.full(n, self.busy), "wall_s": np.full(n, wall),
                "fast_path": object_array([self.fast_path] * n)}


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
                    error = first_line(e)
            for k, v in zip(ROW_COLUMNS, (path, out, h, w, "failed" if error else "done", error)):
                rows[k].append(v)
        for i, fut in pending:  # a failed write fails its row, not the batch
            try:
                fut.result()
            except Exception as e:  # noqa: BLE001
                rows["status"][i], rows["error"][i] = "failed", f"write failed: {first_line(e)}"
        out = {k: np.array(v, dtype=np.int32 if k in ("height", "width") else object) for k, v in rows.items()}
        n = len(rows["input"])
        out.update(actor=object_array([self.model.actor] * n), busy_s=np.full(n, self.model.busy),
                   wall_s=np.full(n, time.perf_counter() - self.model.ready),
                   fast_path=object_array([self.model.fast_path] * n))
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
