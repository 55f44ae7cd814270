"""The manifest of a translation's output folder: one Parquet row per attempt at an
input (input, output, size, status, error, model, what G ran in), parts that sort in
write order over every run, so the latest row of an input is its truth across reruns
and kills; plus the output tree's housekeeping (partial files a kill left, label
copies).

    <output>/manifest/part-RUN-INDEX-PID.parquet   RUN grows with every run (claimed
                                                   atomically), INDEX with every flush
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from pipelines.translate_io import TMP_SUFFIX

MANIFEST_DIR = "manifest"  # Parquet parts, one per flush: <output>/manifest/part-*.parquet
MANIFEST_COLUMNS = (("input", "string"), ("output", "string"), ("height", "int32"), ("width", "int32"),
                    ("status", "string"), ("error", "string"), ("model_uri", "string"), ("model_version", "string"),
                    # What G ran in for this row (cut_core.hardware.TranslationPaths.label): each actor
                    # settles auto for its own device, so on a mixed cluster rows can differ.
                    # Parts written before this column read it as null.
                    ("fast_path", "string"),
                    # The weights that made the row's output (cut_core.model_dir.model_digest):
                    # an alias such as models:/x@prod moves between versions, a model folder
                    # may be overwritten. Null in parts written before this column.
                    ("model_digest", "string"))


def manifest_schema():
    # pyarrow is imported here, not at module level: the stages' module graph stays
    # importable on machines that have only torch and Pillow.
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, kind)()) for name, kind in MANIFEST_COLUMNS])


def _part_order(path: Path) -> tuple[int, int, int]:
    """Write order of a manifest part: ``part-RUN-INDEX-PID`` (zero-padded run id that
    grows with every run, then the part index). Parts of the older naming,
    ``part-INDEX-PID``, come first, as run 0."""
    fields = path.name.removesuffix(".parquet").split("-")[1:]
    try:
        numbers = [int(f) for f in fields]
    except ValueError:
        return (0, 0, 0)
    if len(numbers) == 3:
        return (numbers[0], numbers[1], numbers[2])
    return (0, numbers[0], numbers[1] if len(numbers) > 1 else 0)


def manifest_parts(out_root: str | Path) -> list[Path]:
    """The manifest's parts in write order over every run (rows of a killed run count)."""
    folder = Path(out_root) / MANIFEST_DIR
    return sorted(folder.glob("part-*.parquet"), key=_part_order) if folder.is_dir() else []


def read_manifest(out_root: str | Path, columns: list[str] | None = None):
    """Every row written so far (all parts, in write order) as a pyarrow Table; empty
    when there is none."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = manifest_schema()
    if columns:
        schema = pa.schema([schema.field(c) for c in columns])
    parts = manifest_parts(out_root)
    if not parts:
        return schema.empty_table()
    return pa.concat_tables([pq.read_table(p, schema=schema, columns=columns) for p in parts])


def latest_rows(out_root: str | Path, columns: list[str]):
    """The last row of each input over every run (the manifest's truth), computed in
    Arrow: a million rows take about a second, not a Python loop over dicts."""
    return _last_per(read_manifest(out_root, columns=sorted(set(columns) | {"input"})), "input")


def _last_per(table, key: str):  # noqa: ANN001, ANN202 - pyarrow Tables
    """The last row (in write order) of each value of ``key``."""
    import numpy as np
    import pyarrow as pa

    table = table.append_column("_row", pa.array(np.arange(len(table), dtype=np.int64)))
    last = table.group_by(key).aggregate([("_row", "max")])
    return table.take(last["_row_max"]).drop_columns(["_row"])


def done_inputs(out_root: str | Path) -> set[str]:
    """Inputs whose latest manifest row is "done" and whose output file exists."""
    import pyarrow.compute as pc

    latest = latest_rows(out_root, ["output", "status"])
    done = latest.filter(pc.equal(latest["status"], "done"))
    return {i for i, o in zip(done["input"].to_pylist(), done["output"].to_pylist()) if os.path.isfile(o)}


def outputs_made(out_root: str | Path) -> dict[str, dict[str, Any]]:
    """Each output file that exists -> the model of the last "done" row that wrote it
    (``model_uri``, ``model_version``, ``model_digest``): who made the file there now,
    whatever format or input a later run used."""
    import pyarrow.compute as pc

    table = read_manifest(out_root, columns=["output", "status", "model_uri", "model_version", "model_digest"])
    rows = _last_per(table.filter(pc.equal(table["status"], "done")).drop_columns(["status"]), "output").to_pylist()
    return {row["output"]: row for row in rows if os.path.isfile(row["output"])}


def made_by(row: dict[str, Any], *, digest: str, model_uri: str, model_version: str) -> bool:
    """Whether a manifest row's output came from this model: by its weights' digest, or,
    for rows written before the digest was kept, by the same URI and registry version."""
    if row.get("model_digest"):
        return row["model_digest"] == digest
    return row.get("model_uri") == model_uri and (row.get("model_version") or "") == model_version


def new_manifest_run(out_root: str | Path) -> int:
    """Claim the next run id of an output folder (1 + the highest seen), atomically:
    two runs started at once never share one."""
    folder = Path(out_root) / MANIFEST_DIR
    folder.mkdir(parents=True, exist_ok=True)
    seen = [_part_order(p)[0] for p in folder.glob("part-*.parquet")]
    seen += [int(p.name.split("-")[1]) for p in folder.glob("run-*.claim") if p.name.split("-")[1].isdigit()]
    run = max(seen, default=0) + 1
    while True:
        try:
            os.close(os.open(folder / f"run-{run:06d}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return run
        except FileExistsError:
            run += 1


def append_manifest(out_root: str | Path, rows: list[dict[str, Any]], index: int, *, run: int,
                    metadata: dict[str, str] | None = None) -> Path:
    """Write one manifest part atomically (temporary name, then rename), named so that
    parts sort in write order across runs: ``part-RUN-INDEX-PID.parquet``. ``metadata``
    goes into the part's key-value metadata (the job's model_busy so far)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(out_root) / MANIFEST_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"part-{run:06d}-{index:06d}-{os.getpid():010d}.parquet"
    tmp = path.with_name(path.name + TMP_SUFFIX)
    schema = manifest_schema().with_metadata({f"raycut.{k}": v for k, v in (metadata or {}).items()})
    try:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path


def remove_partial_files(out_root: str | Path) -> int:
    """Delete the temporary files a killed run left behind; returns how many."""
    count = 0
    for p in Path(out_root).rglob(f"*{TMP_SUFFIX}"):
        p.unlink(missing_ok=True)
        count += 1
    return count


def copy_labels(label_files: list[str], mirror_root: str, out_root: str, *, link: bool = False) -> int:
    """Copy (or hard-link) label files into the output tree, mirrored like the images."""
    n = 0
    for f in label_files:
        target = Path(out_root) / os.path.relpath(f, mirror_root)
        if target.is_file():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}{TMP_SUFFIX}")
        if link:
            try:
                os.link(f, tmp)
            except OSError:
                shutil.copyfile(f, tmp)
        else:
            shutil.copyfile(f, tmp)
        os.replace(tmp, target)
        n += 1
    return n
