"""Run a segmenter on translated images and score it against their inputs' labels.

    (image, label) pairs -> image resized (bicubic), label resized (nearest) and mapped
    to train ids -> segmenter -> argmax -> one confusion matrix -> mIoU, accuracies

The segmenter is the user's TorchScript module (the paper used DRN-D-22 trained on
Cityscapes) or the toy benchmark's small one. It sees float (N, 3, H, W) normalised
as it was trained, and returns (N, C, h, w) logits; logits of another size are
resized to the label's bilinearly before the argmax.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cut_core.errors import RaycutError
from pipelines.feature_extractors import load_user_module
from pipelines.local_images import read_rgb
from pipelines.segmentation_metrics import CITYSCAPES_CLASSES, PAPER_SIZE, confusion_matrix, scores, to_train_ids

# How the segmenter expects its input, from uint8: ImageNet statistics (DRN and most
# torchvision backbones), plain [0, 1], or [-1, 1] (as raycut's generators).
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "symmetric": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


@dataclass(frozen=True)
class SegProtocol:
    size: tuple[int, int] | None = PAPER_SIZE  # (H, W) to score at; None: as stored
    label_kind: str = "cityscapes-ids"  # see segmentation_metrics.to_train_ids; "raw" keeps ids as they are
    normalize: str = "imagenet"
    num_classes: int = len(CITYSCAPES_CLASSES)
    batch_size: int = 8


def load_segmenter(path: str) -> nn.Module:
    return load_user_module(path, "--seg-model")


def resize_pair(image: np.ndarray, label: np.ndarray, size: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 and (H', W') ids -> both at ``size`` (H, W): bicubic for the
    image, nearest for the label, as the paper's protocol does."""
    if size is None:
        return image, label
    h, w = size
    img = np.asarray(Image.fromarray(image).resize((w, h), Image.BICUBIC))
    lab = np.asarray(Image.fromarray(label).resize((w, h), Image.NEAREST))
    return img, lab


@torch.no_grad()
def segment(net: nn.Module, images: np.ndarray, normalize: str) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, H, W) int64 predicted classes."""
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALIZATIONS[normalize])
    x = (torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    logits = net(x)
    if isinstance(logits, (tuple, list)):  # DRN's segmenter returns (logits, ...)
        logits = logits[0]
    if logits.shape[-2:] != x.shape[-2:]:
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return logits.argmax(1).numpy()


def confusion(net: nn.Module, images: Sequence[np.ndarray], labels: Sequence[np.ndarray], protocol: SegProtocol,
              progress: Any = None) -> np.ndarray:
    """(C, C) confusion of the segmenter on (H, W, 3) uint8 images against their
    (H, W) labels (ids of ``protocol.label_kind``)."""
    cm = np.zeros((protocol.num_classes, protocol.num_classes), np.int64)
    for start in range(0, len(images), protocol.batch_size):
        imgs, labs = [], []
        for img, lab in zip(images[start : start + protocol.batch_size], labels[start : start + protocol.batch_size]):
            lab = np.asarray(lab)
            if protocol.label_kind != "raw":
                lab = to_train_ids(lab, protocol.label_kind)
            img, lab = resize_pair(img, lab.astype(np.uint8), protocol.size)
            imgs.append(img)
            labs.append(lab)
        if len({im.shape for im in imgs}) > 1:
            raise RaycutError("images of different sizes: score them at a fixed size (the paper's 256x128)")
        for p, t in zip(segment(net, np.stack(imgs), protocol.normalize), labs):
            cm += confusion_matrix(p, t, protocol.num_classes)
        if progress is not None:
            progress.update(len(imgs))
    return cm


def score_images(net: nn.Module, images: Sequence[np.ndarray], labels: Sequence[np.ndarray], protocol: SegProtocol,
                 progress: Any = None) -> dict[str, float]:
    """mIoU, pixel and class accuracy of in-memory images."""
    return {**scores(confusion(net, images, labels, protocol, progress)), "n_images": len(images)}


def score_files(net: nn.Module, pairs: Sequence[tuple[str, str]], protocol: SegProtocol,
                progress: Any = None) -> dict[str, float]:
    """:func:`score_images` over (image file, label file) pairs, read a chunk at a time
    so memory stays flat on a whole dataset."""
    cm = np.zeros((protocol.num_classes, protocol.num_classes), np.int64)
    chunk = max(protocol.batch_size, 64)
    for start in range(0, len(pairs), chunk):
        part = pairs[start : start + chunk]
        images = [read_rgb(i) for i, _ in part]
        labels = [np.asarray(Image.open(lab)) for _, lab in part]
        cm += confusion(net, images, labels, protocol, progress)
    return {**scores(cm), "n_images": len(pairs)}
