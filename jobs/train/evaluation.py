"""Evaluation during training: a fixed validation subset scored every N steps.

The paper reports best-during-training numbers, and Tune's scheduler needs a metric
while a trial runs, so ``raycut train --eval-every N`` scores G on rank 0 at every
checkpoint (checkpoints then come every N steps), reports the score with the
checkpoint, chooses the checkpoint to register as the scores come (CheckpointChoice;
Ray Train keeps the chosen ones) and logs it all to MLflow.

    toy data (a ``toy.json`` beside --data-a): per-class colour error of the first
        ``eval_images`` translations of valA against their paired truth valB (lower is
        better), or of testA where the dataset has no val split or --eval-data names
        testA (then the test pair also chooses the checkpoint it scores)
    other data: KID between translations of --eval-data (held-out A images) and the
        held-out B images of --eval-real, with the Inception (or TorchScript) features,
        and its standard error on that val set (eval_kid_se)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cut_core.errors import RaycutError

EVAL_PREFIX = "eval_"  # reported metric names: eval_colour_err, eval_kid, ...


@dataclass(frozen=True)
class EvalPlan:
    """What rank 0 needs to score G; plain data in the train loop config."""

    every: int
    metric: str  # colour_err (toy) | kid
    images: dict[str, np.ndarray]  # "a": (N, H, W, 3) uint8 inputs; "truth"/"labels" (toy) or "real" (kid)
    extractor: dict[str, Any] | None = None  # ExtractorSpec fields, for kid

    @property
    def key(self) -> str:
        return EVAL_PREFIX + self.metric

    @property
    def order(self) -> str:
        return score_order(self.metric)


# Ray Train keeps checkpoints by this reported metric: a checkpoint's step when it
# becomes the one to register, -1 otherwise, so the latest chosen one ranks first.
CHOICE_SCORE = "choice_score"


@dataclass
class CheckpointChoice:
    """Which evaluated checkpoint a run registers, decided at each evaluation on rank 0.

    A score without an error (the toy's colour error, against a paired truth): the best
    so far. KID on a val set carries its standard error (``eval_kid_se``): the latest
    checkpoint within ``within_se`` of those errors of the best so far. Why: on a few
    dozen val images KID's noise is as large as the gains of the decay's last steps, and
    the lowest of a dozen noisy scores is most often an early checkpoint's; the error
    tells a noisy low from a real loss, which a checkpoint further off than that still
    is (docs/quality.md, "The checkpoint that KID registers")."""

    key: str
    order: str = "min"
    within_se: float = 1.0
    best: dict[str, Any] = field(default_factory=dict)  # the best score so far: step, value
    chosen: dict[str, Any] = field(default_factory=dict)  # the checkpoint to register: step, metric, value

    def observe(self, step: int, metrics: dict[str, float]) -> bool:
        """Read one evaluation's metrics; True when this checkpoint is now the one to register."""
        value = metrics[self.key]
        sign = 1.0 if self.order == "min" else -1.0
        se = metrics.get(self.key + "_se")
        new_best = not self.best or sign * value < sign * self.best["value"]
        near = bool(self.best) and se is not None and sign * (value - self.best["value"]) <= self.within_se * se
        if new_best:
            self.best = {"step": step, "value": value}
        if new_best or near:
            self.chosen = {"step": step, "metric": self.key, "value": value}
        return new_best or near

    def to_json(self) -> dict[str, Any]:
        """What a checkpoint keeps (``best.json``): the chosen checkpoint's step, metric and
        value, and the best score so far, for a resumed run to go on from."""
        return {**self.chosen, "best": self.best}

    @classmethod
    def from_json(cls, plan: "EvalPlan", saved: dict[str, Any] | None) -> "CheckpointChoice":
        saved = dict(saved or {})
        best = saved.pop("best", None)
        # A checkpoint written before the choice kept its best only: that is both.
        return cls(plan.key, plan.order, best=best or ({"step": saved["step"], "value": saved["value"]} if saved else {}),
                   chosen=saved)


def checkpoint_to_register(kept: list[tuple[Any, dict[str, Any]]],
                           metric: str) -> tuple[Any, dict[str, Any]] | None:
    """Of the checkpoints Ray Train kept (checkpoint, reported metrics), the one to
    register: the latest that CheckpointChoice chose (the highest ``choice_score``).
    Checkpoints written before the choice was reported (a run resumed across that
    upgrade) carry only their score: then the best score. None when none was evaluated."""
    chosen = [(c, m) for c, m in kept if m.get(CHOICE_SCORE, -1) >= 0]
    if chosen:
        return max(chosen, key=lambda cm: cm[1][CHOICE_SCORE])
    scored = [(c, m) for c, m in kept if metric in m]
    if not scored:
        return None
    return (min if score_order(metric) == "min" else max)(scored, key=lambda cm: cm[1][metric])


def score_order(metric: str) -> str:
    """Ray Train's checkpoint_score_order for a metric: "max" for the scores that grow
    with quality (PSNR, SSIM, mIoU, ...), "min" for errors, distances and losses."""
    from pipelines.toy_eval import HIGHER_IS_BETTER

    return "max" if HIGHER_IS_BETTER.get(metric.removeprefix(EVAL_PREFIX), False) else "min"


def toy_root_of(source: str) -> Path | None:
    """The toy dataset a training source belongs to (``ROOT/trainA``, ``cyclegan:ROOT:trainA``)."""
    found = _toy_split_of(source)
    return found[0] if found else None


def _toy_split_of(source: str) -> tuple[Path, str] | None:
    """(toy root, split folder) of a source inside a toy dataset: ("ROOT", "valA") for
    ``cyclegan:ROOT:valA`` or ``ROOT/valA``; the folder is "" for the root itself."""
    from pipelines.sources import parse_source

    s = parse_source(source)
    if "://" in s.root:
        return None
    if (Path(s.root) / "toy.json").is_file():
        return Path(s.root), s.split
    if (Path(s.root).parent / "toy.json").is_file():
        return Path(s.root).parent, Path(s.root).name
    return None


def _selection_split(root: Path, folder: str) -> str:
    """The paired split that scores checkpoints of a toy run: "val" unless the source
    names testA, or the dataset has no valA (datasets written before it existed)."""
    return "test" if folder == "testA" or not (root / "valA").is_dir() else "val"


def plan_eval(every: int, data_a: str, *, eval_data: str | None, eval_real: str | None, n_images: int,
              crop_size: int, inception_weights: str | None = None, feature_extractor: str | None = None,
              extractor_size: int | None = None) -> EvalPlan:
    """Load the validation subset on the driver (once for the whole run). ``extractor_size``:
    the side a TorchScript extractor's inputs are resized to (default Inception's 299)."""
    if every < 1:
        raise RaycutError("--eval-every must be at least 1")
    toy = _toy_split_of(eval_data or data_a) if not eval_real else None
    if toy is not None:
        from pipelines.toy_eval import load_toy_test

        test = load_toy_test(toy[0], limit=n_images, split=_selection_split(*toy))
        return EvalPlan(every=every, metric="colour_err",
                        images={"a": test.a, "truth": test.truth, "labels": test.labels})
    if not (eval_data and eval_real):
        raise RaycutError("--eval-every on non-toy data needs --eval-data (held-out A images) and --eval-real "
                          "(held-out B images) for KID")
    from pipelines.feature_extractors import inception_spec, load_extractor, torchscript_spec

    spec = (torchscript_spec(feature_extractor, *([extractor_size] if extractor_size else []))
            if feature_extractor else inception_spec(inception_weights))
    load_extractor(spec)  # fails here, before training, if the file does not load
    return EvalPlan(every=every, metric="kid",
                    images={"a": _center_crops(eval_data, n_images, crop_size),
                            "real": _center_crops(eval_real, n_images, crop_size)},
                    extractor={"path": spec.path, "kind": spec.kind, "input_size": spec.input_size})


def _center_crops(source: str, n: int, size: int) -> np.ndarray:
    """The first ``n`` readable images of a source, shorter side scaled to ``size`` and
    centre-cropped: (n', size, size, 3) uint8."""
    from PIL import Image

    from pipelines.decode import decode_image
    from pipelines.sources import list_source_files, parse_source

    fs, files = list_source_files(parse_source(source))
    out = []
    for f in files:
        with fs.open_input_file(f) as fh:
            result = decode_image(fh.readall())
        if result.image is None:
            continue
        img = Image.fromarray(result.image)
        scale = size / min(img.size)
        img = img.resize((max(size, round(img.width * scale)), max(size, round(img.height * scale))), Image.BICUBIC)
        left, top = (img.width - size) // 2, (img.height - size) // 2
        out.append(np.asarray(img.crop((left, top, left + size, top + size))))
        if len(out) == n:
            break
    if len(out) < 2:
        raise RaycutError(f"{source}: fewer than 2 readable images for evaluation")
    return np.stack(out)


class Evaluator:
    """Scores a generator on the plan's subset (rank 0 only)."""

    def __init__(self, plan: EvalPlan) -> None:
        self.plan = plan
        self.net = None
        self.real_features = None
        if plan.metric == "kid":
            from pipelines.feature_extractors import ExtractorSpec, load_extractor

            spec = ExtractorSpec(**plan.extractor)
            self.net = load_extractor(spec)
            self.real_features = self._features(plan.images["real"])

    def _features(self, images: np.ndarray) -> np.ndarray:
        from pipelines.feature_extractors import features_of_images

        return features_of_images(self.net, images)

    def __call__(self, G: torch.nn.Module, device: torch.device) -> dict[str, float]:
        """{eval_<metric>: value, ...} of G's translations (fp32, eval mode)."""
        from jobs.train.in_process import translate_array

        fake = translate_array(G, self.plan.images["a"], device=str(device))
        if self.plan.metric == "colour_err":
            from pipelines.toy_eval import paired_metrics

            got = paired_metrics(fake, self.plan.images["truth"], self.plan.images["labels"])
            return {EVAL_PREFIX + k: v for k, v in got.items()}
        from pipelines.fid import fid_kid
        from pipelines.kid_error import kid_with_se

        features = self._features(fake)
        got = fid_kid(self.real_features, features)
        # KID's own error on this val set (the jackknife): on 32 images it is as large
        # as the differences between checkpoints, which is what choosing one has to know.
        _, se = kid_with_se(self.real_features, features)
        return {EVAL_PREFIX + "kid": got["kid"], EVAL_PREFIX + "kid_se": se, EVAL_PREFIX + "fid": got["fid"]}
