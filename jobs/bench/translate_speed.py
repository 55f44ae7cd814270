"""Time translation's work without Ray, on any device: one actor doing every stage
(``TranslateFiles``), the staged job's three stage functions run by thread pools in
one process (decode and encode + write on CPU threads, G alone on the device), and
what each output format costs to encode, against the reference test loop (batch 1,
serial, fp32, PIL save in the main thread). Needs torch and Pillow only, so it also
runs on a GPU box that has no Ray:

    python -m jobs.bench.translate_speed --device cuda --sizes 1024x2048 --staged 14 --out translate_gpu.json

The staged rows answer the question the Ray job's design rests on: with G alone on
the accelerator and the PNG work spread over the host's cores, is G the bottleneck
(``model_busy`` near 1)? Ray Data adds the object store between the stages, so the
Ray job's own figures (``raycut bench translate``) are the ones to quote for it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cut_core import CUTConfig, save_generator
from jobs.bench.device import in_fresh_process
from jobs.bench.records import format_table, machine_info, write_record
from cut_core.images import to_model_input, to_uint8_images
from cut_core.model_dir import load_generator
from cut_core.translate import translate_uint8
from cut_core.networks import build_generator
from pipelines.toy_data import make_layout, render_real
from pipelines.translate import GeneratorStage, TranslateFiles, calibrate_from_bytes
from pipelines.translate_io import TranslateSpec, encode_and_write, read_and_decode, write_atomic


def full_size_model(folder: Path) -> Path:
    """A model directory of the full-size CUT generator (ngf 64, 9 blocks) with random
    weights: its speed does not depend on them."""
    cfg = CUTConfig.cut()
    torch.manual_seed(0)
    return save_generator(build_generator(cfg.model), folder, model_config=cfg.model)


def write_frames(folder: Path, h: int, w: int, n: int) -> list[str]:
    """n generated street frames of h x w as PNG; returns their paths, sorted."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rng = np.random.default_rng(i)
        Image.fromarray(render_real(make_layout(256, rng), rng)).resize((w, h), Image.BILINEAR).save(folder / f"{i:03d}.png")
    return sorted(str(p) for p in folder.glob("*.png"))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reference_loop(G: torch.nn.Module, files: list[str], out: Path, device: str = "cpu") -> float:
    """images/s of the reference test script's way: batch 1, serial, fp32, PIL save
    (default PNG compression) in the main thread. G is warmed up first."""
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():  # warm-up (cuDNN autotuning, allocator)
        G(to_model_input(np.asarray(Image.open(files[0]).convert("RGB"))[None]).to(device))
    _sync(device)
    t = time.perf_counter()
    with torch.no_grad():
        for f in files:
            x = to_model_input(np.asarray(Image.open(f).convert("RGB"))[None]).to(device)
            Image.fromarray(to_uint8_images(G(x))[0]).save(out / Path(f).name)
    return len(files) / (time.perf_counter() - t)


def reference_loop_as_it_runs(model_dir: str, files: list[str], out: Path, device: str = "cpu") -> float:
    """``reference_loop`` in a fresh process whose malloc is left as glibc has it (run it
    with jobs.bench.device.in_fresh_process): the reference code does not tune malloc,
    and this bench's own process has (cut_core.allocator) once any translation path
    ran in it."""
    from cut_core.allocator import leave_as_it_comes

    leave_as_it_comes()
    return reference_loop(load_generator(model_dir, device=device), files, out, device)


def staged_threads(files: list[str], spec: TranslateSpec, device: str, workers: int) -> tuple[float, float]:
    """(images/s, model busy) of the staged job's stage functions in one process:
    ``read_and_decode`` on ``workers`` threads, ``GeneratorStage`` on the calling
    thread (the only one touching the device), ``encode_and_write`` on ``workers``
    more threads, one image per batch as in the job. Threads suffice here because
    Pillow's codecs and zlib release the GIL. G is warmed up on the first file first."""
    stage = GeneratorStage(asdict(spec), device="cuda" if device.startswith("cuda") else "cpu",
                           threads=torch.get_num_threads())
    one = lambda f: {"path": np.array([f], dtype=object), "out": np.array([Path(f).stem], dtype=object)}  # noqa: E731
    stage(read_and_decode(one(files[0])))
    with ThreadPoolExecutor(workers) as decoders, ThreadPoolExecutor(workers) as encoders:
        t, busy0 = time.perf_counter(), stage.busy
        decoded = [decoders.submit(read_and_decode, one(f)) for f in files]
        written = [encoders.submit(encode_and_write, stage(d.result()), spec=asdict(spec)) for d in decoded]
        status = [str(s) for w in written for s in w.result()["status"]]
        wall = time.perf_counter() - t
    if status.count("done") != len(files):
        raise RuntimeError(f"staged run failed {len(files) - status.count('done')} of {len(files)} frames")
    return len(files) / wall, (stage.busy - busy0) / wall


def load_generator_output(G: torch.nn.Module, path: str) -> np.ndarray:
    """A translated frame (what the write stage encodes), as (H, W, 3) uint8."""
    return translate_uint8(G, np.asarray(Image.open(path).convert("RGB"))[None])[0]


OUTPUT_FORMAT_ROWS = {  # row name -> write_atomic arguments
    "png-level1": {"fmt": "png", "png_level": 1},
    "png-level6 (PIL default)": {"fmt": "png", "png_level": 6},
    "jpg-q95": {"fmt": "jpg", "quality": 95},
    "webp-lossless": {"fmt": "webp"},
}


def bench_output_formats(frame: np.ndarray, size: str, root: Path, repeats: int = 3, log=print) -> list[dict[str, object]]:
    """ms to encode and write one translated frame on one core, and its size, per
    output format."""
    rows: list[dict[str, object]] = []
    for name, kwargs in OUTPUT_FORMAT_ROWS.items():
        path = root / f"format-{size}.{kwargs['fmt']}"
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            write_atomic(frame, str(path), **kwargs)  # type: ignore[arg-type]
            times.append((time.perf_counter() - t) * 1000)
        ms, mb = statistics.median(times), path.stat().st_size / 2**20
        rows.append({"name": f"encode/{name}@{size}", "metric": "ms_per_image", "value": round(ms, 1), "unit": "ms"})
        rows.append({"name": f"encode/{name}@{size}", "metric": "file_mb", "value": round(mb, 2), "unit": "MB"})
        log(f"    encode {name} {size}: {ms:.0f} ms, {mb:.2f} MB")
    return rows


def run(device: str, sizes: list[tuple[int, int]], frames: int, precisions: list[str], staged: int = 0,
        log=print) -> list[dict[str, object]]:
    """Rows per size: the reference loop, one actor per precision, the staged stages on
    ``staged`` threads per CPU stage (0: not timed) per precision, and the encode cost
    of each output format."""
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = full_size_model(root / "model")
        G = load_generator(model, device=device)
        for h, w in sizes:
            files = write_frames(root / f"in-{w}x{h}", h, w, frames)
            base = in_fresh_process(reference_loop_as_it_runs, str(model), files, root / f"base-{w}x{h}", device)
            rows.append({"name": f"baseline/reference-test-loop@{w}x{h}", "metric": "images_per_s", "value": round(base, 3), "unit": "images/s"})
            log(f"  baseline {w}x{h}: {base:.3f} images/s")
            for precision in precisions:
                ranges = None
                if precision == "int8":  # on the first frame, as the job does
                    ranges = calibrate_from_bytes(str(model), [(files[0], Path(files[0]).read_bytes())], 1)[0]
                spec = TranslateSpec(model_dir=str(model), out_root=str(root / f"out-{precision}"), precision=precision,
                                     int8_ranges=ranges)
                udf = TranslateFiles(asdict(spec), device="cuda" if device.startswith("cuda") else "cpu",
                                     threads=torch.get_num_threads())
                batch = {"path": np.array(files, dtype=object),
                         "out": np.array([Path(f).relative_to(root).with_suffix("").as_posix() for f in files], dtype=object)}
                udf({k: v[:1] for k, v in batch.items()})  # warm-up
                t = time.perf_counter()
                result = udf(batch)
                rate = len(files) / (time.perf_counter() - t)
                assert all(s == "done" for s in result["status"]), result["error"]
                rows.append({"name": f"translate/actor-{precision}@{w}x{h}", "metric": "images_per_s", "value": round(rate, 3),
                             "unit": "images/s"})
                log(f"  actor {precision} {w}x{h}: {rate:.3f} images/s ({rate / base:.2f}x)")
                if staged:
                    rate, busy = staged_threads(files, spec, device, staged)
                    rows.append({"name": f"translate/staged-{staged}threads-{precision}@{w}x{h}", "metric": "images_per_s",
                                 "value": round(rate, 3), "unit": "images/s", "model_busy": round(busy, 3)})
                    log(f"  staged {precision} {w}x{h}, {staged} threads per CPU stage: {rate:.3f} images/s "
                        f"({rate / base:.2f}x), model busy {busy:.0%}")
            rows += bench_output_formats(load_generator_output(G, files[0]), f"{w}x{h}", root, log=log)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.bench.translate_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", nargs="+", default=["512x1024", "1024x2048"], help="HxW")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], help="fp32, bf16, int8 (CPU only)")
    p.add_argument("--staged", type=int, default=0, metavar="THREADS",
                   help="also time the staged job's stages with THREADS decode and THREADS encode threads")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    log(f"machine: {machine_info(args.device)}")
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]
    rows = run(args.device, sizes, args.frames, args.precisions, staged=args.staged, log=log)  # type: ignore[arg-type]
    write_record(args.out, "translate", rows, args.device)
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
