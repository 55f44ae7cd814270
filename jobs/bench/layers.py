"""Timing of single layers whose kernels raycut chooses itself, against the kernel
torch would use: today G's last convolution (ngf -> 3 channels, 7x7), whose fp32 CPU
backward cut_core.narrow_conv computes as matrix products.

    python -m jobs.bench.layers --crops 256 512 --batches 1 2 --out layers.json

Each round times one forward + backward of every variant, in a shuffled order
(cut_core.timing.interleaved_ms); a row reports its median, its spread (half the
IQR) and, for the raycut row, the median over rounds of oneDNN's time over its own.
Imports only torch, like jobs.bench.device.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Callable

import torch

from cut_core.timing import interleaved_ms
from cut_core.narrow_conv import NarrowOutputConv2d
from cut_core.timing import spread
from jobs.bench.records import format_table, write_record


def _last_conv_pass(layer: NarrowOutputConv2d, x: torch.Tensor) -> Callable[[], None]:
    kh, kw = layer.kernel_size
    grad = torch.randn(x.shape[0], layer.out_channels, x.shape[2] - kh + 1, x.shape[3] - kw + 1)

    def run() -> None:  # autograd.grad returns the gradients; nothing accumulates in .grad
        torch.autograd.grad(layer(x), (x, layer.weight, layer.bias), grad)

    return run


def bench_last_conv(crops: list[int], batches: list[int], *, ngf: int = 64, rounds: int = 9) -> list[dict[str, object]]:
    """Rows for G's last conv at each crop and batch: oneDNN's backward against the
    matmul one, fp32 on the CPU, forward + backward of one training step's call."""
    rows: list[dict[str, object]] = []
    for crop in crops:
        for batch in batches:
            torch.manual_seed(0)
            matmul = NarrowOutputConv2d(ngf, 3, kernel_size=7)
            plain = NarrowOutputConv2d(ngf, 3, kernel_size=7)
            plain.load_state_dict(matmul.state_dict())
            plain.as_plain_conv = True
            x = torch.randn(batch, ngf, crop + 6, crop + 6, requires_grad=True)  # reflect-padded by 3
            assert matmul._backward_as_matmul(x), "the matmul backward does not apply here (fp32 CPU only)"
            calls = {"oneDNN": _last_conv_pass(plain, x), "matmul-backward": _last_conv_pass(matmul, x)}
            ms, _ = interleaved_ms(calls, "cpu", rounds=rounds, warmup=2)
            suffix = f"@{crop}px-b{batch}"
            ratios = [p / m for p, m in zip(ms["oneDNN"], ms["matmul-backward"], strict=True)]
            for name, times in ms.items():
                row: dict[str, object] = {"name": f"g-last-conv/{name}{suffix}", "metric": "ms_per_iter",
                                          "value": round(statistics.median(times), 2), "unit": "ms",
                                          "spread_ms": round(spread(times), 2), "rounds": len(times)}
                if name == "matmul-backward":
                    row["paired_vs_baseline"] = round(statistics.median(ratios), 3)
                rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--crops", type=int, nargs="+", default=[256, 512])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2], help="1: FastCUT's G batch; 2: CUT's [A; B]")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--out", default="bench-layers.json")
    args = p.parse_args(argv)
    rows = bench_last_conv(args.crops, args.batches, rounds=args.rounds)
    print(format_table(rows))
    print(f"wrote {write_record(args.out, 'layers', rows, 'cpu')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
