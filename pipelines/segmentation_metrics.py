"""Label preservation: a segmenter's predictions on translated images against the
labels of their inputs, scored from one confusion matrix.

The paper's Cityscapes protocol (as in pix2pix and CUT): translated images resized to
256x128 with bicubic resampling, labels resized with nearest neighbour, the 19
Cityscapes train ids scored, 255 ignored; mean IoU ("mAP" in the paper's tables),
pixel accuracy and mean class accuracy.
"""

from __future__ import annotations

import numpy as np

IGNORE = 255
CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                      "motorcycle", "bicycle")
# Cityscapes label ids (0..33, also GTA5's label encoding) -> the 19 train ids; others ignored.
_ID_TO_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                   26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
LABEL_KINDS = ("train-ids", "cityscapes-ids")
PAPER_SIZE = (128, 256)  # (H, W) the paper scores at


def id_to_train_id_lut() -> np.ndarray:
    lut = np.full(256, IGNORE, np.uint8)
    for label_id, train_id in _ID_TO_TRAIN_ID.items():
        lut[label_id] = train_id
    return lut


def to_train_ids(label: np.ndarray, kind: str) -> np.ndarray:
    """(H, W) integer labels -> (H, W) uint8 train ids with 255 for ignored pixels.

    ``train-ids``: already train ids (``*_gtFine_labelTrainIds.png``); values outside
    0..18 become 255. ``cityscapes-ids``: Cityscapes/GTA5 label ids (``*_labelIds.png``
    and GTA5's ``labels/``), mapped with the official table."""
    label = np.asarray(label)
    if label.ndim == 3:  # a label saved as RGB with equal channels
        label = label[..., 0]
    if kind == "cityscapes-ids":
        return id_to_train_id_lut()[label.astype(np.uint8)]
    out = label.astype(np.uint8)
    out[out >= len(CITYSCAPES_CLASSES)] = IGNORE
    return out


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore: int = IGNORE) -> np.ndarray:
    """(C, C) int64 counts, rows = true class, columns = predicted class; pixels whose
    target is ``ignore`` (or outside 0..C-1) are left out."""
    t = np.asarray(target).ravel().astype(np.int64)
    p = np.asarray(pred).ravel().astype(np.int64)
    keep = (t != ignore) & (t >= 0) & (t < num_classes)
    p = np.clip(p[keep], 0, num_classes - 1)
    return np.bincount(t[keep] * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


def scores(cm: np.ndarray) -> dict[str, float]:
    """mIoU, pixel accuracy and mean class accuracy of a confusion matrix, averaged
    over the classes that occur in the labels or the predictions (others are NaN)."""
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    gt, predicted = cm.sum(1), cm.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (gt + predicted - tp)
        acc = tp / gt
    return {"mIoU": float(np.nanmean(iou)), "pixel_acc": float(tp.sum() / max(cm.sum(), 1.0)),
            "class_acc": float(np.nanmean(acc))}
