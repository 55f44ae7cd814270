"""FID and KID: features extracted by a Ray Data actor pool, statistics by torchmetrics.

    image files -> from_items(path) -> ExtractFeatures actors (extractor loaded once
    per actor: read, decode, resize, forward) -> rows {path, features, error}
    -> (N, d) arrays on the driver -> torchmetrics FID / KID on the precomputed features

Only features travel back to the driver (8 KB per image for Inception), so sets of
any size fit. The statistics are torchmetrics' own: this module hands it features
through a pass-through "extractor" instead of images.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch import nn

from cut_core.cores import threads_per_worker
from cut_core.errors import RaycutError
from pipelines.decode import DEFAULT_MAX_PIXELS, decode_image
from pipelines.feature_extractors import ExtractorSpec, load_extractor, resize_for

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000  # torchmetrics' default; shrunk to the smaller set when needed


class ExtractFeatures:
    """Ray Data UDF. Input column: ``path`` (str). Output columns: ``path`` (str),
    ``features`` float32 (B, d), ``error`` (str, empty when the image was read; the
    features of a failed row are zeros and must be dropped)."""

    def __init__(self, spec: dict[str, Any], threads: int = 1, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        torch.set_num_threads(threads)
        self.spec = ExtractorSpec(**spec)
        self.net = load_extractor(self.spec)
        self.max_pixels = max_pixels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        paths = [str(p) for p in batch["path"]]
        errors = [""] * len(paths)
        images: list[torch.Tensor] = []
        ok: list[int] = []
        for i, path in enumerate(paths):
            try:
                with open(path, "rb") as f:
                    result = decode_image(f.read(), max_pixels=self.max_pixels)
            except OSError as e:
                errors[i] = f"unreadable ({e})"
                continue
            if result.image is None:
                errors[i] = result.reason
                continue
            images.append(torch.from_numpy(np.ascontiguousarray(result.image)).permute(2, 0, 1).float() / 255.0)
            ok.append(i)
        d = int(self.net.num_features)
        features = np.zeros((len(paths), d), np.float32)
        if images:
            with torch.inference_mode():
                features[ok] = self.net(resize_for(images, self.spec.input_size)).numpy()
        return {"path": np.array(paths, dtype=object), "features": features, "error": np.array(errors, dtype=object)}


def extract_features(files: list[str], spec: ExtractorSpec, *, batch_size: int = 16,
                     pool: tuple[int, int] = (1, 1), threads: int | None = None,
                     progress: Any = None) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
    """Features of every readable file, in the order of ``files``: (paths, (N, d)
    float32, [(path, why)] of the files that could not be read). Runs on the current
    Ray cluster (``ray.init`` first) in a pool of (MIN, MAX) actors, each with
    ``threads`` torch threads (default: this machine's cores shared by MAX actors)."""
    import ray

    if not files:
        raise RaycutError("no images to extract features from")
    threads = threads or threads_per_worker(pool[1])
    ds = ray.data.from_items([{"path": f} for f in files], override_num_blocks=max(1, min(len(files) // batch_size, 1000)))
    ds = ds.map_batches(ExtractFeatures, fn_constructor_kwargs={"spec": asdict(spec), "threads": threads},
                        batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(min_size=pool[0], max_size=pool[1]),
                        num_cpus=threads)
    got: dict[str, np.ndarray] = {}
    failed: list[tuple[str, str]] = []
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for path, feats, err in zip(batch["path"], batch["features"], batch["error"]):
            if err:
                failed.append((str(path), str(err)))
            else:
                got[str(path)] = feats
        if progress is not None:
            progress.update(len(batch["path"]))
    kept = [f for f in files if f in got]
    if len(kept) < 2:
        raise RaycutError(f"only {len(kept)} of {len(files)} images could be read; FID needs at least 2 per set")
    return kept, np.stack([got[f] for f in kept]), failed


class _Precomputed(nn.Module):
    """Hands torchmetrics features that were extracted already: (N, d) -> (N, d)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def fid_kid(real: np.ndarray, fake: np.ndarray, *, kid_subsets: int = KID_SUBSETS,
            kid_subset_size: int = KID_SUBSET_SIZE, seed: int = 0) -> dict[str, float]:
    """FID, and KID's mean and std over random subsets, of two (N, d) feature sets.

    KID subsets hold min(kid_subset_size, N_real, N_fake) samples: the usual 1000 on
    full test sets, all of them on small ones. ``seed`` fixes KID's subset draws."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise RaycutError(f"feature sets must be (N, d) with the same d, got {real.shape} and {fake.shape}")
    d = real.shape[1]
    r, f = torch.from_numpy(np.ascontiguousarray(real, np.float32)), torch.from_numpy(np.ascontiguousarray(fake, np.float32))
    fid = FrechetInceptionDistance(feature=_Precomputed(d))
    fid.update(r, real=True)
    fid.update(f, real=False)
    size = min(kid_subset_size, len(real), len(fake))
    kid = KernelInceptionDistance(feature=_Precomputed(d), subsets=kid_subsets, subset_size=size)
    kid.update(r, real=True)
    kid.update(f, real=False)
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        kid_mean, kid_std = kid.compute()
    finally:
        torch.random.set_rng_state(gen_state)
    return {"fid": float(fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std),
            "n_real": len(real), "n_fake": len(fake)}
