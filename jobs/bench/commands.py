"""`raycut bench ...`: benchmark commands that print a table and write a JSON record
``{"bench", "machine", "results": [{"name", "metric", "value", "unit"}]}``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from cut_core.cores import threads_per_worker
from cut_core.errors import RaycutError
from jobs.bench import device as benchmark
from jobs.bench.records import format_table, write_record


def run_bench(args: argparse.Namespace) -> int:
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    if args.which == "ingest":
        log(f"raycut bench ingest: decode + scale_width_and_crop 1024 -> 512 crops, {args.workers} workers")
        rows = bench_ingest(n=args.images, workers=args.workers, log=log)
        out = write_record(args.out, "ingest", rows, "cpu")
        print(format_table(rows))
        print(f"wrote {out}")
        return 0
    if args.which == "translate":
        log("raycut bench translate: full-size CUT G, 1024x512 and 2048x1024, staged and single-actor jobs, "
            "against the reference test loop; output formats")
        rows = bench_translate_job(n=args.images if args.images != 16 else 4, precisions=tuple(args.precisions_translate),
                                   log=log)
        out = write_record(args.out, "translate", rows, "cpu")
        print(format_table(rows))
        print(f"wrote {out}")
        return 0
    if args.which == "checkpoint-choice":
        from jobs.bench.checkpoint_choice import format_choice, load_studies, reference_rows, replay, reversed_study

        if not args.runs:
            raise RaycutError("checkpoint-choice reads --runs X.runs.jsonl ... (from `raycut bench quality --kid-pool N`)")
        rows = []
        studies = load_studies(args.runs)
        for study in studies + ([reversed_study(s) for s in studies] if args.reversed else []):
            log(f"raycut bench checkpoint-choice: {study.name}, {len(study.steps)} checkpoints, "
                f"{args.draws} val sets of each size")
            rows += reference_rows(study) + replay(study, tuple(args.sizes), args.draws)
        out = write_record(args.out, "checkpoint-choice", rows, "cpu")
        print(format_choice(rows))
        print(f"wrote {out}")
        return 0
    if args.which == "quality":
        from jobs.bench.quality import (QUALITY_VARIANTS, bench_quality, format_quality, parse_variants, quality_plot,
                                        variant_config)

        variants = parse_variants(args.quality_variants or QUALITY_VARIANTS)
        eval_every = args.steps // 6 if args.eval_every is None else args.eval_every
        if args.threads < 1:
            raise RaycutError("--threads must be at least 1")
        if args.kid_pool and (not eval_every or args.kid_pool < 2):
            raise RaycutError("--kid-pool needs --eval-every (the checkpoints it records) and at least 2 images")
        for preset in args.presets:  # a bad key or value: one line now, not a traceback per run later
            for name, sets in variants.items():
                if variant_config(preset, args.config, sets, args.size).optim.lr_plateau_patience and not eval_every:
                    raise RaycutError(f"variant {name} sets lr_plateau_patience, which cuts the rate on the val "
                                      "metric: leave out --eval-every 0")
        rows = []
        # A line per run as it ends, appended (never rewritten): a bench stopped part-way,
        # hours in, keeps the runs that ended.
        runs_log = Path(args.out).with_suffix(".runs.jsonl")
        runs_log.parent.mkdir(parents=True, exist_ok=True)
        for preset in args.presets:
            log(f"raycut bench quality: {preset} --config {args.config}, {args.steps} steps at {args.size} px on the "
                f"{args.scene} pair, seeds {', '.join(map(str, args.seeds))}: {', '.join(variants)}"
                + (f"; val metric {args.val_metric}" if eval_every and args.val_metric != "colour_err" else ""))
            grid = Path(args.out).with_name(f"{Path(args.out).stem}_samples_{preset}.png")
            rows += bench_quality(preset, args.config, size=args.size, steps=args.steps, seeds=tuple(args.seeds),
                                  variants=variants, scene=args.scene, log=log, samples=grid, runs_log=runs_log,
                                  eval_every=eval_every, val_metric=args.val_metric, threads=args.threads,
                                  kid_pool=args.kid_pool)
        out = write_record(args.out, "quality", rows, "cpu")
        plot = quality_plot(rows, out.with_suffix(".png"))
        print(format_quality(rows))
        print(f"wrote {out} and {plot}; each run's result in {runs_log}")
        return 0
    if args.ray:
        log(f"raycut bench train --ray: {', '.join(args.presets)} at {args.crop} px, precision auto, Ray Train 1 and 2 workers "
            "against the bare cut_core step")
        rows = bench_train_ray(tuple(args.presets), crop=args.crop, log=log)
        out = write_record(args.out, "train-ray", rows, "cpu")
        print(format_table(rows))
        print(f"wrote {out}")
        return 0
    variants = list(args.variants or benchmark.DEFAULT_VARIANTS)
    unknown = [v for v in variants if v not in benchmark.TRAIN_VARIANTS]
    if unknown:
        raise RaycutError(f"unknown variant {unknown[0]!r}; choose from {', '.join(benchmark.TRAIN_VARIANTS)}")
    if args.compile:
        variants += [v for v in ("bf16-compile",) if v not in variants]
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RaycutError("--device cuda was asked for but torch sees no GPU; drop --device or install a CUDA build of torch")
        torch.backends.cudnn.benchmark = True
    log(f"raycut bench train: {', '.join(args.presets)} x {', '.join(variants)} at {args.crop} px, "
        f"batch 1, {args.iters} rounds after {args.warmup} warm-up, variants interleaved in one process, on {args.device}")
    rows = benchmark.bench_train(tuple(args.presets), tuple(variants), crop=args.crop, device=args.device,
                                 warmup=args.warmup, iters=args.iters, log=log)
    out = write_record(args.out, "train", rows, args.device)
    print(format_table(rows))
    print(f"wrote {out}")
    return 0


# ---- ingest ------------------------------------------------------------------------


def _make_ingest_corpus(root, n: int) -> dict[str, str]:
    """n street renders as 2048x1024 PNG (Cityscapes-sized) and 1914x1052 JPEG (GTA5-sized)."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from pipelines.toy_data import make_layout, render_real

    root = Path(root)
    out = {}
    for kind, size, fmt in (("png-2048x1024", (2048, 1024), "PNG"), ("jpeg-1914x1052", (1914, 1052), "JPEG")):
        d = root / kind
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            rng = np.random.default_rng(i)
            img = Image.fromarray(render_real(make_layout(256, rng), rng)).resize(size, Image.BILINEAR)
            img.save(d / f"{i:04d}.{fmt.lower()}", format=fmt, **({"quality": 92} if fmt == "JPEG" else {"compress_level": 1}))
        out[kind] = str(d)
    return out


class _TorchFiles:
    """The reference loader's way: a map-style Dataset, PIL decode, scale width, random
    crop and flip in each DataLoader worker."""

    def __init__(self, files: list[str], data) -> None:
        self.files = files
        self.data = data

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        import numpy as np

        from pipelines.augment import augment
        from pipelines.local_images import read_rgb

        return augment(read_rgb(self.files[i]), self.data, np.random.default_rng(i))


def bench_ingest(n: int = 16, workers: int = 2, repeat: int = 24, log=print) -> list[dict[str, object]]:
    """Steady-state images/s of decode + scale_width_and_crop 1024/512 + flip: Ray Data
    against a torch DataLoader with the same number of worker processes, on the same
    files. Each of the n frames is read ``repeat`` times in one pass, so start-up (Ray's
    actors, the DataLoader's worker processes) is paid once, as in training."""
    import tempfile
    import time

    import ray
    from torch.utils.data import DataLoader

    from cut_core.config import DataConfig
    from pipelines.ingest import IngestOptions, read_files
    from pipelines.local_images import list_images

    data = DataConfig(preprocess="scale_width_and_crop", load_size=1024, crop_size=512)
    rows: list[dict[str, object]] = []

    def timed(batches) -> float:
        """Steady-state rate: the clock starts at the first batch, so worker start-up
        (forked DataLoader workers, Ray actors importing torch) is left out of both."""
        count, t0 = 0, None
        for batch in batches:
            if t0 is None:
                t0 = time.perf_counter()
            else:
                count += len(batch)
        return count / (time.perf_counter() - t0)

    with tempfile.TemporaryDirectory() as tmp:
        log(f"  writing {n} PNG 2048x1024 and {n} JPEG 1914x1052 test frames ...")
        corpus = {kind: [str(p) for p in list_images(folder)] * repeat for kind, folder in _make_ingest_corpus(tmp, n).items()}
        for kind, files in corpus.items():
            loader = DataLoader(_TorchFiles(files, data), batch_size=4, num_workers=workers, collate_fn=lambda b: b)
            rate = timed(iter(loader))
            rows.append({"name": f"baseline/torch-dataloader-{workers}w/{kind}", "metric": "images_per_s", "value": round(rate, 2), "unit": "images/s"})
            log(f"    torch DataLoader, {workers} workers, {kind}: {rate:.2f} images/s over {len(files)} images")
        # `workers` decode actors of one logical CPU each, plus one logical CPU for the
        # light read tasks (the DataLoader's main process likewise comes on top of its
        # workers); both run on the same physical cores.
        ray.init(address="local", num_cpus=workers + 1, include_dashboard=False, log_to_driver=False)
        try:
            for kind, files in corpus.items():
                ds = read_files(files, data, options=IngestOptions(concurrency=workers))
                rate = timed(b["path"] for b in ds.iter_batches(batch_size=4, batch_format="numpy"))
                rows.append({"name": f"ingest/ray-data-{workers}w/{kind}", "metric": "images_per_s", "value": round(rate, 2), "unit": "images/s"})
                log(f"    Ray Data, {workers} decode actors, {kind}: {rate:.2f} images/s over {len(files)} images")
        finally:
            ray.shutdown()
    return rows


# ---- train on Ray ------------------------------------------------------------------


def bench_train_ray(presets: tuple[str, ...] = ("fastcut",), *, crop: int = 256, precision: str = "auto",
                    steps: int = 16, window: int = 4, log=print) -> list[dict[str, object]]:
    """Per-step time of `raycut train` (Ray Train + Ray Data feed + DDP + metric
    reports) with 1 and 2 workers, against cut_core's bare step in one process, on the
    same machine and the same threads.

    The Ray figures come from the run's own per-window images/s (MLflow history), the
    first window (start-up, first epoch of data) dropped; batch 1 per worker. With 1
    worker the worker gets all cores (as the bare step does); with 2 workers each gets
    half, so that row shows what data parallelism buys on this machine.
    """
    import os
    import statistics
    import tempfile
    from pathlib import Path

    import ray
    from mlflow.tracking import MlflowClient

    from jobs.ray_runtime import start_ray
    from jobs.train.driver import run_train
    from jobs.train.spec import Schedule, TrainOptions
    from pipelines.toy_data import ToySpec, write_toy_dataset

    cores = threads_per_worker(1)
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
        toy = write_toy_dataset(root / "toy", ToySpec(size=crop, n_train=32, n_test=1))
        start_ray(cores)
        try:
            for preset in presets:
                overrides = {"crop_size": crop, "load_size": crop, "preprocess": "crop", "batch_size": 1,
                             "precision": precision}
                bare_times: list[float] = []

                def time_bare(when: str) -> None:
                    log(f"  timing {preset} bare cut_core step ({cores} threads, {when}) ...")
                    t = benchmark.in_fresh_process(benchmark.time_train_variant, preset, "raycut", overrides, "cpu", 1, 5)
                    bare_times.extend(t.times_ms)
                    log(f"    {t.median_ms:9.1f} ms/step")

                # The bare step is timed before and after the Ray runs and the median of
                # all its steps is the baseline: on a noisy machine a drift between the
                # two measurements would otherwise be read as Ray's overhead.
                time_bare("before the Ray runs")
                ray_rows: list[dict[str, object]] = []
                for workers in (1, 2):
                    log(f"  timing {preset} on Ray Train, {workers} worker(s) ...")
                    result = run_train(TrainOptions(
                        preset=preset, data_a=f"cyclegan:{toy}:trainA", data_b=f"cyclegan:{toy}:trainB",
                        overrides=overrides, workers=workers,
                        cpus_per_worker=max(1, cores // workers), steps=steps, storage_path=str(root / "runs"),
                        schedule=Schedule(log_every=window, checkpoint_every=steps, sample_every=steps),
                        name=f"{preset}-{workers}w", experiment="bench",
                    ))
                    history = MlflowClient().get_metric_history(result.mlflow_run_id, "images_per_s")
                    rates = [h.value for h in sorted(history, key=lambda h: h.step)][1:]
                    waits = [h.value for h in MlflowClient().get_metric_history(result.mlflow_run_id, "data_wait_frac")]
                    ms = 1000.0 * workers / statistics.median(rates)  # per step of the global batch
                    name = f"{preset}/ray-train-{workers}w"
                    ray_rows.append({"name": name, "metric": "images_per_s", "value": round(statistics.median(rates), 3),
                                     "unit": "images/s", "windows": [round(r, 3) for r in rates],
                                     "data_wait_frac": [round(w, 4) for w in waits]})
                    if workers == 1:  # per-step time compares directly only at the same batch
                        ray_rows.append({"name": name, "metric": "ms_per_iter", "value": round(ms, 1), "unit": "ms"})
                    log(f"    {ms:9.1f} ms/step, {statistics.median(rates):.3f} images/s")
                time_bare("after the Ray runs")
                bare_ms = statistics.median(bare_times)
                rows.append({"name": f"baseline/{preset}-bare-step", "metric": "ms_per_iter", "value": round(bare_ms, 1),
                             "unit": "ms", "times_ms": [round(x, 1) for x in bare_times]})
                rows.append({"name": f"baseline/{preset}-bare-step", "metric": "images_per_s",
                             "value": round(1000.0 / bare_ms, 3), "unit": "images/s"})
                rows += ray_rows
                one = next(r["value"] for r in ray_rows if r["metric"] == "ms_per_iter")
                rows.append({"name": f"{preset}/ray-train-1w", "metric": "overhead_vs_bare_pct",
                             "value": round(100.0 * (float(one) - bare_ms) / bare_ms, 1), "unit": "%"})
        finally:
            ray.shutdown()
    return rows


# ---- translate ---------------------------------------------------------------------


def bench_translate_job(sizes: tuple[tuple[int, int], ...] = ((512, 1024), (1024, 2048)), n: int = 4,
                        precisions: tuple[str, ...] = ("auto",), log=print) -> list[dict[str, object]]:
    """images/s of `raycut translate`, the staged job (decode tasks -> G actors ->
    encode tasks) beside the single-actor job (every stage in one actor), each with
    its model_busy, against the way the reference test script works (batch 1, serial,
    fp32, PIL save with default PNG compression in the main thread), on the same
    files, cores and full-size CUT generator (ngf 64, 9 blocks; random weights: speed
    does not depend on them). Then what each output format costs to encode per frame.

    Two rates per job: the whole job's (its start-up included, which a short job
    feels) and the steady one between its first and last finished output (what a
    job over thousands of frames runs at)."""
    import tempfile
    import time
    from pathlib import Path

    import numpy as np
    import ray

    from cut_core import load_generator
    from jobs.translate.driver import run_translate
    from jobs.translate.spec import TranslateOptions
    from jobs.bench.translate_speed import (bench_output_formats, full_size_model, load_generator_output,
                                            reference_loop_as_it_runs, write_frames)

    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = full_size_model(root / "model")
        G = load_generator(model)
        for h, w in sizes:
            src = root / f"in-{w}x{h}"
            files = [Path(f) for f in write_frames(src, h, w, n)]
            log(f"  baseline: {n} frames of {w}x{h}, batch 1, fp32, serial, PIL save in the main thread ...")
            base = benchmark.in_fresh_process(reference_loop_as_it_runs, str(model), [str(f) for f in files],
                                              root / f"base-{w}x{h}")
            rows.append({"name": f"baseline/reference-test-loop@{w}x{h}", "metric": "images_per_s", "value": round(base, 4), "unit": "images/s"})
            log(f"    {base:.4f} images/s")
            for precision in precisions:
                for staged in (False, True):
                    variant = f"{'staged' if staged else 'single-actor'}-{precision}"
                    log(f"  raycut translate {variant} ...")
                    opts = dict(model=str(model), precision=precision, batch_size=1, staged=staged)
                    # One frame first, so Ray's start is not counted. The timed job still
                    # pays its own start (listing, actor start, G load): the rate is what a
                    # user sees for this many frames, and an upper bound on the overhead.
                    warm = root / f"warm-{w}x{h}-{variant}"
                    warm.mkdir()
                    (warm / "000.png").write_bytes(files[0].read_bytes())
                    run_translate(TranslateOptions(input=str(warm), output=str(root / f"wout-{w}-{variant}"), **opts))
                    t = time.perf_counter()
                    s = run_translate(TranslateOptions(input=str(src), output=str(root / f"out-{w}x{h}-{variant}"), **opts))
                    rate = s.done / (time.perf_counter() - t)
                    rows.append({"name": f"translate/{variant}@{w}x{h}", "metric": "images_per_s", "value": round(rate, 4),
                                 "unit": "images/s", "model_busy": round(s.model_busy or 0.0, 3),
                                 "includes": "job start-up: listing, Ray Data plan, actor start with G load"})
                    finished = sorted(f.stat().st_mtime for f in (root / f"out-{w}x{h}-{variant}").rglob("*.png"))
                    steady = (len(finished) - 1) / (finished[-1] - finished[0])
                    rows.append({"name": f"translate/{variant}-steady@{w}x{h}", "metric": "images_per_s",
                                 "value": round(steady, 4), "unit": "images/s",
                                 "includes": "first to last finished output of the same job"})
                    rows.append({"name": f"translate/{variant}@{w}x{h}", "metric": "model_busy",
                                 "value": round(s.model_busy or 0.0, 3), "unit": "fraction"})
                    log(f"    {rate:.4f} images/s ({rate / base:.2f}x the baseline); steady {steady:.4f} "
                        f"({steady / base:.2f}x); model busy {s.model_busy or 0:.0%}")
            frame = np.asarray(load_generator_output(G, files[0]))
            rows += bench_output_formats(frame, f"{w}x{h}", root, log=log)
        ray.shutdown()
    return rows
