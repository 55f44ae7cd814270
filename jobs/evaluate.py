"""`raycut evaluate`: how good is a translation, measured.

Two modes, one report (a console table + a JSON file, + the MLflow run's metrics):

    --real SRC --fake SRC     FID and KID (the paper's Inception protocol, or any
                              TorchScript extractor), features extracted on Ray Data;
        [--seg-model TS --labels DIR]   + label preservation (Cityscapes protocol)
    --toy ROOT [--fake DIR]   the toy benchmark: paired metrics and label preservation
                              of the translated testA, with the truth, histogram and
                              identity rows (+ FID/KID when an extractor is given)
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cut_core.errors import RaycutError
from jobs.options import opt
from jobs.progress import Progress

MODEL_ROW = "model"


@dataclass(frozen=True)
class EvaluateOptions:
    """Everything ``raycut evaluate`` takes; its command line is derived from these fields."""

    real: str | None = opt(None, "real images (folder, glob, cyclegan:ROOT:testB, cityscapes:ROOT[:split], ...)")
    fake: str | None = opt(None, "translated images (a raycut translate output folder, or any source)")
    toy: str | None = opt(None, "toy dataset root: score --fake (its translated testA) against the paired truth")
    name: str = opt(MODEL_ROW, "the translation's row name in the table")
    inception_weights: str | None = opt(None, "pt_inception-2015-12-05-6726825d.pth (default: ~/.cache/raycut/ or "
                                        "$RAYCUT_CACHE, then torch hub's checkpoints folder)")
    feature_extractor: str | None = opt(None, "TorchScript file used instead of Inception (the report names it)")
    feature_size: int = opt(299, "input size of --feature-extractor")
    kid_subsets: int = opt(100, "KID: random subsets averaged")
    kid_subset_size: int = opt(1000, "KID: images per subset, shrunk to the smaller set when needed")
    seg_model: str | None = opt(None, "TorchScript segmenter for label preservation (the paper: DRN-D-22 on Cityscapes)")
    labels: str | None = opt(None, "labels of the translated images' inputs (same relative paths and stems)")
    label_kind: str = opt("cityscapes-ids", "label encoding: Cityscapes/GTA5 label ids, or the 19 train ids",
                          choices=["cityscapes-ids", "train-ids"])
    seg_normalize: str = opt("imagenet", "the segmenter's input normalisation", choices=["imagenet", "unit", "symmetric"])
    seg_size: tuple[int, int] = opt((128, 256), "WIDTHxHEIGHT the segmenter scores at (default 256x128, the paper's)",
                                    type=lambda v: width_x_height(v, "--seg-size"), metavar="WxH")  # held as (H, W)
    batch_size: int = opt(16, "images per feature-extraction call")
    concurrency: str | None = opt(None, "feature-extraction actors: N, or MIN-MAX for a pool that grows as nodes "
                                  "join (default: 1 using every core on a local Ray; 1-16 on a cluster)")
    out: str | None = opt(None, "JSON report (default: FAKE/evaluation.json)")
    run_id: str | None = opt(None, "MLflow run to log the metrics into (default: $MLFLOW_RUN_ID)")


CLUSTER_FEATURE_ACTORS = (1, 16)
CLUSTER_ACTOR_THREADS = 4  # torch threads (logical CPUs) of one feature actor on a cluster


def _feature_pool(opts: EvaluateOptions) -> dict[str, Any]:
    """The feature actors: on a local Ray one (or --concurrency) sharing the cores; on a
    cluster a pool that grows as nodes join, each actor a fixed share of a node."""
    from jobs.ray_runtime import on_this_machine, parse_pool

    if on_this_machine():
        return {"pool": parse_pool(opts.concurrency, default=(1, 1), what="--concurrency")}
    return {"pool": parse_pool(opts.concurrency, default=CLUSTER_FEATURE_ACTORS, what="--concurrency"),
            "threads": CLUSTER_ACTOR_THREADS}


def width_x_height(value: str, what: str) -> tuple[int, int]:
    """'256x128' -> (128, 256): (H, W), as tensors hold it."""
    import argparse

    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be WIDTHxHEIGHT, e.g. 256x128, not {value}") from None
    return h, w


def run_evaluate(opts: EvaluateOptions) -> dict[str, Any]:
    t0 = time.perf_counter()
    _check(opts)
    if opts.toy:
        report = _toy(opts)
    else:
        report = _real_fake(opts)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    out = Path(opts.out) if opts.out else _default_out(opts)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report["rows"]), flush=True)
    if report.get("extractor"):
        print(f"[evaluate] features: {report['extractor']}", flush=True)
    for path, why in report.get("skipped", [])[:10]:
        print(f"  skipped {path}: {why}", flush=True)
    run_id = opts.run_id or os.environ.get("MLFLOW_RUN_ID")
    if run_id:
        log_report(run_id, report, out, model_row=opts.name)
    print(f"[evaluate] wrote {out}" + (f", logged to MLflow run {run_id}" if run_id else ""), flush=True)
    return report


def _check(opts: EvaluateOptions) -> None:
    from pipelines.label_preservation import NORMALIZATIONS
    from pipelines.segmentation_metrics import LABEL_KINDS

    if bool(opts.toy) == bool(opts.real):
        raise RaycutError("pass --real SRC --fake SRC (FID/KID on your data) or --toy ROOT [--fake DIR] (the toy benchmark)")
    if opts.real and not opts.fake:
        raise RaycutError("--real needs --fake: the translated images to score")
    if opts.inception_weights and opts.feature_extractor:
        raise RaycutError("pass --inception-weights or --feature-extractor, not both")
    if opts.seg_model and not opts.labels:
        raise RaycutError("--seg-model needs --labels: the label folder of the translated images' inputs")
    if opts.label_kind not in LABEL_KINDS:
        raise RaycutError(f"--label-kind must be one of {', '.join(LABEL_KINDS)}")
    if opts.seg_normalize not in NORMALIZATIONS:
        raise RaycutError(f"--seg-normalize must be one of {', '.join(NORMALIZATIONS)}")
    if opts.kid_subsets < 1 or opts.kid_subset_size < 2 or opts.batch_size < 1:
        raise RaycutError("--kid-subsets, --batch-size must be at least 1 and --kid-subset-size at least 2")
    for name in ("fake", "toy", "labels", "seg_model"):
        value = getattr(opts, name)
        if value and ":" not in value and not Path(value).exists():
            raise RaycutError(f"--{name.replace('_', '-')} {value} does not exist")


def _extractor(opts: EvaluateOptions, *, required: bool):
    from pipelines.feature_extractors import inception_spec, load_extractor, torchscript_spec

    if opts.feature_extractor:
        spec = torchscript_spec(opts.feature_extractor, opts.feature_size)
    elif opts.inception_weights or required:
        spec = inception_spec(opts.inception_weights)
    else:
        return None
    load_extractor(spec)  # a file that does not load fails here, in one line, not inside a Ray actor
    return spec


def _real_fake(opts: EvaluateOptions) -> dict[str, Any]:
    from jobs.ray_runtime import start_ray
    from pipelines.fid import extract_features, fid_kid
    from pipelines.sources import list_source_files, parse_source

    spec = _extractor(opts, required=True)  # the weights are checked before Ray starts
    _, real_files = list_source_files(parse_source(opts.real))
    _, fake_files = list_source_files(parse_source(opts.fake))
    fake_files = [f for f in fake_files if "/manifest/" not in f]
    start_ray(1)
    sets = {}
    skipped: list[tuple[str, str]] = []
    for name, files in (("real", real_files), ("fake", fake_files)):
        bar = Progress(f"features {name}", len(files), unit="img", every=max(1, len(files) // 20))
        _, feats, failed = extract_features(files, spec, batch_size=opts.batch_size, **_feature_pool(opts),
                                            progress=bar)
        sets[name] = feats
        skipped += failed
    row = fid_kid(sets["real"], sets["fake"], kid_subsets=opts.kid_subsets, kid_subset_size=opts.kid_subset_size)
    report: dict[str, Any] = {"mode": "real-fake", "real": opts.real, "fake": opts.fake, "extractor": spec.describe(),
                              "rows": {opts.name: row}, "skipped": skipped}
    if opts.seg_model:
        report["label_preservation"] = label_preservation(opts, fake_files)
        row.update({k: v for k, v in report["label_preservation"].items() if k in ("mIoU", "pixel_acc", "class_acc")})
    return report


def label_preservation(opts: EvaluateOptions, fake_files: list[str]) -> dict[str, Any]:
    from pipelines.label_files import pair_with_labels
    from pipelines.label_preservation import SegProtocol, load_segmenter, score_files
    from pipelines.sources import list_source_files, parse_source

    net = load_segmenter(opts.seg_model)
    _, label_files = list_source_files(parse_source(opts.labels))
    prefer = ("_labelIds",) if opts.label_kind == "cityscapes-ids" else ("_labelTrainIds", "_trainIds")
    fake_root = opts.fake if Path(opts.fake).is_dir() else os.path.dirname(opts.fake)
    pairs, missing = pair_with_labels(fake_files, fake_root, label_files, opts.labels, prefer=prefer)
    if not pairs:
        raise RaycutError(f"no translated image in {opts.fake} has a label in {opts.labels} (same relative path and stem)")
    protocol = SegProtocol(size=opts.seg_size, label_kind=opts.label_kind, normalize=opts.seg_normalize)
    bar = Progress("segment", len(pairs), unit="img", every=max(1, len(pairs) // 20))
    result = score_files(net, pairs, protocol, progress=bar)
    result.update(seg_model=opts.seg_model, size_hw=list(opts.seg_size), without_label=len(missing))
    if missing:
        print(f"[evaluate] {len(missing)} translated images have no label (first: {missing[0][0]}: {missing[0][1]})",
              flush=True)
    return result


def _toy(opts: EvaluateOptions) -> dict[str, Any]:
    from pipelines.toy_eval import evaluate_toy, read_translations

    root = Path(opts.toy)
    if not (root / "toy.json").is_file():
        raise RaycutError(f"{root} is not a toy dataset (no toy.json); make one with raycut toy-data --out DIR")
    translations = {opts.name: read_translations(root, opts.fake)} if opts.fake else {}
    rows = evaluate_toy(root, translations)
    report: dict[str, Any] = {"mode": "toy", "toy": str(root), "fake": opts.fake, "rows": rows, "extractor": None}
    spec = _extractor(opts, required=False)
    if spec is not None:
        report["extractor"] = spec.describe()
        _toy_fid(root, spec, rows, translations)
    return report


def _toy_fid(root: Path, spec, rows: dict[str, dict[str, float]], translations: dict[str, np.ndarray]) -> None:
    """FID/KID of every toy row against the real-style trainB (small sets: in process)."""
    from pipelines.feature_extractors import features_of_images, load_extractor
    from pipelines.fid import fid_kid
    from pipelines.local_images import load_folder
    from pipelines.toy_eval import baselines, load_toy_test

    net = load_extractor(spec)
    real = features_of_images(net, load_folder(root / "trainB"))
    sets = {**baselines(root, load_toy_test(root)), **translations}
    for name, images in sets.items():
        got = fid_kid(real, features_of_images(net, images))
        rows[name].update(fid=got["fid"], kid=got["kid"])


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """Rows x metrics, metrics in a fixed order, with the better direction in the header."""
    from pipelines.toy_eval import HIGHER_IS_BETTER

    order = ["colour_err", "L1", "PSNR", "SSIM", "mIoU", "pixel_acc", "class_acc", "fid", "kid"]
    metrics = [m for m in order if any(m in r for r in rows.values())]
    width = max(len(n) for n in rows) + 2
    head = "".join(f"{m + (' ^' if HIGHER_IS_BETTER.get(m) else ' v'):>13}" for m in metrics)
    lines = [f"{'':<{width}}{head}"]
    for name, row in rows.items():
        cells = "".join(f"{_fmt(row.get(m)):>13}" for m in metrics)
        lines.append(f"{name:<{width}}{cells}")
    lines.append("(^ higher is better, v lower is better)")
    return "\n".join(lines)


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"


def _default_out(opts: EvaluateOptions) -> Path:
    if opts.fake and Path(opts.fake).is_dir():
        return Path(opts.fake) / "evaluation.json"
    return Path("evaluation.json")


def log_report(run_id: str, report: dict[str, Any], path: Path, *, model_row: str = MODEL_ROW) -> None:
    """Every metric into the MLflow run: the model's as ``eval/<metric>``, the other
    rows' as ``eval/<row>/<metric>``; the JSON report as an artifact."""
    from jobs.tracking import log_metrics_now, tracking_uri

    metrics = {}
    for name, row in report["rows"].items():
        prefix = "eval/" if name == model_row else f"eval/{name.replace(' ', '_').replace('(', '').replace(')', '')}/"
        metrics.update({prefix + k: float(v) for k, v in row.items() if isinstance(v, (int, float))})
    log_metrics_now(tracking_uri(), run_id, metrics, artifact=path, artifact_dir="evaluation")
