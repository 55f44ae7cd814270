"""What a translate job reads, and where each output goes.

Any ingest source works: image files (local folders, globs and dataset layouts, or
the same on a pyarrow filesystem such as s3:// or gs://) and Parquet files holding
encoded images. Every input has

- an id, the manifest's ``input`` column, which is what a rerun skips on: the file
  path, or for a Parquet row its ``path`` column (when the table has one) or
  ``FILE#ROW``;
- an output path relative to ``--output``, without the extension: the file's path
  relative to the source root, or the row's ``path`` (relative to the common folder
  of all of them when absolute), or ``FILE_STEM/ROW`` (six digits). Inputs that would
  share an output (``a.png`` and ``a.jpg`` in one folder) keep their extension in it
  (``a.png.png``, ``a.jpg.png``), so that no output overwrites another.

Parquet rows travel by row group: the driver reads only the ids (the ``path`` column,
or the row counts), and a Ray Data task reads one row group's image column and emits
the rows still to do.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

import pyarrow.fs as pafs

from cut_core.errors import RaycutError
from pipelines.sources import Source, filesystem_for, list_source_files, read_bytes

PATH_COLUMN = "path"


@dataclass(frozen=True)
class Inputs:
    """A listed source. ``ids`` in source order; ``outs[id]`` the relative output stem."""

    source: Source
    fs: pafs.FileSystem
    ids: list[str]
    outs: dict[str, str]
    root: str = ""  # local file inputs: the source's root folder (labels are matched below it)
    mirror_root: str = ""  # local file inputs: outputs (and labels) mirror paths below this folder
    # Parquet only: per row group, (file, group index, first row) and the ids of its rows.
    groups: list[tuple[str, int, int, list[str]]] = field(default_factory=list)
    # The inputs whose output keeps their extension: without it they would share one.
    full_names: tuple[str, ...] = ()

    @property
    def is_parquet(self) -> bool:
        return self.source.layout == "parquet"

    def items(self, todo: set[str]) -> list[dict[str, Any]]:
        """Ray Data items for the inputs in ``todo``: {path, out} per file, or one item per
        Parquet row group that still has work ({file, group, first, rows: JSON [[row, id, out]]})."""
        if not self.is_parquet:
            return [{"path": i, "out": self.outs[i]} for i in self.ids if i in todo]
        items = []
        for file, group, first, ids in self.groups:
            rows = [[first + k, i, self.outs[i]] for k, i in enumerate(ids) if i in todo]
            if rows:
                items.append({"file": file, "group": group, "first": first, "rows": json.dumps(rows)})
        return items

    def head_bytes(self, n: int) -> list[tuple[str, bytes | None]]:
        """(id, encoded image) of the first ``n`` inputs in source order, read in the
        driver: what an int8 calibration looks at (the same ones on every rerun)."""
        first = self.ids[:n]
        if not self.is_parquet:
            fs = self.fs if is_remote(self.source) else None
            return [(i, read_bytes(i, fs)) for i in first]
        # Only the row groups that hold these rows are read, and only their rows kept.
        return [(row["path"], row["bytes"]) for item in self.items(set(first))
                for row in read_row_group(item, fs=self.fs, column=self.source.column)]


def is_remote(source: Source) -> bool:
    return "://" in source.root


def list_inputs(source: Source, *, labels_dir: str | None = None, output_dir: str | None = None) -> Inputs:
    """List a source's inputs and their output paths; one clear error for a bad source.

    With ``labels_dir`` (local file inputs only) outputs mirror paths below the common
    folder of the images and the labels, so a GTA5 layout (images/, labels/) comes out
    as a GTA5 layout. Files below ``output_dir`` or ``labels_dir`` are not inputs, where
    those folders lie inside the input's (``--input data --output data/real``): a rerun
    would otherwise translate the translations, or the label maps."""
    if labels_dir is not None and (is_remote(source) or source.layout == "parquet"):
        raise RaycutError(f"--labels works with local image files; {source.describe()} is "
                          f"{'Parquet' if source.layout == 'parquet' else 'remote'}: copy the images to a folder first")
    fs, files = list_source_files(source)
    local_files = not is_remote(source) and source.layout != "parquet"
    root = _local_root(source) if local_files else ""
    mirror = os.path.commonpath([root, os.path.abspath(labels_dir)]) if labels_dir else root
    if local_files and output_dir and os.path.abspath(output_dir) == mirror:
        # Outputs mirror the inputs' paths below this folder: each would land on its input.
        raise RaycutError(f"--output {output_dir} is the folder the inputs' paths are mirrored from: outputs would "
                          "replace the inputs they share a name with; choose another folder")
    if not is_remote(source):
        inside = [os.path.abspath(d) for d in (output_dir, labels_dir) if d]
        files = [f for f in files if not any(os.path.abspath(f).startswith(d + os.sep) for d in inside)]
        if not files:
            raise RaycutError(f"{source.describe()} holds no input outside --output and --labels")
    if source.layout == "parquet":
        return _parquet_inputs(source, fs, files)
    if is_remote(source):
        remote_root = _remote_root(source, fs)
        outs, full = output_stems({f: posixpath.relpath(f, remote_root) for f in files}, source)
        return Inputs(source, fs, files, outs, full_names=full)
    outs, full = output_stems({f: os.path.relpath(f, mirror) for f in files}, source)
    return Inputs(source, fs, files, outs, root=root, mirror_root=mirror, full_names=full)


def _local_root(source: Source) -> str:
    """The folder outputs are mirrored from: the dataset root the user named (the folder
    holding it, when it names one image file; the fixed part of a glob)."""
    if source.layout == "glob":
        return os.path.abspath(os.path.dirname(_fixed_prefix(source.root)) or ".")
    root = os.path.abspath(source.root)
    return os.path.dirname(root) if os.path.isfile(root) else root


def _remote_root(source: Source, fs: pafs.FileSystem) -> str:
    """:func:`_local_root` for a path inside a pyarrow filesystem."""
    _, path = filesystem_for(source.root)
    if source.layout == "glob":
        return posixpath.dirname(_fixed_prefix(path))
    return posixpath.dirname(path) if fs.get_file_info(path).type == pafs.FileType.File else path


def _fixed_prefix(pattern: str) -> str:
    """A glob's text before its first wildcard."""
    return pattern.split("*")[0].split("?")[0].split("[")[0]


def output_stems(rels: dict[str, str], source: Source) -> tuple[dict[str, str], tuple[str, ...]]:
    """Each input's output path without the extension, from its path relative to the
    output root: the path without its extension, or, where two inputs would share that
    (``a.png`` and ``a.jpg``, which translate to one ``a.png``), the whole name, so each
    keeps an output of its own. Returns the outputs and the inputs named in full; one
    clear error if names still collide."""
    rels = {i: rel.replace(os.sep, "/") for i, rel in rels.items()}
    stems = {i: posixpath.splitext(rel)[0] for i, rel in rels.items()}
    shared = {stem for stem, n in Counter(stems.values()).items() if n > 1}
    outs = {i: rels[i] if stem in shared else stem for i, stem in stems.items()}
    if len(set(outs.values())) != len(outs):
        first = next(out for out, n in Counter(outs.values()).items() if n > 1)
        both = [i for i, out in outs.items() if out == first][:2]
        raise RaycutError(f"{source.describe()}: {both[0]!r} and {both[1]!r} would both be written as {first!r} "
                          "(plus the format's extension); rename one of them")
    return outs, tuple(i for i, stem in stems.items() if stem in shared)


def _parquet_inputs(source: Source, fs: pafs.FileSystem, files: list[str]) -> Inputs:
    import pyarrow.parquet as pq

    _, root = filesystem_for(source.root)
    root = posixpath.dirname(root) if fs.get_file_info(root).type == pafs.FileType.File else root
    groups: list[tuple[str, int, int, list[str]]] = []
    named: list[str] = []  # the path-column values, to make absolute ones relative
    for file in files:
        with fs.open_input_file(file) as fh:
            pf = pq.ParquetFile(fh)
            names = pf.schema_arrow.names
            if source.column not in names:
                raise RaycutError(f"{file} has no column {source.column!r} (columns: {', '.join(names)}); "
                                  "use parquet:PATH:COLUMN")
            has_path = PATH_COLUMN in names and source.column != PATH_COLUMN
            paths = pf.read(columns=[PATH_COLUMN]).column(0).to_pylist() if has_path else None
            first = 0
            for g in range(pf.metadata.num_row_groups):
                n = pf.metadata.row_group(g).num_rows
                ids = ([str(p) for p in paths[first:first + n]] if paths is not None
                       else [f"{file}#{first + k}" for k in range(n)])
                groups.append((file, g, first, ids))
                first += n
            if paths is not None:
                named += [str(p) for p in paths]
    ids = [i for *_, group_ids in groups for i in group_ids]
    if len(set(ids)) != len(ids):
        dup = next(i for i, n in Counter(ids).items() if n > 1)
        raise RaycutError(f"{source.describe()}: the input {dup!r} appears twice; each row needs its own "
                          f"{PATH_COLUMN!r} value (it names the output)")
    named_set = set(named)
    absolute = [p for p in named if p.startswith("/")]
    common = posixpath.commonpath(absolute) if absolute else ""
    if absolute and len(absolute) == 1:
        common = posixpath.dirname(common)
    rels = {}
    for i in ids:
        if i in named_set:
            rel = posixpath.relpath(i, common) if i.startswith("/") else posixpath.normpath(i)
        else:
            file, _, row = i.rpartition("#")
            rel = f"{posixpath.splitext(posixpath.relpath(file, root))[0]}/{int(row):06d}"
        if rel.startswith("../") or rel == "..":
            raise RaycutError(f"{source.describe()}: the {PATH_COLUMN!r} value {i!r} points outside the output folder")
        rels[i] = rel
    outs, full = output_stems(rels, source)
    return Inputs(source, fs, ids, outs, groups=groups, full_names=full)


def read_row_group(item: dict[str, Any], *, fs: pafs.FileSystem, column: str) -> Iterator[dict[str, Any]]:
    """Ray Data flat_map: one Parquet row group item -> {path, out, bytes} per row to do."""
    import pyarrow.parquet as pq

    with fs.open_input_file(item["file"]) as fh:
        images = pq.ParquetFile(fh).read_row_group(int(item["group"]), columns=[column]).column(0)
    first = int(item["first"])
    for row, input_id, out in json.loads(item["rows"]):
        yield {"path": input_id, "out": out, "bytes": images[row - first].as_py()}
