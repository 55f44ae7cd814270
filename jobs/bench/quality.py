"""`raycut bench quality`: what the GAN-balance options do to the translation, on the
toy benchmark (whose paired truth gives a colour error) at a budget these CPUs run.

``scene`` picks the toy pair (pipelines.toy_data.SCENES): "street", which raycut's
settings were developed on, or "coast", held out to check that a choice generalises.
Each variant is a set of config overrides; each (variant, seed) trains in its own
process, on one torch thread (or ``threads``), as many at a time as fit the cores. Rows per
variant: the median colour error over the seeds and its spread, the worst seed, the
longest run of steps for which D had won (cut_core.d_balance.WinWatch), and the
baselines (identity, histogram matching) of the same held-out images.

Each run is scored twice: the last step's G, and (with ``eval_every``) the checkpoint
that scored best on the val pair, the one ``raycut train --eval-every`` registers. A
GAN whose D takes over late loses quality at the end that the best checkpoint keeps,
so the two columns tell a run that never learned from one that learned and then lost.
"""

from __future__ import annotations

import concurrent.futures
import json
import queue
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TextIO

from cut_core.config import ADA_GUARD_SETS
from cut_core.cores import usable_cores
from cut_core.errors import RaycutError
from jobs.bench.processes import spawn_manager, spawn_pool
from jobs.progress import Progress

# variant -> --set overrides over the config under test
QUALITY_VARIANTS: dict[str, tuple[str, ...]] = {
    "plain": ("d_augment=",),
    "diffaugment": ("d_augment=color,translation,cutout",),
    "ada": ("d_augment=color,translation,cutout", "d_augment_target=0.6"),
    "guard": ADA_GUARD_SETS,  # ADA acting only as D nears winning (cut_core.config)
    "ema": ("d_augment=", "ema_decay=0.99"),
    "diffaugment+ema": ("d_augment=color,translation,cutout", "ema_decay=0.99"),
    # R1 (Mescheder et al. 2018) on D's reals, the penalty SinCUT uses, at SinCUT's weight.
    "r1": ("d_augment=", "lambda_R1=1"),
    "diffaugment+r1": ("d_augment=color,translation,cutout", "lambda_R1=1"),
    # The baseline CUT is compared with: the same networks and data, CycleGAN's losses.
    # It trains for the steps that fit in the time of the others (cyclegan_reference): a step costs more.
    "cyclegan": ("preset=cyclegan", "d_augment="),
}


def parse_variants(specs: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Variant name -> overrides, from the command line: a name of QUALITY_VARIANTS, or
    one of the user's own as ``NAME:KEY=VALUE[:KEY=VALUE...]`` (for example
    ``nce2:lambda_NCE=2``), so any config key can be compared against the recipes."""
    out: dict[str, tuple[str, ...]] = {}
    for spec in specs:
        name, *sets = spec.split(":")
        if not sets and name not in QUALITY_VARIANTS:
            raise RaycutError(f"unknown quality variant {name!r}; choose from {', '.join(QUALITY_VARIANTS)}, "
                              "or name your own as NAME:KEY=VALUE[:KEY=VALUE...]")
        bad = [s for s in sets if "=" not in s or not s.split("=", 1)[0]]
        if not name or bad or name in out:
            why = f"{bad[0]!r} is not KEY=VALUE" if bad else "each variant needs its own name"
            raise RaycutError(f"quality variant {spec!r}: {why}; write NAME:KEY=VALUE[:KEY=VALUE...]")
        out[name] = tuple(sets) if sets else QUALITY_VARIANTS[name]
    return out


# test images shown per variant in the bench's sample grid
SAMPLES = 4


def cyclegan_reference(variants: Mapping[str, tuple[str, ...]]) -> tuple[str, tuple[str, ...]] | None:
    """Whose step time CycleGAN's budget matches: the first other variant's, or, with
    CycleGAN alone, the preset and config under test as they are (so `--quality-variants
    cyclegan --steps 1500` trains it for the time of 1500 of their steps). None without
    CycleGAN. Returns (a label for the log, the overrides to time)."""
    if "cyclegan" not in variants:
        return None
    others = [v for v in variants if v != "cyclegan"]
    return (others[0], variants[others[0]]) if others else ("(as configured)", ())


def variant_config(preset: str, config: str, sets: tuple[str, ...], size: int, seed: int = 0):
    """The config a variant trains: ``config`` over ``preset`` (or the variant's own
    ``preset=``), at ``size`` px, fp32 NCHW (the same arithmetic on every CPU kind)."""
    from jobs.config_file import resolve_config

    chosen = next((v.split("=", 1)[1] for v in sets if v.startswith("preset=")), preset)
    return resolve_config(chosen, config, [f"crop_size={size}", f"load_size={size}", f"seed={seed}", "precision=fp32",
                                           "channels_last=false", *(v for v in sets if not v.startswith("preset="))])


def _train_and_score(preset: str, config: str, sets: tuple[str, ...], seed: int, size: int, steps: int,
                     data: str, steps_done: Any = None, eval_every: int = 0,
                     val_metric: str = "colour_err", threads: int = 1, kid_pool: str | None = None) -> dict[str, Any]:
    """One run, in a fresh process: train in process, score the (EMA) G on testA; with
    ``eval_every``, also score G on the val pair every that many steps (and at the
    last) and the best of those checkpoints on testA. ``kid_pool``, a folder of
    held-out real images: at every evaluation also record the checkpoint's testA scores
    and the KID features of its translations of valA and of those reals (as many of
    each), so that any rule for choosing a checkpoint, on any number of val images, can
    be judged afterwards (jobs.bench.checkpoint_choice). ``val_metric`` is what chooses
    that checkpoint and what ``lr_plateau_patience`` reads (VAL_METRICS); the val
    colour error is logged beside KID. ``threads``: torch's threads for this run (a
    seed trained on another count is another draw of it: the kernels' sums run in
    another order). ``steps_done``, a queue of the parent's, gets the steps of each
    log interval."""
    import copy

    import torch

    torch.set_num_threads(threads)
    from cut_core.d_balance import WinWatch
    from cut_core.ema_schedule import describe_ema
    from cut_core.lr_schedule import data_steps_per_epoch, describe_schedule
    from cut_core.training import observe_val_metric
    from jobs.train.evaluation import CheckpointChoice, Evaluator
    from jobs.train.in_process import train_in_process, translate_array
    from pipelines.local_images import load_folder
    from pipelines.toy_eval import evaluate_toy, load_toy_test

    cfg = variant_config(preset, config, sets, size, seed)
    root = Path(data)
    t = time.perf_counter()
    last = 0
    # The same scoring as `raycut train --eval-every`: on toy data the val pair's colour
    # error; with val_metric "kid", KID as off the toy data (val_plans).
    plans = val_plans(root, val_metric, size, eval_every) if eval_every else []
    plan = plans[0] if plans else None
    evaluators = [Evaluator(p) for p in plans]
    choice = CheckpointChoice(plan.key, plan.order) if plan is not None else None
    val_curve: list[dict[str, float]] = []
    lr_cuts: list[dict[str, float]] = []  # optim.lr_plateau_patience: where the rate was cut
    best: dict[str, Any] = {}
    pool = _KidPool(root, kid_pool, size) if kid_pool and eval_every else None

    def report(step: int, _row: dict[str, float], state: Any) -> None:
        nonlocal last
        if steps_done is not None:
            steps_done.put(step - last)
        # G is scored at the first log point past each multiple of eval_every, and at the end.
        due = plan is not None and (step // eval_every > last // eval_every or step == steps)
        last = step
        if due:
            got = [e(state.inference_G, torch.device("cpu")) for e in evaluators]
            value = got[0][plan.key]
            val_curve.append({"step": step, **{k: round(v, 4) for p, g in zip(plans, got) for k, v in g.items()
                                               if k in (p.key, p.key + "_se")}})
            if observe_val_metric(state, value, steps, order=plan.order):
                lr_cuts.append({"step": step, "scale": state.lr_plateau.value})
            if choice.observe(step, got[0]):  # the checkpoint `raycut train` would register
                best.update(step=step, value=value, G=copy.deepcopy(state.inference_G))
            if pool is not None:
                pool.record(step, state.inference_G)

    images_a, images_b = load_folder(root / "trainA"), load_folder(root / "trainB")
    epoch = data_steps_per_epoch(len(images_a), len(images_b), batch_size=cfg.optim.batch_size)
    # A log point every 10 steps, or at each evaluation where those come more often.
    log_every = min(10, eval_every) if eval_every else 10
    state, history = train_in_process(cfg, images_a, images_b, steps=steps, progress=False, log_every=log_every,
                                      on_log=report)
    watch = WinWatch.for_config(cfg)
    for row in history:
        watch.observe(row["D"], log_every, row.get("D_rt"))
    test = load_toy_test(root)
    preds = translate_array(state, test.a)
    # Label preservation too (the toy segmenter, trained once by the parent and cached
    # beside the data): the quality targets ask for colour and labels.
    translations = {"model": preds, **({"best": translate_array(best["G"], test.a)} if best else {})}
    rows = evaluate_toy(root, translations)
    out = {"colour_err": rows["model"]["colour_err"], "histogram": rows["baseline/histogram"]["colour_err"],
           "samples": preds[:SAMPLES], "mIoU": rows["model"]["mIoU"],
           "baseline_mIoU": {k.split("/")[-1]: rows[k]["mIoU"] for k in rows if k not in translations},
           "identity": rows["baseline/identity"]["colour_err"], "d_won_longest": watch.longest,
           "D_rt_last": history[-1].get("D_rt"), "seconds": time.perf_counter() - t,
           "threads": torch.get_num_threads(),
           "lr_schedule": describe_schedule(cfg.optim, steps, epoch),
           **({"ema_schedule": describe_ema(cfg.optim.ema_decay, steps)} if cfg.optim.ema_decay else {}),
           "history": [{k: round(float(v), 5) for k, v in r.items()} for r in history],
           **({"lr_cuts": lr_cuts} if state.lr_plateau is not None else {})}
    if best:
        out.update(val_metric=plan.key, best_step=best["step"], best_val=round(best["value"], 4),
                   best_colour_err=rows["best"]["colour_err"], best_mIoU=rows["best"]["mIoU"], val_curve=val_curve)
    if pool is not None:
        out.update(checkpoints=pool.scores, kid_features=pool.features())
    return out


class _KidPool:
    """What a checkpoint study needs of each evaluated checkpoint: its testA scores
    (colour error, mIoU: what a choice of checkpoint is judged by) and the KID features
    of its translations of valA's first N images, beside those of N held-out reals."""

    def __init__(self, root: Path, reals: str, size: int) -> None:
        import numpy as np

        from pipelines.feature_extractors import load_extractor, torchscript_spec
        from pipelines.local_images import load_folder
        from pipelines.toy_eval import load_toy_test
        from pipelines.toy_segmenter import toy_feature_extractor, toy_segmenter

        self.real = np.stack(load_folder(Path(reals)))
        self.val = np.stack(load_folder(root / "valA")[: len(self.real)])
        if len(self.val) < len(self.real):
            raise RaycutError(f"the KID pool needs {len(self.real)} valA images, the toy data has {len(self.val)}")
        self.test, self.segmenter = load_toy_test(root), toy_segmenter(root)
        self.net = load_extractor(torchscript_spec(str(toy_feature_extractor(root)), size))
        self.real_features = self._features(self.real)
        self.scores: list[dict[str, float]] = []
        self.fake_features: list[Any] = []

    def _features(self, images: Any) -> Any:
        from pipelines.feature_extractors import features_of_images

        return features_of_images(self.net, images)

    def record(self, step: int, G: Any) -> None:
        from jobs.train.in_process import translate_array
        from pipelines.toy_eval import score_set

        row = score_set(translate_array(G, self.test.a), self.test, self.segmenter)
        self.scores.append({"step": step, "colour_err": round(row["colour_err"], 4), "mIoU": round(row["mIoU"], 4)})
        self.fake_features.append(self._features(translate_array(G, self.val)))

    def features(self) -> dict[str, Any]:
        """{"real": (N, d), "fake": (checkpoints, N, d)} float32."""
        import numpy as np

        return {"real": self.real_features, "fake": np.stack(self.fake_features)}


# What the val pair is scored by, which picks the best checkpoint and drives the rate's
# cut: "colour_err", the toy data's own (its paired truth's colour error), or "kid", the
# metric of a user's data, whose noise on a small val set the toy's paired truth does
# not have. KID here compares valA's translations with the first trainB images (unpaired,
# as a user's real val images are) in the toy segmenter's feature space (no download).
VAL_METRICS = ("colour_err", "kid")


def val_plans(root: Path, val_metric: str, size: int, eval_every: int) -> list[Any]:
    """The evaluation plans of a run: the one that decides first, then the val colour
    error when that is not it (logged beside it, to read the two together)."""
    from jobs.train.evaluation import plan_eval

    colour = plan_eval(eval_every, str(root / "trainA"), eval_data=None, eval_real=None, n_images=16, crop_size=size)
    if val_metric == "colour_err":
        return [colour]
    from pipelines.toy_segmenter import toy_feature_extractor

    return [plan_eval(eval_every, str(root / "trainA"), eval_data=str(root / "valA"), eval_real=str(root / "trainB"),
                      n_images=16, crop_size=size, feature_extractor=str(toy_feature_extractor(root)),
                      extractor_size=size), colour]


def _held_out_reals(tmp: Path, spec: Any, n: int) -> str:
    """A folder of ``n`` real-style renders of layouts that no split of ``spec``'s data
    holds: the toy data's trainB drawn further (each image has its own seed, so the
    first ``n_train`` are trainB's own), as a user's held-out real images are."""
    import dataclasses
    import shutil

    from pipelines.local_images import list_images
    from pipelines.toy_data import write_toy_dataset

    more = write_toy_dataset(tmp / "more", dataclasses.replace(spec, n_train=spec.n_train + n, n_test=0, n_val=0))
    out = tmp / "held_out_real"
    out.mkdir()
    for p in list_images(more / "trainB")[spec.n_train:]:
        shutil.copy(p, out / p.name)
    return str(out)


def _train_segmenter(data: str, val_metric: str = "colour_err") -> None:
    """Train and cache the toy dataset's segmenter, and with ``val_metric`` "kid" write
    its KID features (runs in a pool process, so the bench's own process never imports
    torch)."""
    from pipelines.toy_segmenter import toy_feature_extractor, toy_segmenter

    if val_metric == "kid":
        toy_feature_extractor(data)
    else:
        toy_segmenter(data)


def step_seconds(preset: str, config: str, sets: tuple[str, ...], size: int, data: str, steps: int = 6) -> float:
    """Seconds per training step of a variant (one thread, after 2 warm-up steps)."""
    import torch

    from jobs.train.in_process import train_in_process
    from pipelines.local_images import load_folder

    torch.set_num_threads(1)
    cfg = variant_config(preset, config, sets, size)
    a, b = load_folder(Path(data) / "trainA")[:8], load_folder(Path(data) / "trainB")[:8]
    train_in_process(cfg, a, b, steps=2, progress=False)
    t = time.perf_counter()
    train_in_process(cfg, a, b, steps=steps, progress=False)
    return (time.perf_counter() - t) / steps


def _drain(steps_done: Any, bar: Progress) -> None:
    """Move every step count the runs have reported so far onto the progress line."""
    n = 0
    while True:
        try:
            n += steps_done.get_nowait()
        except queue.Empty:
            break
    if n:
        bar.update(n)


def bench_quality(preset: str = "fastcut", config: str = "toy", *, size: int = 32, steps: int = 300,
                  seeds: tuple[int, ...] = (0, 1, 2), variants: Mapping[str, tuple[str, ...]] = QUALITY_VARIANTS,
                  n_train: int = 64, scene: str = "street", log: Callable[[str], None] = print,
                  progress_stream: TextIO | None = None, samples: Path | None = None,
                  runs_log: Path | None = None, eval_every: int = 0,
                  val_metric: str = "colour_err", threads: int = 1, kid_pool: int = 0) -> list[dict[str, object]]:
    """Rows of the record (see the module's docstring); with ``samples``, a PNG there
    of the first test images: sim input, histogram matching, each variant (its first
    seed) and the paired truth, side by side; with ``runs_log``, a JSON line there per
    run as it ends; with ``eval_every``, each run's best checkpoint on the val pair (by
    ``val_metric``, VAL_METRICS) is scored too (``best_*`` fields). Each run trains on
    ``threads`` torch threads, as many runs at a time as fit the cores. ``kid_pool``
    (with ``eval_every`` and ``runs_log``): every evaluated checkpoint's testA scores,
    in the run's line, and the KID features of its translations of ``kid_pool`` valA
    images and of as many held-out reals, in an .npz beside the runs log (a checkpoint
    study: jobs.bench.checkpoint_choice)."""
    if val_metric not in VAL_METRICS:
        raise RaycutError(f"val metric {val_metric!r}: choose {' or '.join(VAL_METRICS)}")
    import tempfile

    import numpy as np

    from pipelines.toy_data import ToySpec, write_toy_dataset
    from pipelines.report import save_grid
    from pipelines.toy_eval import HISTOGRAM, baselines, load_toy_test

    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        # The val pair only chooses checkpoints; each split draws its own images, so adding
        # it leaves trainA/testA (and earlier records' numbers) as they were.
        spec = ToySpec(size=size, n_train=n_train, n_test=16, n_val=max(16, kid_pool) if eval_every else 0, seed=0,
                       scene=scene)
        data = write_toy_dataset(Path(tmp) / "toy", spec)
        pool_reals = _held_out_reals(Path(tmp), spec, kid_pool) if kid_pool and eval_every else None
        runs = [(v, s) for s in seeds for v in variants]
        first = next(iter(variants))
        with spawn_manager() as manager, spawn_pool(max(1, usable_cores() // threads)) as pool:
            budget = {v: steps for v in variants}
            reference = cyclegan_reference(variants)
            if reference is not None:  # CycleGAN gets the wall-clock time of `steps` reference steps
                label, sets = reference
                ref, cyc = (pool.submit(step_seconds, preset, config, v, size, str(data)).result()
                            for v in (sets, variants["cyclegan"]))
                budget["cyclegan"] = max(1, round(steps * ref / cyc))
                log(f"  a cyclegan step takes {cyc / ref:.2f}x a {preset} {label} step: {budget['cyclegan']} steps "
                    f"in the time of {steps}")
            # The runs report their steps through a queue, so the console shows one
            # progress line with an ETA over all of them (a 64 px bench runs for
            # hours); in a log, a line each 5%.
            steps_done = manager.Queue()
            # Once, before the runs read its cache.
            pool.submit(_train_segmenter, str(data), val_metric if eval_every else "colour_err").result()
            futures = {(v, s): pool.submit(_train_and_score, preset, config, variants[v], s, size, budget[v],
                                           str(data), steps_done, eval_every, val_metric, threads, pool_reals)
                       for v, s in runs}
            total = sum(budget[v] for v, _ in runs)
            bar = Progress("quality", total, unit="step", every=max(1, total // 20), stream=progress_stream)
            pending = set(futures.values())
            while pending:
                finished, pending = concurrent.futures.wait(pending, timeout=2.0)
                _drain(steps_done, bar)
                for (v, s), fut in futures.items():
                    if fut in finished:
                        r = fut.result()
                        best = (f"; best on val at step {r['best_step']}: {r['best_colour_err']:.1f}, "
                                f"mIoU {r['best_mIoU']:.3f}" if "best_step" in r else "")
                        if "lr_cuts" in r:
                            best += "; lr cut at " + (", ".join(f"step {c['step']} (x{c['scale']:g})" for c in r["lr_cuts"])
                                                      or "no step")
                        log(f"  {v} seed {s}: colour error {r['colour_err']:.1f} (histogram {r['histogram']:.1f}), "
                            f"mIoU {r['mIoU']:.3f}{best}, D won for {r['d_won_longest']} steps at most, "
                            f"{r['seconds']:.0f} s")
                        if runs_log is not None:  # a bench stopped later keeps the runs that ended
                            extra = {}
                            if "kid_features" in r:
                                npz = runs_log.with_name(f"{runs_log.name.removesuffix('.runs.jsonl')}_kidpool_{v}_seed{s}.npz")
                                np.savez_compressed(npz, **r["kid_features"])
                                extra["kid_pool_file"] = npz.name
                            with open(runs_log, "a") as f:
                                f.write(json.dumps({"preset": preset, "variant": v, "sets": list(variants[v]), "seed": s,
                                                    "scene": scene, "size": size, "steps": budget[v], **extra,
                                                    **{k: x for k, x in r.items() if k not in ("samples", "kid_features")}})
                                        + "\n")
            results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
            for (v, s), fut in futures.items():  # in seed order, whatever order they ended in
                results[v].append(fut.result())
        if samples is not None:
            test = load_toy_test(data, SAMPLES)
            columns = [test.a, baselines(data, test)[HISTOGRAM], *(results[v][0]["samples"] for v in variants), test.truth]
            save_grid([[c[i] for c in columns] for i in range(len(test.a))], samples, scale=max(1, 128 // size),
                      titles=("sim input", "histogram", *variants, "paired truth"))
            log(f"  translations of seed {seeds[0]}: {samples}")
    base = results[first][0]
    miou = base["baseline_mIoU"]
    rows.append({"name": "baseline/identity", "metric": "colour_err", "value": round(base["identity"], 2), "unit": "",
                 "scene": scene, "mIoU": round(miou["identity"], 4)})
    rows.append({"name": "baseline/histogram", "metric": "colour_err", "value": round(base["histogram"], 2), "unit": "",
                 "scene": scene, "mIoU": round(miou["histogram"], 4)})
    for v, rs in results.items():
        errs = [r["colour_err"] for r in rs]
        ious = [r["mIoU"] for r in rs]
        name = "cyclegan" if v == "cyclegan" else f"{preset}/{v}"
        rows.append({"name": name, "metric": "colour_err", "value": round(statistics.median(errs), 2),
                     "unit": "", "per_seed": [round(e, 2) for e in errs], "worst": round(max(errs), 2),
                     "mIoU": round(statistics.median(ious), 4), "mIoU_per_seed": [round(x, 4) for x in ious],
                     "truth_mIoU": round(miou["truth (paired real)"], 4),
                     "d_won_longest": max(r["d_won_longest"] for r in rs), "sets": list(variants[v]),
                     "steps": budget[v], "scene": scene, "threads": rs[0]["threads"],
                     "seconds": [round(r["seconds"], 1) for r in rs],
                     "lr_schedule": rs[0]["lr_schedule"],
                     "histories": [r["history"] for r in rs],
                     **({"lr_cuts_per_seed": [r["lr_cuts"] for r in rs]} if "lr_cuts" in rs[0] else {})})
        if "best_step" in rs[0]:
            best = [r["best_colour_err"] for r in rs]
            rows[-1].update(val_metric=rs[0]["val_metric"], best=round(statistics.median(best), 2),
                            best_per_seed=[round(e, 2) for e in best], best_worst=round(max(best), 2), best_step_per_seed=[r["best_step"] for r in rs],
                            best_mIoU_per_seed=[round(r["best_mIoU"], 4) for r in rs],
                            val_curves=[r["val_curve"] for r in rs])
    return rows


def format_quality(rows: list[dict[str, object]]) -> str:
    """The table: each row's last-step score; with evaluation during training, also the
    val-chosen checkpoint's (median and worst seed, as a ratio to histogram matching's)."""
    hist = next(float(r["value"]) for r in rows if r["name"] == "baseline/histogram")  # type: ignore[arg-type]
    evaluated = any("best" in r for r in rows)
    lines = [f"{'row':34s} {'colour err':>10s} {'worst seed':>10s} {'/ histogram':>11s} {'mIoU':>6s} {'worst':>6s} "
             f"{'D won (steps)':>13s}" + (f" {'best on val':>11s} {'worst / hist':>12s}" if evaluated else "")]
    for r in rows:
        worst = r.get("worst", "")
        won = r.get("d_won_longest", "")
        ratio = f"{float(r['value']) / hist:.2f}"  # type: ignore[arg-type]
        iou = f"{float(r['mIoU']):.3f}" if "mIoU" in r else ""  # type: ignore[arg-type]
        iou_worst = f"{min(r['mIoU_per_seed']):.3f}" if "mIoU_per_seed" in r else ""  # type: ignore[arg-type]
        line = (f"{str(r['name']):34s} {float(r['value']):10.1f} {worst!s:>10s} {ratio:>11s} {iou:>6s} "  # type: ignore[arg-type]
                f"{iou_worst:>6s} {won!s:>13s}")
        if evaluated and "best" in r:
            line += f" {float(r['best']):11.1f} {float(r['best_worst']) / hist:12.2f}"  # type: ignore[arg-type]
        lines.append(line)
    return "\n".join(lines)


def quality_plot(rows: list[dict[str, object]], path: Path) -> Path:
    """The variants' mean training curves (D, D_rt, G_GAN, NCE) in one picture."""
    from pipelines.report import save_variant_curves

    return save_variant_curves({str(r["name"]): r["histories"] for r in rows if "histories" in r}, path)  # type: ignore[misc]
