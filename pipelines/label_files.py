"""Which label file belongs to which image, across the dataset layouts raycut reads.

An image and its label share their path relative to their roots and their stem, up
to Cityscapes' naming (``x_leftImg8bit.png`` <-> ``x_gtFine_labelIds.png``), and the
image's path may keep leading folders the label's lacks (GTA5's ``images/1.png`` <->
``labels/1.png``, a translated tree's ``testA/1.png`` <-> ``labels/testA/1.png``).
"""

from __future__ import annotations

import os
from pathlib import Path

_NAME_SUFFIXES = ("_leftImg8bit", "_gtFine", "_gtCoarse")  # Cityscapes image/label names differ here


def _key(rel: str) -> str:
    stem = str(Path(rel).with_suffix("")).replace(os.sep, "/")
    for suffix in _NAME_SUFFIXES:
        stem = stem.split(suffix)[0]
    return stem


def _tails(key: str) -> list[str]:
    """'a/b/c' -> ['a/b/c', 'b/c', 'c'] (most specific first)."""
    parts = key.split("/")
    return ["/".join(parts[i:]) for i in range(len(parts))]


def matching_labels(inputs: list[str], src_root: str, label_files: list[str], label_root: str) -> list[str]:
    """The label files that belong to ``inputs`` (every variant of a Cityscapes label)."""
    keys: set[str] = set()
    for f in inputs:
        keys.update(_tails(_key(os.path.relpath(f, src_root))))
    return [f for f in label_files if _key(os.path.relpath(f, label_root)) in keys]


def pair_with_labels(images: list[str], image_root: str, label_files: list[str], label_root: str,
                     prefer: tuple[str, ...] = ()) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """([(image, label)], [(image, why not)]): each image with its one label file.

    Where several label files share the image's key (Cityscapes keeps ``_labelIds``,
    ``_labelTrainIds``, ``_color`` and ``_instanceIds``), the first whose name ends with
    one of ``prefer`` (before the extension) is taken; with no such file it is an error
    for that image, not a guess."""
    by_key: dict[str, list[str]] = {}
    for f in sorted(label_files):
        by_key.setdefault(_key(os.path.relpath(f, label_root)), []).append(f)
    pairs, missing = [], []
    for img in images:
        found = next((by_key[t] for t in _tails(_key(os.path.relpath(img, image_root))) if t in by_key), None)
        if not found:
            missing.append((img, "no label file with the same relative path and stem"))
            continue
        if len(found) > 1:
            preferred = [f for s in prefer for f in found if Path(f).stem.endswith(s)]
            if not preferred:
                missing.append((img, f"{len(found)} label files match ({', '.join(Path(f).name for f in found[:4])}); "
                                "pass --label-kind to choose"))
                continue
            found = preferred
        pairs.append((img, found[0]))
    return pairs, missing
