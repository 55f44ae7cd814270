"""Time one translation actor's work without Ray: read + decode, G at full resolution,
encode + atomic write in a background thread (``TranslateFiles``), against the
reference test loop (batch 1, serial, fp32, PIL save in the main thread), on any
device. Needs torch and Pillow only, so it also runs on a GPU box without Ray:

    python -m pipelines.translate_speed --device cuda --out translate_gpu.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cut_core import CUTConfig, save_generator
from cut_core.benchmark import format_table, machine_info, write_record
from cut_core.images import to_model_input, to_uint8_images
from cut_core.model_dir import load_generator
from cut_core.networks import build_generator
from pipelines.toy_data import make_layout, render_real
from pipelines.translate import TranslateFiles, TranslateSpec, calibrate_from_bytes


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


def run(device: str, sizes: list[tuple[int, int]], frames: int, precisions: list[str], log=print) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = full_size_model(root / "model")
        G = load_generator(model, device=device)
        for h, w in sizes:
            files = write_frames(root / f"in-{w}x{h}", h, w, frames)
            base = reference_loop(G, files, root / f"base-{w}x{h}", device)
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
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.translate_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", nargs="+", default=["512x1024", "1024x2048"], help="HxW")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], help="fp32, bf16, int8 (CPU only)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    log(f"machine: {machine_info(args.device)}")
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]
    rows = run(args.device, sizes, args.frames, args.precisions, log=log)  # type: ignore[arg-type]
    write_record(args.out, "translate", rows, args.device)
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
