"""What ``raycut translate`` takes: TranslateOptions, from which its command line is
derived (jobs.options)."""

from __future__ import annotations

from dataclasses import dataclass

from cut_core.config import TRANSLATE_PRECISIONS as PRECISIONS
from jobs.options import opt
from pipelines.decode import DEFAULT_MAX_PIXELS
from pipelines.translate_io import OUTPUT_FORMATS

FLUSH_ROWS = 64  # manifest rows per part
DEFAULT_MAX_GPU_ACTORS = 16  # the G pool's ceiling on GPUs when --concurrency is not given
MAX_MEGAPIXELS = DEFAULT_MAX_PIXELS / 1e6


def switch(value: str) -> bool | str:
    """auto | on | off -> "auto" | True | False."""
    if value not in ("auto", "on", "off"):
        import argparse

        raise argparse.ArgumentTypeError(f"choose auto, on or off, not {value}")
    return value if value == "auto" else value == "on"


@dataclass(frozen=True)
class TranslateOptions:
    model: str = opt("", "models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/model, or a model dir", required=True)
    input: str = opt("", "any ingest source: folder, glob, cyclegan:ROOT:testA, gta5:ROOT, cityscapes:ROOT[:split], "
                     "parquet:PATH[:COL], s3://...", required=True)
    output: str = opt("", "output folder; mirrors the input tree, holds manifest/", required=True)
    batch_size: int = opt(4, "images per G actor call")
    concurrency: str | int | None = opt(None, "G actors: N, or MIN-MAX for a pool that grows as nodes join "
                                        f"(default: 1-{DEFAULT_MAX_GPU_ACTORS} with GPUs, 1 on CPU)")
    gpus_per_actor: float = opt(0.0, "GPUs per G actor")
    precision: str = opt("auto", "auto (the fastest this device runs natively, measured) | fp32 | bf16 | int8 "
                         "(CPU: calibrated on the first inputs)", choices=list(PRECISIONS))
    calibration_images: int = opt(2, "int8: how many of the first inputs set the ranges")
    channels_last: bool | str = opt("auto", "NHWC memory layout for G (auto: where the probe finds it faster)",
                                    type=switch, metavar="{auto,on,off}")
    tile: int = opt(0, "translate in tiles of this size (multiple of 4; 0: whole image)")
    max_megapixels: float = opt(MAX_MEGAPIXELS, "larger images are refused, as a guard against decompression bombs; "
                                "raise it for big aerial frames (with --tile to bound G's memory)")
    overlap: int = opt(32, "tile overlap, blended linearly")
    fmt: str = opt("png", "png (lossless, the default), jpg (--jpeg-quality) or webp (lossless)", flag="--format",
                   choices=list(OUTPUT_FORMATS))
    labels: str | None = opt(None, "label folder to copy alongside (mirrored like the images)")
    link_labels: bool = opt(False, "hard-link labels instead of copying")
    overwrite: bool = opt(False, "translate again the inputs whose outputs here came from another model (they are "
                          "replaced); without it such a run stops before it starts")
    png_level: int = opt(1, "PNG zlib level 0-9 (default 1: fast, lossless; PIL's 6 costs more than G on a big frame)")
    jpeg_quality: int = opt(95, "JPEG quality")
    staged: bool = True  # decode / G / encode as separate stages (False: one fused actor, the old job)
    manifest_part_rows: int = FLUSH_ROWS  # rows per manifest part (also flushed every FLUSH_SECONDS)
