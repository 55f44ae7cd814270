"""`raycut bench ...`: benchmark commands that print a table and write a JSON record
``{"bench", "machine", "results": [{"name", "metric", "value", "unit"}]}``."""

from __future__ import annotations

import argparse
import sys

import torch

from cut_core import benchmark
from cut_core.errors import RaycutError


def run_bench(args: argparse.Namespace) -> int:
    if args.which != "train":
        raise RaycutError(f"unknown benchmark {args.which!r}")
    variants = list(args.variants or benchmark.DEFAULT_VARIANTS)
    unknown = [v for v in variants if v not in benchmark.TRAIN_VARIANTS]
    if unknown:
        raise RaycutError(f"unknown variant {unknown[0]!r}; choose from {', '.join(benchmark.TRAIN_VARIANTS)}")
    if args.compile:
        variants += [v for v in ("bf16-compile",) if v not in variants]
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RaycutError("--device cuda was asked for but torch sees no GPU; drop --device or install a CUDA build of torch")
        torch.backends.cudnn.benchmark = True
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    log(f"raycut bench train: {', '.join(args.presets)} x {', '.join(variants)} at {args.crop} px, "
        f"batch 1, {args.iters} timed iterations after {args.warmup} warm-up, on {args.device}")
    rows = benchmark.bench_train(tuple(args.presets), tuple(variants), crop=args.crop, device=args.device,
                                 warmup=args.warmup, iters=args.iters, log=log)
    out = benchmark.write_record(args.out, "train", rows, args.device)
    print(benchmark.format_table(rows))
    print(f"wrote {out}")
    return 0
