"""`raycut train`: CUT / FastCUT on Ray Train, tracked in MLflow.

    resolve config -> check MLflow -> MLflow run -> Ray (local, or RAY_ADDRESS)
    -> Ray Data A and B (pipelines.ingest) -> TorchTrainer(train_worker, DDP)
    -> final checkpoint -> model directory logged (+ registered) in MLflow

Batch sizes: ``batch_size`` (``--set batch_size=N``) is per worker; the global batch
is batch_size x workers, and an epoch is max(|A|, |B|) / global batch steps, so
adding workers makes epochs shorter, not longer.

Storage: checkpoints go to ``<storage_path>/<name>/`` (a local folder by default,
s3://... or an NFS path on a cluster, where every node must reach it). The run's
spec sits beside them as ``run.json``; ``--resume`` reads it back.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from pyarrow.fs import FileSelector, FileType

from cut_core.cores import threads_per_worker
from cut_core.errors import RaycutError
from cut_core.ema_schedule import describe_ema
from cut_core.lr_schedule import constant_steps, data_steps_per_epoch, describe_schedule
from jobs import tracking
from jobs.config_file import resolve_config
from jobs.disk import describe_room, full_disk_error, is_disk_full, write_whole
from jobs.ray_runtime import compute_runtime_env, require_gpus, start_ray, train_run_released, without_progress_bars
from jobs.train.spec import PLACEMENTS, SPEC_NAME, TrainJob, TrainOptions
from pipelines.ingest import IngestOptions, IngestReport, decode_head, format_report, read_domain
from pipelines.sources import Listing, list_source
from pipelines.sources import filesystem_for

LATEST_NAME = "LATEST"  # <storage_path>/LATEST holds the name of the newest run
DONE_NAME = "done.json"
# Ray Train's own record of the checkpoints it registered (Ray 2.60), in each run folder.
CHECKPOINT_SNAPSHOT = "checkpoint_manager_snapshot.json"
MIN_FILES_PER_PASS = 2048
DEFAULT_MAX_DECODE_ACTORS = 16  # per domain, on a cluster
# Decode actors run at a lower OS priority than the trainers. At the start of every
# pass Ray Data decodes ahead as fast as it can until its buffer is full; on a machine
# whose cores the trainers use, that burst would otherwise slow the training step.
# Relative to the trainers' niceness: 4 levels is the share measured with Ray's default
# of 15 for every worker (decoders at 19, Linux's floor, and 2.4x less CPU weight than
# the trainers); a local Ray's workers now start at 0 (jobs.ray_runtime.LOCAL_RAY_ENV).
DECODE_NICE = 4  # small datasets are repeated within one Ray Data pass (IngestOptions.repeat)


@dataclass
class TrainResult:
    job: TrainJob
    metrics: dict[str, Any]
    checkpoint_dir: Path  # local copy of the final checkpoint
    model_dir: Path
    mlflow_run_id: str
    model_uri: str
    model_version: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    best: dict[str, Any] | None = None  # {step, metric, value, checkpoint} with --eval-every


HEAD_CHECK_FILES = 8  # files of each domain decoded before a run starts: are they images at all?


def run_train(opts: TrainOptions, *, callbacks: Sequence[Any] = ()) -> TrainResult:
    """The whole ``raycut train``; ``callbacks`` go to Ray Train's RunConfig (Tune's
    TuneReportCallback, when the run is a trial)."""
    _check_options(opts)
    storage = _absolute_storage(opts.storage_path)
    listings: dict[str, Listing] = {}  # each domain listed once per run (it costs requests on s3)
    if opts.resume:
        job = _load_job(storage, opts.name)
        job = replace(job, register=opts.register or job.register)
        uri = job.tracking_uri  # the run lives where it was started
        tracking.check_reachable(uri)
        tracking.reopen_run(uri, job.mlflow_run_id)
        _drop_unregistered_checkpoints(job.storage_path, job.name)
    else:
        job, listings = _plan_job(opts, storage)  # config and data sources checked first
        uri = tracking.tracking_uri()
        tracking.check_reachable(uri)  # before anything slow
        job = _start_tracking(job, opts, uri)
    try:
        _write_spec(job, storage)
        print(f"[{job.console_label}] run {job.name}: {job.steps} steps, checkpoints in {job.run_dir}, MLflow run "
              f"{job.mlflow_run_id} at {uri}", flush=True)
        result = _fit(job, opts, callbacks, listings)
    except (KeyboardInterrupt, SystemExit):
        # A second Ctrl-C (or Ray Train's own handler) aborts the workers and leaves by
        # sys.exit: the run keeps its last checkpoint; the console says where --resume goes on.
        tracking.end_run(uri, job.mlflow_run_id, "KILLED")
        raise KeyboardInterrupt(_resume_hint(job)) from None
    except BaseException:
        tracking.end_run(uri, job.mlflow_run_id, "FAILED")
        raise
    if (result.metrics or {}).get("interrupted"):
        # A first Ctrl-C: the workers checkpointed where they were and stopped.
        tracking.end_run(uri, job.mlflow_run_id, "KILLED")
        raise KeyboardInterrupt(_resume_hint(job))
    return _finish(job, result, uri)


def _write_spec(job: TrainJob, storage: str) -> None:
    """The run's spec beside its checkpoints, and the storage's LATEST pointer."""
    try:
        _write_text(storage, f"{job.name}/{SPEC_NAME}", json.dumps(job.to_dict(), indent=2, sort_keys=True) + "\n")
        _write_text(storage, LATEST_NAME, job.name + "\n")
    except OSError as e:
        if not is_disk_full(e):
            raise
        if "://" in storage:
            raise RaycutError(f"the checkpoint storage is full: {storage}; free space on it or pass another "
                              "--storage-path") from e
        raise full_disk_error("the checkpoint storage", storage, "pass another --storage-path") from e


def _resume_hint(job: TrainJob) -> str:
    """``run X keeps step 500 of 2000; continue with `raycut train --resume ...```"""
    snapshot = json.loads(_read_text(job.storage_path, f"{job.name}/{CHECKPOINT_SNAPSHOT}") or "{}")
    step = ((snapshot.get("latest_checkpoint_result") or {}).get("metrics") or {}).get("step")
    kept = (f"keeps its checkpoint of step {step} of {job.steps}" if step else
            f"has no checkpoint yet (one every {job.schedule.checkpoint_every} steps; --resume starts it again)")
    return (f"run {job.name} {kept}; continue with `raycut train --resume --name {job.name} "
            f"--storage-path {job.storage_path}`")


def _check_options(opts: TrainOptions) -> None:
    if not opts.resume and not (opts.data_a and opts.data_b):
        raise RaycutError("--data-a and --data-b are required (or --resume to continue a run)")
    if opts.steps is not None and opts.epochs is not None:
        raise RaycutError("pass --steps or --epochs, not both")
    for name, value in (("workers", opts.workers), *((k, getattr(opts.schedule, k)) for k in
                                                      ("checkpoint_every", "log_every", "sample_every", "keep_checkpoints"))):
        if value < 1:
            raise RaycutError(f"--{name.replace('_', '-')} must be at least 1")
    if (opts.steps is not None and opts.steps < 1) or (opts.epochs is not None and opts.epochs < 1):
        raise RaycutError("--steps and --epochs must be at least 1")
    if opts.placement not in PLACEMENTS:
        raise RaycutError(f"--placement must be one of {', '.join(PLACEMENTS)}")


def _plan_job(opts: TrainOptions, storage: str) -> tuple[TrainJob, dict[str, Listing]]:
    """The run's spec from the options, and the domains' listings it was sized from."""
    cfg = resolve_config(opts.preset, opts.config_file, list(opts.sets), opts.overrides)
    if cfg.optim.lr_plateau_patience and not opts.eval_every:
        raise RaycutError(f"lr_plateau_patience={cfg.optim.lr_plateau_patience} cuts the rate on the val metric, "
                          "which needs --eval-every N (and, off the toy data, --eval-data/--eval-real)")
    listings: dict[str, Listing] = {}
    if cfg.data.single_image:
        from pipelines import single_image

        for spec in (opts.data_a, opts.data_b):
            single_image.load_single_image(spec)  # one image each, readable: said now, not in an actor
        size_a = size_b = 1
        spe = single_image.steps_per_epoch(batch_size=cfg.optim.batch_size, workers=opts.workers)
    else:
        listings = {"A": list_source(opts.data_a), "B": list_source(opts.data_b)}
        for listing in listings.values():
            # A folder of the wrong files (all unreadable) is said now, in one line, not
            # by each restarted worker after Ray Train has started.
            decode_head(listing, cfg.data, min(listing.size, HEAD_CHECK_FILES))
        size_a, size_b = listings["A"].size, listings["B"].size
        spe = data_steps_per_epoch(size_a, size_b, batch_size=cfg.optim.batch_size, workers=opts.workers)
    epochs = opts.epochs or (cfg.optim.n_epochs + cfg.optim.n_epochs_decay)
    steps = opts.steps or epochs * spe
    name = opts.name or f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    if _exists(storage, f"{name}/{SPEC_NAME}"):
        raise RaycutError(f"run {name} already exists in {storage}; pass --resume to continue it, or another --name")
    job = TrainJob(
        config=cfg.to_dict(), data_a=opts.data_a, data_b=opts.data_b, name=name, storage_path=storage, steps=steps,
        steps_per_epoch=spe, workers=opts.workers, gpus_per_worker=opts.gpus_per_worker,
        cpus_per_worker=default_cpus_per_worker(opts), schedule=opts.schedule, register=opts.register,
        register_raw_g=opts.register_raw_g, step_lines=opts.step_lines,
        console_label=opts.console_label,
        extra={"images_a": size_a, "images_b": size_b, "placement": opts.placement},
    )
    if opts.eval_every:
        # Every evaluation comes with a checkpoint: Ray Train keeps the best by its score.
        v = opts.validation
        job = replace(job, eval_every=opts.eval_every, schedule=replace(job.schedule, checkpoint_every=opts.eval_every),
                      eval={"eval_data": v.eval_data, "eval_real": v.eval_real, "n_images": v.eval_images,
                            "inception_weights": v.inception_weights, "feature_extractor": v.feature_extractor})
        plan = _eval_plan(job)  # the validation data is checked now, before anything starts
        job = replace(job, eval={**job.eval, "metric": plan.key})
    return job, listings


def default_cpus_per_worker(opts: TrainOptions) -> float:
    """--cpus-per-worker, else: on a local Ray, the cores this process may use (its
    affinity and cgroup quota, not the host's count) shared by the workers, at most
    OMP_NUM_THREADS where set (each worker's torch runs that many threads; one thread
    per worker left a 2-core laptop half idle); on a cluster (RAY_ADDRESS), 1 per worker, as Ray's own
    default, since the nodes' sizes are not known here."""
    if opts.cpus_per_worker is not None:
        if opts.cpus_per_worker <= 0:
            raise RaycutError(f"--cpus-per-worker {opts.cpus_per_worker} must be > 0")
        return opts.cpus_per_worker
    if os.environ.get("RAY_ADDRESS"):
        return 1.0
    return float(threads_per_worker(opts.workers))


def _ingest_options(job: TrainJob, opts: TrainOptions) -> IngestOptions:
    """The decode actors of each domain. On a local Ray the machine is known: one actor
    per domain per 4 CPUs the trainers leave. On a cluster the pool autoscales between
    --data-actors MIN and MAX (default 1-16 per domain), one CPU each: Ray Data adds
    actors while the trainers wait on data and the cluster has (or its autoscaler
    adds) CPUs; nothing is sized from the nodes that exist at launch."""
    import ray

    from jobs.ray_runtime import on_this_machine, parse_pool

    if on_this_machine():
        data_cpus = opts.data_cpus or max(1.0, ray.cluster_resources().get("CPU", 1) - job.workers * job.cpus_per_worker)
        # One decode actor per domain per 4 spare CPUs (at least one), the rest left to
        # the streaming split and reads: trainers must never wait on starved decoders.
        actors = max(1, int(data_cpus // 4))
        pool = parse_pool(opts.data_actors, default=(actors, actors), what="--data-actors")
        num_cpus = min(1.0, data_cpus / (2 * pool[1] + 1))
    else:
        pool = parse_pool(opts.data_actors, default=(1, DEFAULT_MAX_DECODE_ACTORS), what="--data-actors")
        num_cpus = 1.0
    smallest = min(job.extra.get("images_a", 0), job.extra.get("images_b", 0)) or MIN_FILES_PER_PASS
    return IngestOptions(seed=job.cut.seed, concurrency=pool, num_cpus=num_cpus,
                         repeat=max(1, -(-MIN_FILES_PER_PASS // smallest)), nice=DECODE_NICE)


def _eval_plan(job: TrainJob):
    from jobs.train.evaluation import plan_eval

    if not job.eval_every:
        return None
    where = {k: v for k, v in job.eval.items() if k != "metric"}
    return plan_eval(job.eval_every, job.data_a, crop_size=job.cut.data.crop_size, **where)


def _start_tracking(job: TrainJob, opts: TrainOptions, uri: str) -> TrainJob:
    """Create the MLflow run of a new job, with the resolved config as params."""
    cfg = job.cut
    params = {**cfg.flat(), "data_a": job.data_a, "data_b": job.data_b, "workers": job.workers,
              "global_batch": job.global_batch, "steps": job.steps, "steps_per_epoch": job.steps_per_epoch,
              "images_a": job.extra["images_a"], "images_b": job.extra["images_b"],
              "gpus_per_worker": job.gpus_per_worker,
              "lr_constant_steps": constant_steps(cfg.optim, job.steps),
              "lr_schedule": describe_schedule(cfg.optim, job.steps, job.steps_per_epoch)}
    if cfg.optim.ema_decay:  # what the average spans in this run, which the ramp decides in short ones
        params["ema_schedule"] = describe_ema(cfg.optim.ema_decay, job.steps)
    if cfg.model.netD == "basic":  # the depth n_layers_D (auto) built; a StyleGAN2 D has none
        params["resolved_n_layers_D"] = cfg.d_layers
    tags = {"raycut.run": job.name, "raycut.run_dir": job.run_dir, "raycut.preset": cfg.preset}
    if opts.parent_run_id:
        tags["mlflow.parentRunId"] = opts.parent_run_id  # shown nested under the search in the MLflow UI
    run_id = tracking.create_run(uri, opts.experiment, job.name, params, tags)
    return replace(job, tracking_uri=uri, mlflow_run_id=run_id)


def _fit(job: TrainJob, opts: TrainOptions, callbacks: Sequence[Any] = (), listings: dict[str, Listing] | None = None) -> Any:
    import ray
    import ray.train
    from ray.train.torch import TorchConfig

    from jobs.train.interrupt import stop_request, torch_trainer
    from jobs.train.worker import train_worker

    cfg = job.cut
    # Ray Train's report() waits on the controller's health-check poll (2 s by default);
    # a faster poll keeps reports cheap. Propagated to the controller and the workers.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    start_ray(job.workers * job.cpus_per_worker)
    require_gpus(job.gpus_per_worker, "--gpus-per-worker")
    ingest = _ingest_options(job, opts)
    without_progress_bars()
    report = None
    if cfg.data.single_image:
        from pipelines.single_image import load_single_image, preview, read_single_image

        datasets = {k: read_single_image(spec, cfg.data, batch=job.batch_per_worker, seed=cfg.seed + i,
                                         concurrency=ingest.concurrency, num_cpus=ingest.num_cpus, nice=DECODE_NICE)
                    for i, (k, spec) in enumerate((("A", job.data_a), ("B", job.data_b)))}
        samples = preview(load_single_image(job.data_a))  # the whole painting, not a crop
    else:
        listed = {k: (listings or {}).get(k) or list_source(spec) for k, spec in (("A", job.data_a), ("B", job.data_b))}
        # Bad files are skipped, not fatal: said as they are met and counted at the end.
        report = IngestReport.remote(live=True)
        datasets = {k: read_domain(listed[k], cfg.data, options=replace(ingest, name=k), report=report)
                    for k in ("A", "B")}
        # The inputs of every sample grid of the run: the first crops of domain A.
        samples = decode_head(listed["A"], cfg.data, job.samples, seed=cfg.seed)
    plan = _eval_plan(job)
    score = {}
    if plan is not None:
        from jobs.train.evaluation import CHOICE_SCORE

        score = {"checkpoint_score_attribute": CHOICE_SCORE, "checkpoint_score_order": "max"}
    use_gpu = job.gpus_per_worker > 0
    resources = {"CPU": job.cpus_per_worker, **({"GPU": job.gpus_per_worker} if use_gpu else {})}
    stop = stop_request()  # Ctrl-C: the workers checkpoint where they are (jobs.train.interrupt)
    trainer = torch_trainer(
        stop,
        train_loop_per_worker=train_worker,
        train_loop_config={"job": job.to_dict(), "samples": samples, "eval": plan.__dict__ if plan else None,
                           "stop": stop},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=job.workers, use_gpu=use_gpu, resources_per_worker=resources,
            placement_strategy=PLACEMENTS[job.extra.get("placement", opts.placement)],
        ),
        run_config=ray.train.RunConfig(
            name=job.name,
            storage_path=job.storage_path,
            failure_config=ray.train.FailureConfig(max_failures=job.schedule.max_failures),
            # With --eval-every the best checkpoints by the score are kept (and the newest).
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=job.schedule.keep_checkpoints, **score),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            callbacks=list(callbacks),
            worker_runtime_env=compute_runtime_env(),
        ),
        datasets=datasets,
        # One worker reads each domain whole, from its own process: splitting for one
        # would only put a coordinator actor per domain between Ray Data and the worker
        # (a process start on the run's critical path, ~5 s and ~4 s of CPU each on 2 cores).
        dataset_config=ray.train.DataConfig(datasets_to_split="all" if job.workers > 1 else []),
    )
    try:
        with train_run_released():
            return trainer.fit()
    except Exception as e:  # Ray wraps worker errors; say the cause in one line, point at --resume
        cause, n = failure_cause(e), job.schedule.max_failures
        fix = f"{_disk_full_hint(job.storage_path)}; free space" if is_disk_full(cause) else "fix the cause"
        raise RaycutError(f"training failed after {n} restart{'' if n == 1 else 's'} ({cause}); {fix}, then: "
                          f"{_resume_hint(job)}") from e
    finally:
        if report is not None:
            _report_ingest(job, report)


def _disk_full_hint(storage: str) -> str:
    """Which of the run's disks may be the full one: each checkpoint is written to a
    worker's temp folder, then copied to the storage (a local folder, NFS or s3://)."""
    staged = f"each worker writes a checkpoint first to its temp folder, here {describe_room(tempfile.gettempdir())}"
    if "://" in storage:
        return f"a disk is full: {staged}"
    return f"a disk is full: checkpoints go to {describe_room(storage)}, and {staged}"


def failure_cause(e: BaseException) -> str:
    """The one line that says why a Ray Train run failed. Ray Train's own message starts
    "Training failed due to worker errors:" and puts each worker's traceback below it;
    the cause is the first worker's exception: raycut's own message when it is one (a
    domain with no full batch), else its last line (``ValueError: ...``)."""
    failures = getattr(e, "worker_failures", None) or {}
    for rank in sorted(failures):
        failure = failures[rank]
        while failure is not None and not isinstance(failure, RaycutError):
            failure = failure.__cause__ or getattr(failure, "cause", None)
        if failure is not None:
            return str(failure)
    text = "\n".join(str(f) for _, f in sorted(failures.items())) or str(e)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    ours = [line.split("RaycutError: ", 1)[1] for line in lines if "RaycutError: " in line]
    if ours:
        return ours[-1][:300]
    return (lines[-1] if failures and lines else lines[0] if lines else type(e).__name__)[:300]


def _report_ingest(job: TrainJob, report: Any) -> None:
    """What the run's ingest skipped, upscaled and converted: printed, and kept in the
    MLflow run (counts as tags, which a resumed run may update; the listed files in
    ``ingest_report.json``)."""
    import ray

    try:
        summary = ray.get(report.summary.remote(), timeout=30)
    except ray.exceptions.RayActorError:
        # The report went down with the process that owns it: ASHA stopping this Tune
        # trial, or a Ctrl-C. The skipped files were printed as they were met (live).
        return
    except Exception as e:  # the report must never hide how the run itself ended
        print(f"[{job.console_label}] the ingest report could not be read ({type(e).__name__}); bad files, if any, were skipped",
              flush=True)
        return
    print(format_report(summary, name="ingest A + B"), flush=True)
    counts = summary["counts"]
    try:
        tracking.log_tags(job.tracking_uri, job.mlflow_run_id,
                          {f"raycut.ingest_{k}_files": int(counts.get(k, 0)) for k in ("skipped", "upscaled", "converted")})
        if counts.get("skipped") or counts.get("converted"):
            tracking.log_dict(job.tracking_uri, job.mlflow_run_id, summary, "ingest_report.json")
    except Exception as e:  # noqa: BLE001 - printed above; a store that went away must not hide the run's end
        print(f"[{job.console_label}] the ingest report was not logged to MLflow ({type(e).__name__}: {str(e)[:200]})", flush=True)


def _finish(job: TrainJob, result: Any, uri: str) -> TrainResult:
    from jobs.train.worker import MODEL_SUBDIR

    if result.checkpoint is None:
        raise RaycutError(f"run {job.name} ended without a checkpoint; see the log above")
    local = Path(tempfile.mkdtemp(prefix=f"raycut-{job.name}-"))
    result.checkpoint.to_directory(str(local))
    model_dir = local / MODEL_SUBDIR
    if not (model_dir / "config.json").is_file():
        raise RaycutError(f"the last checkpoint of {job.name} holds no model directory; resume it to finish training")
    t = time.perf_counter()
    _log_loss_plot(uri, job.mlflow_run_id, local)
    model_uri = tracking.log_model_dir(uri, job.mlflow_run_id, model_dir, metrics=_key_metrics(result.metrics))
    best = _mark_best(job, result, uri, final_model_uri=model_uri) if job.eval_every else None
    version = None
    if job.register:
        # An evaluated run registers its best model: the paper's numbers are best-during-training.
        registered = best["model_uri"] if best else model_uri
        tags = {"raycut.run": job.name, "raycut.steps": str(best["step"] if best else job.steps)}
        version = tracking.register(uri, registered, job.register, tags)
    tracking.end_run(uri, job.mlflow_run_id, "FINISHED")
    _write_text(job.storage_path, f"{job.name}/{DONE_NAME}",
                json.dumps({"steps": job.steps, "mlflow_run_id": job.mlflow_run_id, "model_uri": model_uri,
                            "registered": job.register, "version": version}) + "\n")
    metrics = dict(result.metrics or {})
    print(_summary(job, metrics, uri, model_uri, version, best), flush=True)
    return TrainResult(job=job, metrics=metrics, checkpoint_dir=local, model_dir=model_dir, mlflow_run_id=job.mlflow_run_id,
                       model_uri=model_uri, model_version=version, timings={"log_model_s": time.perf_counter() - t},
                       best=best)


def _key_metrics(metrics: Any) -> dict[str, float]:
    """The numbers a registered model carries as metadata: its step and losses, and its
    evaluation score when there is one."""
    keep = ("step", "G", "D", "NCE", "D_rt", "eval_colour_err", "eval_kid")
    return {k: float(v) for k, v in (metrics or {}).items() if k in keep}


def _mark_best(job: TrainJob, result: Any, uri: str, *, final_model_uri: str) -> dict[str, Any]:
    """The evaluated checkpoint chosen to register (jobs.train.evaluation.CheckpointChoice):
    its model logged as ``best_model`` in the run, its score and step as run
    metrics/tags, and ``best.json`` in the run's folder."""
    from jobs.train.evaluation import checkpoint_to_register
    from jobs.train.worker import MODEL_SUBDIR

    key = job.eval["metric"]
    registered = checkpoint_to_register(result.best_checkpoints or [], key)
    if registered is None:
        raise RaycutError(f"run {job.name} has no evaluated checkpoint; see the log above")
    checkpoint, metrics = registered
    if int(metrics["step"]) == job.steps:
        model_uri = final_model_uri  # the final model is the best: logged once
    else:
        local = Path(tempfile.mkdtemp(prefix=f"raycut-{job.name}-best-"))
        checkpoint.to_directory(str(local))
        model_uri = tracking.log_model_dir(uri, job.mlflow_run_id, local / MODEL_SUBDIR, name="best_model",
                                           metrics=_key_metrics(metrics))
    best = {"step": int(metrics["step"]), "metric": key, "value": float(metrics[key]), "checkpoint": checkpoint.path,
            "model_uri": model_uri}
    tracking.log_metrics_now(uri, job.mlflow_run_id, {f"best_{key}": best["value"], "best_step": best["step"]},
                             step=best["step"])
    _write_text(job.storage_path, f"{job.name}/best.json", json.dumps(best, indent=2) + "\n")
    print(f"[{job.console_label}] best checkpoint: step {best['step']}, {key} {best['value']:.4f} -> {model_uri}", flush=True)
    return best



def _log_loss_plot(uri: str, run_id: str, folder: Path) -> None:
    """Loss curves of the whole run (across restarts) from MLflow's metric history."""
    from mlflow.tracking import MlflowClient

    from pipelines.report import save_loss_plot

    client = MlflowClient(tracking_uri=uri)
    keys = [k for k in ("G_GAN", "NCE", "NCE_Y", "D", "images_per_s") if client.get_metric_history(run_id, k)]
    rows: dict[int, dict[str, float]] = {}
    for k in keys:
        for m in client.get_metric_history(run_id, k):
            rows.setdefault(m.step, {"step": m.step})[k] = m.value
    if rows:
        plot = save_loss_plot([rows[s] for s in sorted(rows)], folder / "losses.png", keys=keys)
        client.log_artifact(run_id, str(plot))


def _summary(job: TrainJob, metrics: dict[str, Any], uri: str, model_uri: str, version: str | None,
             best: dict[str, Any] | None = None) -> str:
    losses = ", ".join(f"{k} {metrics[k]:.3f}" for k in ("G_GAN", "NCE", "D") if k in metrics)
    # The registered model is the best checkpoint's where the run was evaluated, which
    # need not be the final one: the line says which it is.
    registered = f"models:/{job.register}@latest (version {version})" if version else ""
    if not registered:
        model = f"model: {model_uri}"
    elif best is not None and best["model_uri"] != model_uri:
        model = f"model: {model_uri}; registered: the best checkpoint's (step {best['step']}) as {registered}"
    else:
        model = f"model: {model_uri}, registered as {registered}"
    lines = [
        f"[{job.console_label}] done: {job.name}, step {int(metrics.get('step', job.steps))}/{job.steps} ({losses}), "
        f"{metrics.get('images_per_s', 0):.1f} images/s on {int(metrics.get('nodes', 1))} node(s)",
        f"[{job.console_label}] {model}",
        f"[{job.console_label}] see it: mlflow ui --backend-store-uri {uri}",
    ]
    return "\n".join(lines)


# ---- storage: local folders or pyarrow filesystems (s3://, gs://) ------------------


def _absolute_storage(path: str) -> str:
    return path if "://" in path else str(Path(path).expanduser().resolve())


def _write_text(storage: str, rel: str, text: str) -> None:
    """Whole or not at all: in a local (or NFS) folder through jobs.disk.write_whole, so
    that a full disk leaves no empty run.json to block the run's name; an object
    store's PUT is whole already."""
    fs, root = filesystem_for(storage)
    path = f"{root.rstrip('/')}/{rel}"
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    if fs.type_name == "local":
        write_whole(Path(path), text)
        return
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def _read_text(storage: str, rel: str) -> str | None:
    fs, root = filesystem_for(storage)
    try:
        with fs.open_input_stream(f"{root.rstrip('/')}/{rel}") as f:
            return f.read().decode()
    except (FileNotFoundError, OSError):
        return None


def _exists(storage: str, rel: str) -> bool:
    return _read_text(storage, rel) is not None


def _drop_unregistered_checkpoints(storage: str, name: str) -> None:
    """Delete the checkpoint folders of ``name`` that Ray Train never registered.

    A crash between a checkpoint's upload and its registration leaves a complete-looking
    folder that no snapshot lists: Ray Train will neither resume from it nor count it
    against keep_checkpoints, so without this every crash could leak one. Run before
    the resumed fit, while nothing writes to the run's folder.
    """
    snapshot = _read_text(storage, f"{name}/{CHECKPOINT_SNAPSHOT}")
    # No snapshot: Ray Train registered no checkpoint (a run that failed at its first,
    # on a full disk: the truncated folder and one per restart stay behind).
    known = {r["checkpoint_dir_name"] for r in json.loads(snapshot or "{}").get("checkpoint_results", [])}
    best_path = json.loads(_read_text(storage, f"{name}/best.json") or "{}").get("checkpoint", "")
    best = best_path.rstrip("/").rsplit("/", 1)[-1]
    fs, root = filesystem_for(storage)
    run_dir = f"{root.rstrip('/')}/{name}"
    dropped = []
    for info in fs.get_file_info(FileSelector(run_dir)):
        folder = info.base_name
        if info.type == FileType.Directory and folder.startswith("checkpoint_") and folder not in known | {best}:
            fs.delete_dir(info.path)
            dropped.append(folder)
    if dropped:
        print(f"[train] removed {len(dropped)} checkpoint folder(s) a crash left unregistered: {', '.join(dropped)}",
              flush=True)


def _load_job(storage: str, name: str | None) -> TrainJob:
    name = name or (_read_text(storage, LATEST_NAME) or "").strip()
    if not name:
        raise RaycutError(f"no run to resume in {storage}; start one with raycut train --data-a ... --data-b ...")
    spec = _read_text(storage, f"{name}/{SPEC_NAME}")
    if spec is None:
        raise RaycutError(f"run {name} has no {SPEC_NAME} in {storage}; pass the --name and --storage-path it was started with")
    if _exists(storage, f"{name}/{DONE_NAME}"):
        raise RaycutError(f"run {name} already finished; start a new run (its model is in MLflow)")
    return TrainJob.from_dict(json.loads(spec))
