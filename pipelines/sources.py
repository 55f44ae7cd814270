"""Where a domain's images come from: a source string -> a list of image files.

Forms of ``--data-a`` / ``--data-b`` (the layout is picked by the form of the string,
or named with a ``layout:`` prefix):

==========================================  ============================================
``DIR``                                     every image below DIR (recursive)
``'DIR/**/*.jpg'``                          a glob
``cyclegan:ROOT:trainA``                    a CycleGAN folder (trainA, trainB, valA, valB, testA, testB; A = trainA)
``gta5:ROOT``                               GTA5: ROOT/images/*.png (labels in ROOT/labels)
``cityscapes:ROOT[:split]``                 ROOT/leftImg8bit/{split}/{city}/*_leftImg8bit.png (default train)
``parquet:PATH[:column]``                   Parquet file(s) with an image-bytes column (default ``image``)
``s3://bucket/prefix``, ``gs://...``        anything pyarrow's filesystems open, with any form above
==========================================  ============================================
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from typing import Literal

import pyarrow.fs as pafs

from cut_core.errors import RaycutError

Layout = Literal["dir", "glob", "cyclegan", "gta5", "cityscapes", "parquet"]
LAYOUTS: tuple[str, ...] = ("dir", "glob", "cyclegan", "gta5", "cityscapes", "parquet")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
_CYCLEGAN_SPLITS = {"A": "trainA", "B": "trainB", **{s: s for s in ("trainA", "trainB", "valA", "valB", "testA", "testB")}}


@dataclass(frozen=True)
class Source:
    """A parsed source string. ``root`` is a local path or a URI."""

    layout: Layout
    root: str
    split: str = ""  # cyclegan: trainA ...; cityscapes: train / val / test
    column: str = "image"  # parquet: the image-bytes column

    def describe(self) -> str:
        extra = f" [{self.split}]" if self.split else ""
        return f"{self.layout}:{self.root}{extra}"


def parse_source(spec: str) -> Source:
    """Parse a source string (see the module docstring); one clear error if malformed."""
    spec = spec.strip()
    if not spec:
        raise RaycutError("empty data source; pass a folder, a glob, or layout:PATH (e.g. cyclegan:ROOT:trainA)")
    head, sep, rest = spec.partition(":")
    if sep and head in LAYOUTS and not rest.startswith("//"):
        return _with_layout(head, rest, spec)
    if spec.endswith(".parquet"):
        return Source("parquet", spec)
    if any(c in spec for c in "*?["):
        return Source("glob", spec)
    return Source("dir", spec.rstrip("/"))


def _with_layout(layout: str, rest: str, spec: str) -> Source:
    # The URI scheme may contain ':' too ('cyclegan:s3://b/p:trainA'): split from the right.
    if layout == "cyclegan":
        root, _, split = rest.rpartition(":")
        if not root or split not in _CYCLEGAN_SPLITS:
            raise RaycutError(f"{spec!r}: write cyclegan:ROOT:SPLIT with SPLIT one of trainA, trainB, valA, valB, testA, testB (or A, B)")
        return Source("cyclegan", root.rstrip("/"), split=_CYCLEGAN_SPLITS[split])
    if layout == "cityscapes":
        root, split = _split_optional(rest, ("train", "val", "test"))
        return Source("cityscapes", root.rstrip("/"), split=split or "train")
    if layout == "parquet":
        root, column = _split_optional(rest, None)
        return Source("parquet", root, column=column or "image")
    if not rest:
        raise RaycutError(f"{spec!r}: give a path after '{layout}:'")
    return Source(layout, rest.rstrip("/") if layout != "glob" else rest)  # type: ignore[arg-type]


def _split_optional(rest: str, allowed: tuple[str, ...] | None) -> tuple[str, str]:
    """'ROOT:extra' -> (ROOT, extra) when extra looks like the option, else (rest, '')."""
    root, sep, tail = rest.rpartition(":")
    if sep and root and "/" not in tail and (allowed is None or tail in allowed):
        return root, tail
    return rest, ""


def filesystem_for(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow filesystem and in-filesystem path for a local path or URI."""
    try:
        if "://" in uri:
            return pafs.FileSystem.from_uri(uri)
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types
        raise RaycutError(f"cannot open {uri}: {e}") from None


def read_bytes(path: str, fs: pafs.FileSystem | None = None) -> bytes:
    """A whole file: from the local disk, or through a pyarrow filesystem."""
    if fs is None:
        with open(path, "rb") as f:
            return f.read()
    with fs.open_input_file(path) as f:
        return f.readall()


def list_source_files(source: Source) -> tuple[pafs.FileSystem, list[str]]:
    """The files a source covers, sorted; stops at once with one line if there are none."""
    fs, path = filesystem_for(source.root)
    if source.layout == "parquet":
        files = _find(fs, path, (".parquet",))
    elif source.layout == "glob":
        files = _glob(fs, path)
    elif source.layout == "cyclegan":
        files = _find(fs, f"{path}/{source.split}", IMAGE_EXTENSIONS)
    elif source.layout == "gta5":
        files = _find(fs, f"{path}/images", IMAGE_EXTENSIONS)
    elif source.layout == "cityscapes":
        files = [f for f in _find(fs, f"{path}/leftImg8bit/{source.split}", (".png",)) if f.endswith("_leftImg8bit.png")]
    else:
        files = _find(fs, path, IMAGE_EXTENSIONS)
    if not files:
        raise RaycutError(f"no {'parquet files' if source.layout == 'parquet' else 'images'} found for {source.describe()}; check the path and the layout")
    return fs, files


@dataclass(frozen=True)
class Listing:
    """A source listed once: its filesystem, its files (sorted) and how many images it
    holds (files, or Parquet rows). Listing an s3 prefix of 100k frames takes many
    requests; a run lists each domain once and passes this on."""

    source: Source
    fs: pafs.FileSystem
    files: tuple[str, ...]
    size: int


def list_source(spec: str | Source | Listing) -> Listing:
    """``spec`` listed (a Listing is returned as is); the Parquet row counts come from
    the files' footers, no data is read. Stops with one line if there is nothing."""
    if isinstance(spec, Listing):
        return spec
    source = spec if isinstance(spec, Source) else parse_source(spec)
    fs, files = list_source_files(source)
    size = len(files)
    if source.layout == "parquet":
        import pyarrow.parquet as pq

        size = 0
        for f in files:
            with fs.open_input_file(f) as fh:
                size += pq.ParquetFile(fh).metadata.num_rows
    return Listing(source, fs, tuple(files), size)


def _find(fs: pafs.FileSystem, path: str, extensions: tuple[str, ...]) -> list[str]:
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise RaycutError(f"{path} does not exist")
    if info.type == pafs.FileType.File:
        return [path] if path.lower().endswith(extensions) else []
    selector = pafs.FileSelector(path, recursive=True)
    return sorted(
        f.path for f in fs.get_file_info(selector)
        if f.type == pafs.FileType.File and f.path.lower().endswith(extensions) and not f.base_name.startswith(".")
    )


def _glob(fs: pafs.FileSystem, pattern: str) -> list[str]:
    # List from the longest wildcard-free prefix, then match the whole pattern.
    parts = pattern.split("/")
    fixed = []
    for part in parts:
        if any(c in part for c in "*?["):
            break
        fixed.append(part)
    base = "/".join(fixed) or "."
    candidates = _find(fs, base, IMAGE_EXTENSIONS + (".parquet",))
    return [f for f in candidates if fnmatch.fnmatch(f, pattern) or fnmatch.fnmatch(f, pattern.replace("**/", ""))]
