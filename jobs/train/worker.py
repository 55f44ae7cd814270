"""The per-worker loop of ``raycut train`` (runs inside Ray Train's worker processes).

    build G/D/F (+ restore the latest checkpoint) -> wrap in DDP -> for each step:
    next A and B batch from this worker's Ray Data shards -> cut_core.train_step ->
    every log_every (rank 0): metrics to MLflow, one progress line
    every checkpoint_every and at the end: report metrics + a checkpoint to Ray Train
    every sample_every (rank 0): a sample grid into the MLflow run
    with --eval-every (rank 0, at each checkpoint): score G on the validation subset;
    the checkpoint chosen to register (CheckpointChoice) also holds the model directory

Every rank calls ``ray.train.report`` at the same steps (the checkpoint steps): it
is a barrier.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from safetensors.numpy import save_file as save_numpy

from cut_core import build_train_state, save_generator, set_step_lr, train_step
from cut_core.d_balance import WinWatch
from cut_core.nce_watch import NCEWatch
from cut_core.distributed import agree_fast_paths, replica_divergence, wrap_data_parallel
from cut_core.hardware import resolve_perf
from cut_core.images import to_model_input
from cut_core.ema_schedule import describe_ema
from cut_core.lr_schedule import describe_schedule
from cut_core.translate import translate_uint8
from cut_core.train_checkpoint import load_train_state, save_train_state
from cut_core.training import TrainState, observe_val_metric
from jobs.progress import Progress
from jobs.tracking import RunLogger
from jobs.train.evaluation import CHOICE_SCORE, CheckpointChoice, EvalPlan, Evaluator
from jobs.train.interrupt import stop_requested
from jobs.train.spec import TrainJob
from pipelines.ingest import unpaired_batches
from pipelines.report import save_grid

MODEL_SUBDIR = "model"  # the final checkpoint also holds the model directory
FINAL_SAMPLES = "final_samples.safetensors"  # inputs and the in-memory G's outputs
BEST_NAME = "best.json"  # in each checkpoint of an evaluated run: the checkpoint chosen so far (CheckpointChoice)


def train_worker(loop_config: dict[str, Any]) -> None:
    _quiet_ray_train()
    job = TrainJob.from_dict(loop_config["job"])
    samples: np.ndarray = loop_config["samples"]  # (S, crop, crop, 3) uint8 from domain A
    cfg = job.cut
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(job.cpus_per_worker)))

    # Every rank settles auto for its own device, then the ranks agree (DDP needs one
    # layout; cut_core.distributed.agree_fast_paths; a single worker keeps its own).
    fast = agree_fast_paths(resolve_perf(cfg.perf, device), device)
    state = build_train_state(cfg, device=device, rank=rank, fast=fast)
    resumed_from = 0
    saved_choice: dict[str, Any] | None = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            load_train_state(state, folder, rank=rank)
            if (Path(folder) / BEST_NAME).is_file():
                saved_choice = json.loads((Path(folder) / BEST_NAME).read_text())
        resumed_from = state.step
    # The data streams from here on: Ray Data starts its actors (seconds) while this
    # worker wraps DDP, loads its evaluation set and connects to MLflow.
    shards = ray.train.get_dataset_shard("A"), ray.train.get_dataset_shard("B")
    batches = unpaired_batches(*shards, batch_size=job.batch_per_worker, steps=job.steps - state.step,
                               packed=cfg.data.single_image)
    if world > 1:
        wrap_data_parallel(state, device_ids=[device.index] if device.type == "cuda" else None)
    nodes = _count_nodes(world)

    lead = rank == 0
    plan = EvalPlan(**loop_config["eval"]) if loop_config.get("eval") else None
    evaluator = Evaluator(plan) if plan is not None and lead else None
    choice = CheckpointChoice.from_json(plan, saved_choice) if plan is not None else None
    logger = RunLogger(job.tracking_uri, job.mlflow_run_id) if lead and job.mlflow_run_id else None
    shows_steps = lead and job.step_lines
    bar = Progress(job.console_label, job.steps, unit="step", every=1, stream=sys.stdout, initial=state.step) if shows_steps else None
    if lead:
        where = f"resuming at step {resumed_from}" if resumed_from else "starting"
        sys.stdout.write(f"[{job.console_label}] {where}: {world} worker(s) on {nodes} node(s), {job.batch_per_worker} images per "
                         f"worker per step (global batch {job.global_batch}), {job.steps} steps of "
                         f"{job.steps_per_epoch} per epoch; {cfg.d_summary}\n"
                         f"[{job.console_label}] {describe_schedule(cfg.optim, job.steps, job.steps_per_epoch)}\n"
                         + (f"[{job.console_label}] {describe_ema(cfg.optim.ema_decay, job.steps)}\n" if state.G_ema else ""))
        sys.stdout.flush()
    if logger and resumed_from:
        logger.metrics({"resumed_from_step": resumed_from}, step=resumed_from)
    if lead:
        _report_fast_paths(state, job, fresh=not resumed_from)

    watch = WinWatch.for_config(cfg) if lead else None  # warns when D's loss stays near zero
    nce_watch = NCEWatch.for_config(cfg) if lead and not cfg.is_cyclegan else None  # ... and PatchNCE's at chance
    sums: dict[str, torch.Tensor] = {}
    window_steps, window_start, waited = 0, time.perf_counter(), 0.0
    lr = state.opt_G.param_groups[0]["lr"]
    stop = loop_config.get("stop")  # the driver's StopRequest (jobs.train.interrupt): Ctrl-C
    while True:
        t = time.perf_counter()
        pair = next(batches, None)
        waited += time.perf_counter() - t
        if pair is None:
            break
        lr = set_step_lr(state, job.steps)  # the config's schedule fitted to the planned steps
        a, b = (to_model_input(x).to(device, non_blocking=True) for x in pair)
        losses = train_step(state, a, b)
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v  # stays on the device: no sync per step
        window_steps += 1
        step, last = state.step, state.step == job.steps
        logs, periodic = step % job.schedule.log_every == 0, step % job.schedule.checkpoint_every == 0
        # Asked at each report (every rank at the same step): after a Ctrl-C, checkpoint here and stop.
        stopping = (logs or periodic) and not last and stop_requested(stop, lead=lead, world=world, device=device)
        save = periodic or last or stopping
        if not (save or logs):
            continue
        elapsed = time.perf_counter() - window_start
        metrics = {k: float(v) / window_steps for k, v in sums.items()}
        metrics.update(step=step, epoch=(step - 1) // job.steps_per_epoch, lr=lr, nodes=nodes,
                       resumed_from_step=resumed_from, images_per_s=window_steps * job.global_batch / elapsed,
                       data_wait_frac=waited / elapsed)
        if save:  # every rank takes part
            metrics["replica_divergence"] = replica_divergence(state) if world > 1 else 0.0
        if stopping:
            metrics["interrupted"] = 1.0  # tells the driver this run stopped on request, not at its end
        chosen = False
        if save and evaluator is not None:
            metrics.update(evaluator(state.inference_G, device))
            chosen = choice.observe(step, metrics)
            # The registered checkpoint's score (the best, or with KID's error the latest near it).
            metrics[f"best_{plan.key}"] = choice.chosen["value"]
            metrics[CHOICE_SCORE] = float(step if chosen else -1)
        if save and plan is not None and state.lr_plateau is not None:
            # Every rank at the same step: rank 0's value decides, the others get its scale.
            if observe_val_metric(state, metrics.get(plan.key), job.steps, order=plan.order) and lead:
                best = choice.best
                _note(job, f"step {step}: {plan.key} has not beaten {best['value']:.4g} (step {best['step']}) in "
                           f"{cfg.optim.lr_plateau_patience} evaluations: the rate is cut to "
                           f"x{state.lr_plateau.value:g} of the schedule's")
            metrics["lr_scale"] = state.lr_plateau.value
        if watch is not None and "D" in metrics:
            if watch.observe(metrics["D"], window_steps, metrics.get("D_rt")):
                _warn(job, "d_won", watch.message(step))
            metrics["D_won_steps"] = watch.run  # a plot of it shows when and how long D won
        if nce_watch is not None and "NCE" in metrics and nce_watch.observe(metrics["NCE"], window_steps):
            _warn(job, "nce_near_chance", nce_watch.message(step))
        if lead:
            _lead_logs(job, state, logger, bar, metrics, samples, window_steps)
        if save:
            # Ray Train hears from the workers only with a checkpoint: report() is a
            # barrier that waits on the controller's poll, so calling it every log
            # window would cost every rank that wait. Progress and metrics go straight
            # to the console and MLflow from rank 0 instead, asynchronously, and are
            # flushed here: what a checkpoint covers is stored before it is committed,
            # so a crash loses no metric of the steps it does not repeat.
            if logger is not None:
                logger.flush()
            _report_checkpoint(state, job, rank, metrics, samples if last else None,
                               best=choice.to_json() if lead and choice else None, with_model=chosen)
        sums, window_steps, window_start, waited = {}, 0, time.perf_counter(), 0.0
        if stopping:
            break
    if logger is not None:
        logger.flush()  # the driver reads the whole metric history when the workers end


def _report_fast_paths(state: TrainState, job: TrainJob, *, fresh: bool) -> None:
    """What ``auto`` settled on in this worker, and why: one console line (plus one per
    warning), MLflow params on a fresh run and tags always (a resumed run may be on
    another machine, and params cannot change)."""
    from jobs import tracking

    fast = state.fast
    why = f" ({fast.paths.reason})" if fast.paths is not None else ""
    malloc = f"; malloc: {fast.malloc}" if fast.malloc else ""
    sys.stdout.write(f"[{job.console_label}] fast paths on {state.device}: {fast.summary}{why}{malloc}\n")
    for line in fast.warnings:
        sys.stdout.write(f"[{job.console_label}] warning: {line}\n")
    sys.stdout.flush()
    if job.mlflow_run_id:
        params = fast.params()
        if fresh:
            tracking.log_params(job.tracking_uri, job.mlflow_run_id, params)
        tracking.log_tags(job.tracking_uri, job.mlflow_run_id, {f"raycut.{k}": v for k, v in params.items()})


def _note(job: TrainJob, message: str) -> None:
    """One console line on a line of its own (after the progress line): what the run
    changed in itself, or, through _warn, a warning."""
    sys.stdout.write(f"\n[{job.console_label}] {message}\n")
    sys.stdout.flush()


def _warn(job: TrainJob, what: str, message: str) -> None:
    """One console line, and the same words as the MLflow tag ``raycut.warning.<what>``."""
    from jobs import tracking

    _note(job, f"warning: {message}")
    if job.mlflow_run_id:
        tracking.log_tags(job.tracking_uri, job.mlflow_run_id, {f"raycut.warning.{what}": message})


def _report_checkpoint(state: TrainState, job: TrainJob, rank: int, metrics: dict[str, float],
                       final_samples: np.ndarray | None, *, best: dict[str, Any] | None = None,
                       with_model: bool = False) -> None:
    """Every rank writes its part (rank 0 the networks and optimizers, each rank its
    RNG); Ray Train merges the parts into one checkpoint directory. The final one and
    every newly chosen checkpoint of an evaluated run also hold the model directory."""
    with tempfile.TemporaryDirectory(prefix="raycut-ckpt-") as tmp:
        save_train_state(state, tmp, rank=rank)
        if rank == 0 and best:
            (Path(tmp) / BEST_NAME).write_text(json.dumps(best) + "\n")
        if rank == 0 and (final_samples is not None or with_model):
            cfg = state.config
            raw = job.register_raw_g or state.G_ema is None
            save_generator(state.G if raw else state.inference_G, Path(tmp) / MODEL_SUBDIR, model_config=cfg.model,
                           training_config=cfg, extra={"trained_steps": state.step, "run": job.name,
                                                       "weights": "raw G" if raw else f"EMA of G ({cfg.optim.ema_decay})"})
        if rank == 0 and final_samples is not None:
            # safetensors.numpy writes the raw buffer, ignoring strides: contiguous copies only.
            pair = {"input": final_samples, "output": _translate(state, final_samples)}
            save_numpy({k: np.ascontiguousarray(v) for k, v in pair.items()}, str(Path(tmp) / FINAL_SAMPLES))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _lead_logs(job: TrainJob, state: TrainState, logger: RunLogger | None, bar: Progress | None,
               metrics: dict[str, float], samples: np.ndarray, steps: int) -> None:
    step = int(metrics["step"])
    if bar is not None:
        shown = {k: metrics[k] for k in ("G", "NCE", "D") if k in metrics}
        shown["img/s"] = metrics["images_per_s"]
        shown.update({k.removeprefix("eval_"): metrics[k] for k in ("eval_colour_err", "eval_kid") if k in metrics})
        bar.update(steps, values=shown)
    if logger is None:
        return
    logger.metrics({k: v for k, v in metrics.items() if k != "step"}, step=step)
    if step % job.schedule.sample_every == 0 or step == job.steps:
        with tempfile.TemporaryDirectory() as tmp:
            fake = _translate(state, samples)
            grid = save_grid([[samples[i], fake[i]] for i in range(len(samples))], Path(tmp) / f"step_{step:07d}.png",
                             titles=("input A", f"translation, step {step}"), scale=max(1, 128 // samples.shape[1]))
            logger.artifact(grid, "samples")  # the PNG as a file, and in the image view by step
            logger.image(grid, "samples", step)


def _translate(state: TrainState, images: np.ndarray) -> np.ndarray:
    """(S, H, W, 3) uint8 through the plain (unwrapped) G, or its EMA, in fp32 eval mode."""
    return translate_uint8(state.inference_G, images, batch_size=len(images), device=state.device)


def _quiet_ray_train() -> None:
    """Ray Train logs every report (the full metrics dict, per rank) at INFO from a
    logger that LoggingConfig does not reach; the progress line says it better."""
    try:
        from ray.train.v2._internal.execution import context as train_context

        train_context.logger.setLevel(logging.WARNING)
    except (ImportError, AttributeError):  # another Ray version: noisy, not broken
        pass


def _count_nodes(world: int) -> int:
    node = ray.get_runtime_context().get_node_id()
    if world == 1:
        return 1
    ids: list[Any] = [None] * world
    dist.all_gather_object(ids, node)
    return len(set(ids))
