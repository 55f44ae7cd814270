"""`raycut translate`: a trained generator over a whole dataset, at full resolution.

    --model (models:/NAME@ALIAS, models:/NAME/N, runs:/ID/model, or a model dir)
    -> list --input: files, or Parquet rows (pipelines.translate_inputs), minus what
       the manifest marks done -> Ray Data: decode tasks -> G actor pool (autoscaling,
       --concurrency MIN-MAX; pipelines.translate) -> encode + write tasks
       (pipelines.translate_io)
       -> outputs mirroring the input tree
    -> manifest parts (pipelines.manifest) as rows stream in -> labels copied alongside -> summary

Rerunning the same command finishes an interrupted job: done outputs are skipped,
temporary files of a killed run are removed, failed inputs are tried again.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from cut_core.cores import threads_per_worker, usable_cores
from cut_core.errors import RaycutError
from cut_core.config import TRANSLATE_PRECISIONS as PRECISIONS
from jobs.disk import describe_room, is_disk_full, write_whole
from jobs.progress import Progress
from jobs.ray_runtime import (compute_runtime_env, on_this_machine, parse_pool, require_gpus, start_ray,
                              without_progress_bars)
from jobs.translate.spec import DEFAULT_MAX_GPU_ACTORS, TranslateOptions
from pipelines.decode import TOO_LARGE
from pipelines.label_files import matching_labels
from pipelines.sources import parse_source
from pipelines.manifest import (append_manifest, copy_labels, done_inputs, made_by, new_manifest_run, outputs_made,
                                remove_partial_files)
from pipelines.translate import GeneratorStage, TranslateFiles, calibrate_from_bytes
from pipelines.translate_io import OUTPUT_FORMATS, ROW_COLUMNS, TranslateSpec, encode_and_write, read_and_decode
from pipelines.translate_inputs import Inputs, is_remote, list_inputs, read_row_group

CLUSTER_CPU_ACTOR_THREADS = 4  # torch threads (and logical CPUs) of one CPU G actor on a cluster
CALIBRATION_FILE = "int8_calibration.json"
FLUSH_SECONDS = 30.0


@dataclass
class TranslateSummary:
    done: int
    skipped: int
    failed: list[tuple[str, str]]
    labels: int
    output: Path
    model_uri: str
    model_version: str
    seconds: float
    model_busy: float | None = None  # fraction of the G actors' time inside G
    g_actors: int = 0
    fast_paths: dict[str, int] = field(default_factory=dict)  # what G ran in -> rows (the manifest's fast_path)

    def line(self) -> str:
        busy = (f", model busy {self.model_busy:.0%} of the time over {self.g_actors} G actor(s)"
                if self.model_busy is not None else "")
        ran = ""
        if len(self.fast_paths) == 1:
            ran = f"; G ran in {next(iter(self.fast_paths))}"
        elif self.fast_paths:  # a mixed cluster: each actor settles auto for its own device
            ran = "; G ran in " + ", ".join(f"{k} ({n} rows)" for k, n in sorted(self.fast_paths.items()))
        return (f"[translate] {self.done} translated, {self.skipped} already done (skipped), {len(self.failed)} failed, "
                f"{self.labels} label files copied -> {self.output} in {self.seconds:.1f} s{busy}{ran}")


def run_translate(opts: TranslateOptions) -> TranslateSummary:
    t0 = time.perf_counter()
    _check(opts)
    source = parse_source(opts.input)
    if opts.labels and not Path(opts.labels).is_dir():
        raise RaycutError(f"--labels {opts.labels} is not a folder")
    inputs = list_inputs(source, labels_dir=opts.labels, output_dir=opts.output)
    from cut_core.model_dir import model_digest
    from jobs.tracking import resolve_model_dir

    model_dir = resolve_model_dir(opts.model)
    version = _model_version(opts.model)
    digest = model_digest(model_dir)
    out = Path(opts.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    removed = remove_partial_files(out)
    if removed:
        print(f"[translate] removed {removed} partial files of an interrupted run", flush=True)
    done = _already_done(inputs, out, opts, version, digest)
    todo = {i for i in inputs.ids if i not in done}
    skipped = len(inputs.ids) - len(todo)
    print(f"[translate] {len(inputs.ids)} inputs: {skipped} already done, {len(todo)} to translate with {opts.model}",
          flush=True)
    if inputs.full_names:
        shown = ", ".join(f"{inputs.outs[i]}.{opts.fmt}" for i in inputs.full_names[:3])
        print(f"[translate] {len(inputs.full_names)} inputs share a name with another of a different extension: "
              f"their outputs keep it ({shown}{', ...' if len(inputs.full_names) > 3 else ''})", flush=True)
    spec = TranslateSpec(model_dir=str(model_dir), out_root=str(out), fmt=opts.fmt, png_level=opts.png_level,
                         jpeg_quality=opts.jpeg_quality,
                         precision=opts.precision, channels_last=opts.channels_last, tile=opts.tile, overlap=opts.overlap,
                         max_pixels=int(opts.max_megapixels * 1e6))
    failed: list[tuple[str, str]] = []
    n_done = 0
    if todo and _wants_int8(opts, model_dir):
        spec = replace(spec, int8_ranges=_int8_ranges(inputs, spec, opts, version, digest))
    stats: dict[str, Any] = {}
    if todo:
        n_done, failed, stats = _run(inputs, todo, spec, opts, version, digest)
    labels = 0
    if opts.labels:
        finished = done_inputs(out)  # read the manifest once, after the run
        translated = [f for f in inputs.ids if f in finished]
        label_files = sorted(str(p) for p in Path(opts.labels).rglob("*") if p.is_file())
        mine = matching_labels(translated, inputs.root, label_files, os.path.abspath(opts.labels))
        labels = copy_labels(mine, inputs.mirror_root, str(out), link=opts.link_labels)
    summary = TranslateSummary(done=n_done, skipped=skipped, failed=failed, labels=labels, output=out,
                               model_uri=opts.model, model_version=version, seconds=time.perf_counter() - t0,
                               model_busy=stats.get("model_busy"), g_actors=int(stats.get("g_actors", 0)),
                               fast_paths=stats.get("fast_paths", {}))
    print(summary.line(), flush=True)
    for path, reason in failed[:20]:
        print(f"  failed {path}: {reason}", flush=True)
    if len(failed) > 20:
        print(f"  ... and {len(failed) - 20} more (all in {out}/manifest)", flush=True)
    too_large = sum(reason.startswith(TOO_LARGE) for _, reason in failed)
    if too_large:
        print(f"[translate] {too_large} inputs are over --max-megapixels {opts.max_megapixels:g}: if they are real "
              f"images, run again with a larger value (and --tile 1024 to bound G's memory): a rerun translates only what "
              f"failed",
              flush=True)
    return summary


def _already_done(inputs: Inputs, out: Path, opts: TranslateOptions, version: str, digest: str) -> set[str]:
    """The inputs this run skips: their output (in this --format) is there, made by this
    model.

    An output there by another model (an alias moved to a new version, a model folder
    written over) is never kept as this model's, nor replaced without being asked: the
    run stops before it starts unless --overwrite says to translate those again."""
    made = outputs_made(out)
    done, by_other = set(), {}
    for i in inputs.ids:
        row = made.get(str(out / f"{inputs.outs[i]}.{opts.fmt}"))
        if row is None:
            continue
        if made_by(row, digest=digest, model_uri=opts.model, model_version=version):
            done.add(i)
        else:
            by_other[i] = row
    if by_other and not opts.overwrite:
        row = next(iter(by_other.values()))
        theirs = _model_words(row["model_uri"], row["model_version"] or "", row["model_digest"])
        raise RaycutError(f"--output {out} holds {len(by_other)} translations of these inputs by another model "
                          f"({theirs}; this run's: {_model_words(opts.model, version, digest)}): pass another --output, "
                          f"or --overwrite to translate them again with this one")
    if by_other:
        print(f"[translate] --overwrite: {len(by_other)} outputs by another model will be translated again", flush=True)
    return done


def _model_words(uri: str, version: str, digest: str | None) -> str:
    """``models:/x@prod version 3, weights 0f3a9c21``"""
    return uri + (f" version {version}" if version else "") + (f", weights {digest[:8]}" if digest else "")


def parse_concurrency(text: str | int | None, *, use_gpu: bool, local: bool = True) -> tuple[int, int]:
    """``--concurrency``: ``N`` (a fixed pool) or ``MIN-MAX`` (a pool that grows as
    nodes join). Default: ``1-DEFAULT_MAX_GPU_ACTORS`` on GPUs or on a cluster (actors
    are added as nodes of an autoscaling cluster come up; nothing is sized at launch);
    on a local CPU-only Ray, 1 actor that uses the machine's cores."""
    grow = use_gpu or not local
    return parse_pool(text, default=(1, DEFAULT_MAX_GPU_ACTORS) if grow else (1, 1), what="--concurrency")


def _run(inputs: Inputs, todo: set[str], spec: TranslateSpec, opts: TranslateOptions,
         version: str, digest: str) -> tuple[int, list[tuple[str, str]], dict[str, Any]]:
    import ray

    cpus = usable_cores()
    start_ray(cpus)
    require_gpus(opts.gpus_per_actor, "--gpus-per-actor")
    use_gpu = opts.gpus_per_actor > 0
    local = on_this_machine()
    low, high = parse_concurrency(opts.concurrency, use_gpu=use_gpu, local=local)
    without_progress_bars()
    items = inputs.items(todo)
    if inputs.is_parquet:
        # One item per row group: a task reads its image column and emits the rows to do.
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 1000)))
        ds = ds.flat_map(read_row_group, fn_kwargs={"fs": inputs.fs, "column": inputs.source.column})
    else:
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // opts.batch_size, 1000)))
    # A GPU actor needs one core to feed its GPU; decode and encode have the rest. CPU
    # actors on this machine share its cores (cores / max actors torch threads each); on
    # a cluster each CPU actor takes a fixed share of a node, so the pool grows by nodes.
    threads = 1 if use_gpu else threads_per_worker(high) if local else CLUSTER_CPU_ACTOR_THREADS
    fs = inputs.fs if is_remote(inputs.source) else None
    pool = ray.data.ActorPoolStrategy(min_size=low, max_size=high)
    model_args = {"spec": asdict(spec), "device": "cuda" if use_gpu else "cpu", "threads": threads}
    # Ray Data gives a GPU map one CPU unless told otherwise, which is the feeding core;
    # naming num_cpus beside num_gpus draws its "experimental" warning on every run.
    g_cpus = {} if use_gpu else {"num_cpus": threads}
    if opts.staged:
        ds = ds.map_batches(read_and_decode, fn_kwargs={"max_pixels": spec.max_pixels, "filesystem": fs},
                            batch_size=opts.batch_size, batch_format="numpy", num_cpus=1)
        ds = ds.map_batches(GeneratorStage, fn_constructor_kwargs=model_args, batch_size=opts.batch_size,
                            batch_format="numpy", compute=pool, num_gpus=opts.gpus_per_actor, **g_cpus,
                            runtime_env=compute_runtime_env())
        ds = ds.map_batches(encode_and_write, fn_kwargs={"spec": asdict(spec)}, batch_size=opts.batch_size,
                            batch_format="numpy", num_cpus=1)
    else:  # the single-actor job: every stage in one actor (kept for the benchmark)
        ds = ds.map_batches(TranslateFiles, fn_constructor_kwargs={**model_args, "filesystem": fs},
                            batch_size=opts.batch_size, batch_format="numpy", compute=pool,
                            num_gpus=opts.gpus_per_actor, **g_cpus,
                            runtime_env=compute_runtime_env())
    bar = Progress("translate", len(todo), unit="img", every=max(1, min(50, len(todo) // 20)), stream=None)
    pending: list[dict] = []
    run = new_manifest_run(spec.out_root)  # this run's parts sort after every earlier run's
    parts, last_flush, n_done = 0, time.monotonic(), 0
    failed: list[tuple[str, str]] = []
    busy: dict[str, tuple[float, float]] = {}  # actor -> (seconds in G, seconds alive), running totals
    ran: Counter[str] = Counter()  # what G ran in -> rows

    def flush() -> None:
        nonlocal parts, pending, last_flush
        append_manifest(spec.out_root, pending, parts, run=run, metadata={"model_busy": f"{model_busy(busy):.4f}"})
        parts, pending, last_flush = parts + 1, [], time.monotonic()

    full = False  # the output disk filled: every later write would fail too, so the job stops
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for i in range(len(batch["input"])):
                row = {k: (int(batch[k][i]) if k in ("height", "width") else str(batch[k][i])) for k in ROW_COLUMNS}
                row.update(model_uri=opts.model, model_version=version, model_digest=digest,
                           fast_path=str(batch["fast_path"][i]))
                ran[row["fast_path"]] += 1
                pending.append(row)
                if row["status"] == "done":
                    n_done += 1
                else:
                    failed.append((row["input"], row["error"]))
                    full = full or is_disk_full(row["error"])
                actor = str(batch["actor"][i])
                busy[actor] = max(busy.get(actor, (0.0, 0.0)), (float(batch["busy_s"][i]), float(batch["wall_s"][i])))
            bar.update(len(batch["input"]))
            if full:
                break
            if len(pending) >= opts.manifest_part_rows or time.monotonic() - last_flush > FLUSH_SECONDS:
                flush()
    except KeyboardInterrupt:
        # Ctrl-C: the rows this driver holds are written, so a rerun skips those outputs.
        if pending:
            flush()
        raise KeyboardInterrupt(f"{n_done} outputs of this run are in {spec.out_root}/manifest; the same command "
                                f"goes on with the other {len(todo) - n_done} inputs") from None
    except OSError as e:  # the manifest's own write
        if not is_disk_full(e):
            raise
        full = True
    if full:
        raise RaycutError(_disk_full_stop(spec.out_root, n_done, pending, flush))
    if pending:
        flush()
    return n_done, failed, {"model_busy": model_busy(busy), "g_actors": float(len(busy)), "fast_paths": dict(ran)}


def _disk_full_stop(out_root: str, n_done: int, pending: list[dict], flush: Callable[[], None]) -> str:
    """The line for a job whose output disk filled: what the manifest now records (a
    rerun skips exactly that) after one last try at writing the rows held here."""
    unrecorded = sum(row["status"] == "done" for row in pending)
    if pending:
        try:
            flush()
            unrecorded = 0
        except OSError:
            pass  # still full: those outputs are translated again by the rerun
    kept = f"{n_done - unrecorded} outputs of this run are recorded in its manifest" + (
        f" ({unrecorded} more were written but not recorded: the rerun makes them again)" if unrecorded else "")
    return (f"the output folder's disk is full: {describe_room(out_root)}; the job stopped. {kept}. Free space "
            f"and run the same command again: it goes on with the inputs not recorded")


def model_busy(busy: dict[str, tuple[float, float]]) -> float:
    """The fraction of the G actors' time spent inside G (1.0: the model never waited)."""
    wall = sum(w for _, w in busy.values())
    return sum(b for b, _ in busy.values()) / wall if wall > 0 else 0.0


def _int8_ranges(inputs: Inputs, spec: TranslateSpec, opts: TranslateOptions, version: str,
                 digest: str) -> dict[str, list[float]]:
    """The int8 ranges for this output folder: measured once on the first inputs and
    kept in CALIBRATION_FILE, so a rerun (after a crash, or with more inputs) goes on
    with the very network that made the outputs already there."""
    path = Path(spec.out_root) / CALIBRATION_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        made = {"model_uri": saved.get("model"), "model_version": saved.get("model_version"),
                "model_digest": saved.get("model_digest")}
        if made_by(made, digest=digest, model_uri=opts.model, model_version=version):
            print(f"[translate] int8: ranges from {path} (calibrated on {len(saved['inputs'])} images)", flush=True)
            return saved["ranges"]
        theirs = _model_words(saved.get("model") or "?", saved.get("model_version") or "", saved.get("model_digest"))
        print(f"[translate] int8: {path} is for another model ({theirs}); calibrating again", flush=True)
    t = time.perf_counter()
    # A few spare inputs, in case some of the first do not decode.
    head = inputs.head_bytes(opts.calibration_images + 8)
    ranges, used = calibrate_from_bytes(spec.model_dir, head, opts.calibration_images, max_pixels=spec.max_pixels)
    record = {"model": opts.model, "model_version": version, "model_digest": digest, "inputs": used, "ranges": ranges}
    write_whole(path, json.dumps(record, indent=1) + "\n")
    print(f"[translate] int8: calibrated on the first {len(used)} readable inputs in {time.perf_counter() - t:.1f} s -> {path}",
          flush=True)
    return ranges


def _wants_int8(opts: TranslateOptions, model_dir: Path) -> bool:
    """int8 asked for, or ``auto`` on CPU actors of a ResNet G where this machine runs
    int8 fast (cut_core.hardware). Says what ``auto`` and an explicit bf16 mean here."""
    from cut_core.hardware import resolve_translation

    if opts.gpus_per_actor > 0:
        return False
    resnet = json.loads((model_dir / "config.json").read_text()).get("model", {}).get("netG", "resnet") == "resnet"
    paths = resolve_translation(opts.precision, opts.channels_last, "cpu", int8_ok=resnet)
    if paths.paths is not None:
        print(f"[translate] fast paths on this machine's CPU: {paths.summary} ({paths.paths.reason})", flush=True)
    for line in paths.warnings:
        print(f"[translate] warning: {line}", flush=True)
    return paths.precision == "int8"


def _check(opts: TranslateOptions) -> None:
    if opts.fmt not in OUTPUT_FORMATS:
        raise RaycutError(f"--format must be one of {', '.join(OUTPUT_FORMATS)}, not {opts.fmt}")
    if not 0 <= opts.png_level <= 9 or not 1 <= opts.jpeg_quality <= 100:
        raise RaycutError(f"--png-level must be 0-9 and --jpeg-quality 1-100 (got {opts.png_level}, {opts.jpeg_quality})")
    parse_concurrency(opts.concurrency, use_gpu=opts.gpus_per_actor > 0)
    if opts.precision not in PRECISIONS:
        raise RaycutError(f"--precision must be one of {', '.join(PRECISIONS)}, not {opts.precision}")
    if opts.channels_last not in (True, False, "auto"):
        raise RaycutError(f"--channels-last must be auto, on or off, not {opts.channels_last}")
    if opts.precision == "int8" and opts.gpus_per_actor > 0:
        raise RaycutError("--precision int8 runs on CPU actors (PyTorch's quantized kernels are CPU kernels); "
                          "use --precision bf16 on GPUs")
    if opts.calibration_images < 1:
        raise RaycutError("--calibration-images must be at least 1")
    if opts.batch_size < 1:
        raise RaycutError("--batch-size must be at least 1")
    if opts.max_megapixels <= 0:
        raise RaycutError(f"--max-megapixels must be > 0, not {opts.max_megapixels:g}")
    if opts.tile and (opts.tile % 4 or not 0 <= opts.overlap < opts.tile // 2):
        raise RaycutError(f"--tile must be a multiple of 4 and --overlap below tile/2 (got {opts.tile}, {opts.overlap})")


def _model_version(model: str) -> str:
    """The registry version behind a models:/ URI (for the manifest); '' otherwise."""
    if not model.startswith("models:/"):
        return ""
    from mlflow.tracking import MlflowClient

    from jobs.tracking import tracking_uri

    name_part = model[len("models:/"):]
    client = MlflowClient(tracking_uri=tracking_uri())
    try:
        if "@" in name_part:
            name, alias = name_part.split("@", 1)
            return str(client.get_model_version_by_alias(name, alias).version)
        name, _, ver = name_part.partition("/")
        return ver if ver.isdigit() else ""
    except Exception:  # noqa: BLE001 - the model was fetched already; the version is metadata
        return ""


__all__ = ["TranslateOptions", "TranslateSummary", "run_translate"]
