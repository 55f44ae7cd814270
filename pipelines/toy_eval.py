"""The toy benchmark: translations of the toy testA scored against their paired truth,
next to the baselines any translation must beat (identity and histogram matching)
and the truth itself (the best any method can do).

Paired metrics (pred vs the real render of the same layout):
- ``colour_err``: per-class mean colour error under the label masks (grey levels);
- ``L1`` (in [0, 1] units), ``PSNR`` (dB; identical images count as 100 dB) and
  ``SSIM`` (Gaussian 11x11, torchmetrics' function: pipelines.ssim);
Label preservation: ``mIoU`` and ``pixel_acc`` of a small segmenter trained on the
real-style trainB (pipelines.toy_segmenter), run on the translations.

Lower is better for colour_err and L1, higher for the rest. ``TOY_METRIC`` is the
one number that ranks runs (Tune's objective).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from cut_core.errors import RaycutError
from pipelines.label_preservation import SegProtocol, score_images
from pipelines.local_images import list_images, read_rgb
from pipelines.ssim import ssim
from pipelines.toy_data import CLASSES, per_class_colour_error

Translate = Callable[[np.ndarray], np.ndarray]  # (N, H, W, 3) uint8 -> same
TOY_METRIC = "colour_err"  # lower is better
HIGHER_IS_BETTER = {"colour_err": False, "L1": False, "PSNR": True, "SSIM": True, "mIoU": True, "pixel_acc": True,
                    "class_acc": True, "fid": False, "kid": False}
PSNR_CAP = 100.0  # dB for identical images (PSNR is infinite there)
TRUTH, HISTOGRAM, IDENTITY = "truth (paired real)", "baseline/histogram", "baseline/identity"


@dataclass(frozen=True)
class ToyTest:
    paths: list[Path]
    a: np.ndarray  # (N, H, W, 3) uint8 sim inputs
    truth: np.ndarray  # (N, H, W, 3) uint8 real renders of the same layouts
    labels: np.ndarray  # (N, H, W) uint8 class ids


def channel_cdfs(images: Sequence[np.ndarray]) -> np.ndarray:
    """Pooled per-channel CDFs of uint8 RGB images: (3, 256)."""
    out = np.empty((3, 256))
    for c in range(3):
        hist = sum(np.bincount(im[..., c].ravel(), minlength=256) for im in images)
        out[c] = np.cumsum(hist) / np.sum(hist)
    return out


def histogram_match(img: np.ndarray, reference_cdfs: np.ndarray) -> np.ndarray:
    """Map each channel of (H, W, 3) uint8 so its histogram follows ``reference_cdfs``."""
    out = np.empty_like(img)
    for c in range(3):
        src_cdf = np.cumsum(np.bincount(img[..., c].ravel(), minlength=256)) / img[..., c].size
        lut = np.searchsorted(reference_cdfs[c], src_cdf).clip(0, 255).astype(np.uint8)
        out[..., c] = lut[img[..., c]]
    return out


def load_toy_test(root: str | Path, limit: int | None = None, split: str = "test") -> ToyTest:
    """testA, its paired truth (testB) and labels; the first ``limit`` files only if given.
    ``split="val"``: valA/valB instead (the checkpoint-selection pair)."""
    root = Path(root)
    paths = list_images(root / f"{split}A")[:limit]
    a = np.stack([read_rgb(p) for p in paths])
    b = np.stack([read_rgb(root / f"{split}B" / p.name) for p in paths])
    # Labels are single-channel class ids: read them as they are, not through read_rgb.
    labels = np.stack([np.asarray(Image.open(root / "labels" / f"{split}A" / p.name)) for p in paths])
    return ToyTest(paths, a, b, labels)


def baselines(root: str | Path, test: ToyTest) -> dict[str, np.ndarray]:
    """The reference rows' images: the truth, histogram matching to trainB, identity."""
    ref = channel_cdfs([read_rgb(p) for p in list_images(Path(root) / "trainB")])
    return {TRUTH: test.truth, HISTOGRAM: np.stack([histogram_match(x, ref) for x in test.a]), IDENTITY: test.a}


def paired_metrics(preds: np.ndarray, truth: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """colour_err, L1, PSNR and SSIM of (N, H, W, 3) uint8 predictions, averaged over images."""
    # Copies: the arrays may be read-only views (Ray's object store), which torch warns about.
    p = torch.from_numpy(np.array(preds)).permute(0, 3, 1, 2).double() / 255.0
    t = torch.from_numpy(np.array(truth)).permute(0, 3, 1, 2).double() / 255.0
    mse = ((p - t) ** 2).flatten(1).mean(1)
    psnr = torch.where(mse > 0, 10 * torch.log10(1.0 / mse.clamp_min(1e-30)), torch.full_like(mse, PSNR_CAP))
    return {
        "colour_err": float(np.mean([per_class_colour_error(a, b, lab) for a, b, lab in zip(preds, truth, labels)])),
        "L1": float((p - t).abs().mean()),
        "PSNR": float(psnr.clamp(max=PSNR_CAP).mean()),
        "SSIM": float(ssim(p, t)),
    }


def score_set(preds: np.ndarray, test: ToyTest, segmenter: torch.nn.Module | None) -> dict[str, float]:
    """Every toy metric of one set of translations of ``test.a``."""
    row = paired_metrics(preds, test.truth, test.labels)
    if segmenter is not None:
        protocol = SegProtocol(size=None, label_kind="raw", normalize="unit", num_classes=len(CLASSES), batch_size=16)
        seg = score_images(segmenter, list(preds), list(test.labels), protocol)
        row.update(mIoU=seg["mIoU"], pixel_acc=seg["pixel_acc"])
    return row


def evaluate_toy(root: str | Path, translations: dict[str, Translate | np.ndarray], *, label_preservation: bool = True,
                 limit: int | None = None) -> dict[str, dict[str, float]]:
    """{row name: {metric: value}} for each named translation (a function of testA, or
    its outputs already) and the reference rows (truth, histogram, identity)."""
    from pipelines.toy_segmenter import toy_segmenter

    test = load_toy_test(root, limit)
    segmenter = toy_segmenter(root) if label_preservation else None
    rows = {name: score_set(images, test, segmenter) for name, images in baselines(root, test).items()}
    for name, fn in translations.items():
        preds = fn(test.a) if callable(fn) else fn
        rows[name] = score_set(preds, test, segmenter)
    return rows


def read_translations(root: str | Path, folder: str | Path) -> np.ndarray:
    """The translated testA of a ``raycut translate`` output folder, in testA's order.
    An output keeps its input's stem, at ``testA/<stem>.*`` (translated with the toy
    root as the source) or ``<stem>.*`` (translated from testA itself)."""
    folder = Path(folder).resolve()
    found: dict[str, Path] = {}
    for p in list_images(folder):
        stem = str(p.resolve().relative_to(folder).with_suffix(""))
        if stem in found:  # translated twice, in two --format's: which one to score is the user's call
            raise RaycutError(f"{folder} holds two translations of {stem} ({found[stem].name}, {p.name}); move one "
                              f"format's files elsewhere, or score a folder that holds one")
        found[stem] = p
    out = []
    for p in list_images(Path(root) / "testA"):
        hit = found.get(f"testA/{p.stem}") or found.get(p.stem)
        if hit is None:
            raise RaycutError(f"{folder} has no translation of testA/{p.name}; translate {Path(root) / 'testA'} into it first")
        out.append(read_rgb(hit))
    return np.stack(out)


def improvement(rows: dict[str, dict[str, float]], model: str, metric: str = TOY_METRIC) -> dict[str, float]:
    """How much ``model`` beats each baseline on ``metric``, as a ratio >1 when better."""
    m = rows[model][metric]
    better_high = HIGHER_IS_BETTER.get(metric, False)
    return {name: (m / r if better_high else r / max(m, 1e-12)) for name, row in rows.items()
            if name.startswith("baseline/") for r in [row[metric]]}
