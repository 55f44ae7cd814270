"""`raycut tune`: search CUT's layer and negative settings with Ray Tune.

    resolve the base config + the space -> MLflow parent run -> Tuner(trial, ASHA)
    each trial = one `raycut train` run on Ray Train (its own workers, an MLflow child
        run, --eval-every reports that ASHA prunes on) -> results table (CSV + Parquet)
    -> best config as a YAML `raycut train --config` takes -> best model registered
       with the alias `champion`

Resources: a trial is a Tune function (no CPU of its own: it only waits) that starts a
Ray Train run of ``workers`` x ``cpus_per_worker`` plus ``data_cpus`` for its Ray Data
feed. ``max_concurrent`` trials must fit in the cluster's CPUs at once, or a worker
group waits for CPUs that never free up; raycut sizes the per-trial CPUs from the
cluster and --max-concurrent (fractions are fine: Ray's CPUs are logical) and gives
the worker group a start timeout long enough for a busy 2-core machine.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from cut_core.cores import usable_cores
from cut_core.errors import RaycutError
from jobs import tracking
from jobs.disk import full_disk_error, is_disk_full, write_whole
from jobs.train.spec import Schedule
from jobs.tune.progress import search_progress_callback
from pipelines.report import save_trial_curves
from jobs.tune.spec import TuneOptions

SPEC_NAME = "tune.json"
CHAMPION = "champion"
# Ray Train gives a worker group 30 s to start by default; with several trials
# starting at once on 2 cores, process start-up alone can take longer.
WORKER_GROUP_START_TIMEOUT_S = "300"
STOPPED_NAME = "stopped_by_asha.txt"
CURVES_NAME = "search.png"  # every trial's score over its steps
FINISHED_NAME = "finished.json"  # written last: the search ended, its results and champion are in place
RUNGS_NAME = "asha_rungs.json"
TRIAL_CPU = 0.05  # the Tune function itself: it only waits on its Ray Train run
# Fault injection for tests and drills: after this many trials complete, the driver
# interrupts itself exactly as Ctrl-C would, so "interrupt, then --resume" is tested
# at a known point of the search instead of racing a timer.
INTERRUPT_AFTER_ENV = "RAYCUT_TUNE_INTERRUPT_AFTER_TRIALS"


@dataclass
class TuneSummary:
    rows: list[dict[str, Any]]
    metric: str
    mode: str
    best: dict[str, Any]
    best_config_path: Path
    results_path: Path
    parent_run_id: str
    model_version: str | None
    stopped_early: int


def run_tune(opts: TuneOptions) -> TuneSummary:
    from ray import tune

    storage = Path(opts.storage_path).expanduser().resolve()
    if opts.resume:
        opts = _load(storage, opts.name)
        opts = replace(opts, resume=True)
        ended = _finished_summary(opts, storage)
        if ended is not None:
            # Nothing to train; running _finish again would register the champion twice.
            print(f"[tune] search {opts.name} has finished: nothing to resume; its results:", flush=True)
            print(format_results(ended), flush=True)
            return ended
    else:
        opts = _plan(opts, storage)
    exp_dir = storage / opts.name
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", WORKER_GROUP_START_TIMEOUT_S)
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    # Trials run in the driver's working directory, so relative data paths mean what
    # the user typed (Tune would otherwise move each trial into its own folder).
    os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
    # Tune's newer console output prints a box of the experiment's settings and a
    # TensorBoard command for a folder under /tmp/ray at every start, whatever the
    # verbosity; raycut prints the search's own header and progress line instead.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    logging.getLogger("ray.tune.tune").addFilter(_without_python_resume_advice)
    _start_ray(opts)
    trainable = tune.with_resources(_trial, {"CPU": TRIAL_CPU})
    trainable = tune.with_parameters(trainable, spec=asdict(opts))
    if opts.resume:
        if not tune.Tuner.can_restore(str(exp_dir)):
            raise RaycutError(f"{exp_dir} holds no Tune state to resume; start the search again without --resume")
        print(f"[tune] resuming {opts.name}: finished trials are kept, unfinished ones start again", flush=True)
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True, restart_errored=True)
    else:
        tuner = _tuner(opts, trainable, storage)
    results = tuner.fit()
    # Ctrl-C: Tune saved its state and stopped. Tune marks the trials it stopped then as
    # terminated, so a trial counts as complete only if it trained to its end, failed,
    # or was stopped by ASHA (recorded by RecordingASHA); others may not exist yet.
    complete = sum(1 for r in results if r.error or _trial_outcome(storage, opts, r) != "interrupted")
    unfinished = _expected_trials(opts) - complete
    if unfinished > 0:
        raise KeyboardInterrupt(f"search {opts.name} has {unfinished} trial(s) unfinished; continue it with "
                                f"`raycut tune --resume --name {opts.name} --storage-path {opts.storage_path}`")
    return _finish(opts, results, storage)


def _without_python_resume_advice(record: logging.LogRecord) -> bool:
    """After a Ctrl-C Ray Tune advises ``Tuner.restore(path=..., trainable=...)``, its
    Python API; raycut says its own command (``raycut tune --resume``). The rest of the
    warning stays."""
    message = record.getMessage()
    if "\nResume experiment with: " in message:
        record.msg, record.args = message.split("\nResume experiment with: ")[0], ()
    return True


def _plan(opts: TuneOptions, storage: Path) -> TuneOptions:
    """Check everything cheap before Ray starts; fix the values every trial shares."""
    from jobs.config_file import resolve_config
    from jobs.train.evaluation import EVAL_PREFIX, plan_eval, score_order, toy_root_of
    from jobs.tune.space import load_space, overrides

    if not (opts.data_a and opts.data_b):
        raise RaycutError("--data-a and --data-b are required (or --resume to continue a search)")
    if opts.samples < 1 or opts.max_concurrent < 1 or opts.steps_per_trial < 2 or opts.workers < 1:
        raise RaycutError("--samples, --max-concurrent, --workers must be at least 1 and --steps-per-trial at least 2")
    if opts.search not in ("random", "optuna"):
        raise RaycutError("--search must be random or optuna")
    if opts.reduction_factor < 2:
        raise RaycutError("--reduction-factor must be at least 2")
    base = resolve_config(opts.preset, opts.config_file, list(opts.sets))
    space = load_space(opts.space)
    # Every value the space can produce must make a valid config with the base.
    for key, domain in space.items():
        values = domain.get("choice") or domain.get("grid") if isinstance(domain, dict) else [domain]
        for v in values or []:
            try:
                base.with_overrides(overrides({key: v}))
            except Exception as e:  # noqa: BLE001 - a config error, reported as one line
                raise RaycutError(f"search space {key}={v!r} does not fit the base config: {e}") from None
    eval_every = opts.eval_every or max(1, opts.steps_per_trial // 8)
    v = opts.validation
    toy = toy_root_of(v.eval_data or opts.data_a) if not v.eval_real else None
    metric = opts.metric or EVAL_PREFIX + ("colour_err" if toy is not None else "kid")
    plan_eval(eval_every, opts.data_a, eval_data=v.eval_data, eval_real=v.eval_real, n_images=v.eval_images,
              crop_size=base.data.crop_size, inception_weights=v.inception_weights,
              feature_extractor=v.feature_extractor)  # the validation data is checked now
    score_order(metric)
    name = opts.name or f"tune-{base.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (storage / name / SPEC_NAME).is_file():
        raise RaycutError(f"search {name} already exists in {storage}; pass --resume to continue it, or another --name")
    uri = tracking.tracking_uri()
    tracking.check_reachable(uri)
    parent = tracking.create_run(uri, opts.experiment, name, {
        "preset": base.preset, "samples": opts.samples, "steps_per_trial": opts.steps_per_trial, "metric": metric,
        "search": opts.search, "space": json.dumps(space, sort_keys=True)[:6000], "data_a": opts.data_a,
        "data_b": opts.data_b, "sets": " ".join(opts.sets)}, {"raycut.tune": name})
    opts = replace(opts, name=name, metric=metric, eval_every=eval_every, grace_period=opts.grace_period or eval_every,
                   parent_run_id=parent, tracking_uri=uri, space_resolved=space, **_cpu_budget(opts))
    try:
        (storage / name).mkdir(parents=True, exist_ok=True)
        write_whole(storage / name / SPEC_NAME, json.dumps(asdict(opts), indent=2, sort_keys=True) + "\n")
    except OSError as e:
        tracking.end_run(uri, parent, "FAILED")
        if is_disk_full(e):
            raise full_disk_error("the search's storage", storage, "pass another --storage-path") from e
        raise
    print(f"[tune] search {name}: {opts.samples} trials of {opts.steps_per_trial} steps, {opts.max_concurrent} at a time, "
          f"ASHA on {metric} every {eval_every} steps; MLflow parent run {parent} at {uri}", flush=True)
    return opts


def _cpu_budget(opts: TuneOptions) -> dict[str, float]:
    """Logical CPUs per trial so that max_concurrent trials fit in the local Ray at once:
    half for the trial's Ray Train workers, half for its Ray Data feed."""
    total = _ray_cpus(opts)
    per_trial = total / opts.max_concurrent - TRIAL_CPU
    return {"cpus_per_worker": round(per_trial / 2 / opts.workers, 3), "data_cpus": round(per_trial / 2, 3)}


def _ray_cpus(opts: TuneOptions) -> float:
    if os.environ.get("RAY_ADDRESS"):
        import ray

        _start_ray(opts)
        return float(ray.cluster_resources().get("CPU", 1))
    # A local Ray gets 2 logical CPUs per concurrent trial (at least the cores): the OS
    # shares the cores, Ray's scheduler needs room for each trial's actors.
    return float(max(usable_cores(), 2 * opts.max_concurrent))


def _start_ray(opts: TuneOptions) -> None:
    import ray

    from jobs.ray_runtime import start_ray

    if not ray.is_initialized():
        start_ray(_ray_cpus(opts) - 2 if not os.environ.get("RAY_ADDRESS") else 0)


def _tuner(opts: TuneOptions, trainable: Any, storage: Path):
    import ray.tune
    from ray import tune
    from jobs.train.evaluation import score_order
    from jobs.tune.space import to_tune

    mode = score_order(opts.metric)
    search_alg = None
    if opts.search == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch
        except ImportError:
            raise RaycutError("--search optuna needs optuna: pip install optuna") from None
        search_alg = OptunaSearch(seed=opts.seed)
    # max_t one step past the end: ASHA stops a trial that reaches max_t at once, which
    # would cut off the trial's own end (logging its model, marking it done).
    scheduler = RecordingASHA(str(storage / opts.name / STOPPED_NAME), str(storage / opts.name / RUNGS_NAME),
                              last_step=opts.steps_per_trial, time_attr="step", max_t=opts.steps_per_trial + 1,
                              grace_period=opts.grace_period,
                              reduction_factor=opts.reduction_factor)
    return tune.Tuner(
        trainable,
        param_space=to_tune(opts.space_resolved),
        tune_config=tune.TuneConfig(metric=opts.metric, mode=mode, num_samples=opts.samples, scheduler=scheduler,
                                    search_alg=search_alg, max_concurrent_trials=opts.max_concurrent),
        run_config=ray.tune.RunConfig(name=opts.name, storage_path=str(storage), verbose=0,
                                      failure_config=ray.tune.FailureConfig(max_failures=1),
                                      callbacks=[search_progress_callback(
                                          expected=_expected_trials(opts), steps_per_trial=opts.steps_per_trial,
                                          metric=opts.metric, mode=mode)] + _interrupt_callbacks()),
    )


def _interrupt_callbacks() -> list[Any]:
    """[] unless $RAYCUT_TUNE_INTERRUPT_AFTER_TRIALS asks for a self-interrupt."""
    after = int(os.environ.get(INTERRUPT_AFTER_ENV, "0") or 0)
    if after < 1:
        return []
    import signal

    from ray.tune import Callback

    class InterruptAfter(Callback):
        def __init__(self) -> None:
            self.completed = 0

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.completed += 1
            if self.completed == after:
                os.kill(os.getpid(), signal.SIGINT)  # Tune's own Ctrl-C handling saves and stops

    return [InterruptAfter()]


class RecordingASHA(ASHAScheduler):
    """ASHA that keeps its books on disk, so that ``--resume`` continues the same search.

    Tune does not save a scheduler's state with the experiment: a restored search
    would start with empty rungs and judge every later trial against nothing. So the
    rungs (milestone -> {trial: reward}) are written to ``rungs`` after each result
    and read back on first use; and each trial ASHA stops is written to ``record``
    (one id per line), so that a stop by ASHA is told apart from a stop by Ctrl-C."""

    def __init__(self, record: str, rungs: str, *, last_step: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.record = record
        self.rungs = rungs
        self.last_step = last_step
        self._rungs_loaded = False  # pickled as False with the Tuner: a restore reads the file

    def _load_rungs(self) -> None:
        if self._rungs_loaded:
            return
        self._rungs_loaded = True
        saved = _read_json(Path(self.rungs))
        if not saved:
            return
        for bracket, rungs in zip(self._brackets, saved):
            by_milestone = {milestone: recorded for milestone, recorded in bracket._rungs}
            for milestone, recorded in rungs:
                by_milestone.get(milestone, {}).update(recorded)

    def _save_rungs(self) -> None:
        rungs = [[[milestone, recorded] for milestone, recorded in b._rungs if recorded] for b in self._brackets]
        tmp = Path(self.rungs + ".tmp")
        tmp.write_text(json.dumps(rungs))
        tmp.replace(self.rungs)

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._load_rungs()
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        self._load_rungs()
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and result.get(self._time_attr, 0) >= self.last_step:
            # A rung at the last step (5 -> 10 of 10) may judge the trial, but it has done
            # its work: stopping it now would only cut off its end (model, done marker).
            decision = TrialScheduler.CONTINUE
        self._save_rungs()
        if decision == TrialScheduler.STOP:
            with open(self.record, "a") as f:
                f.write(trial.trial_id + "\n")
        return decision

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._load_rungs()
        super().on_trial_complete(tune_controller, trial, result)
        self._save_rungs()


def _trial_outcome(storage: Path, opts: TuneOptions, result: Any) -> str:
    """finished | stopped (by ASHA) | interrupted, from the trial's files."""
    trial = (result.metrics or {}).get("trial_id") or ""
    if (storage / opts.name / "trials" / str(trial) / "done.json").is_file():
        return "finished"
    stopped = storage / opts.name / STOPPED_NAME
    if trial and stopped.is_file() and trial in stopped.read_text().split():
        return "stopped"
    return "interrupted"


def _expected_trials(opts: TuneOptions) -> int:
    """samples x the size of every grid axis (Tune's variant generator)."""
    n = opts.samples
    for domain in opts.space_resolved.values():
        if isinstance(domain, dict) and "grid" in domain:
            n *= len(domain["grid"])
    return n


def _trial(config: dict[str, Any], spec: dict[str, Any]) -> None:
    """One trial: a `raycut train` run whose reports reach Tune through Ray Train's
    TuneReportCallback. A restarted trial (after --resume) resumes its train run."""
    from ray import tune

    from jobs.train.driver import run_train
    from jobs.train.spec import TrainOptions
    from jobs.tune.space import overrides

    opts = TuneOptions.from_dict(spec)
    trial = tune.get_context().get_trial_id()
    storage = Path(opts.storage_path).expanduser().resolve() / opts.name / "trials"
    finished = _read_json(storage / trial / "done.json")
    if finished is not None:
        # Trained to the end before an interrupt reached Tune: report its result again
        # instead of training it twice.
        best = _read_json(storage / trial / "best.json") or {}
        tune.report({"step": finished["steps"], **({best["metric"]: best["value"]} if best else {})})
        return
    started = (storage / trial / "run.json").is_file()
    train = TrainOptions(
        preset=opts.preset, data_a=opts.data_a, data_b=opts.data_b, config_file=opts.config_file, sets=tuple(opts.sets),
        overrides=overrides(config),
        workers=opts.workers, cpus_per_worker=opts.cpus_per_worker, data_cpus=opts.data_cpus,
        steps=opts.steps_per_trial, name=trial, storage_path=str(storage),
        schedule=Schedule(checkpoint_every=opts.eval_every, keep_checkpoints=1, log_every=max(1, opts.eval_every),
                          sample_every=opts.steps_per_trial, max_failures=1),
        experiment=opts.experiment, parent_run_id=opts.parent_run_id, eval_every=opts.eval_every,
        validation=opts.validation, resume=started, step_lines=False, console_label=f"trial {trial}",
    )
    os.environ["MLFLOW_TRACKING_URI"] = opts.tracking_uri
    run_train(train, callbacks=[_report_to_tune()])


def _report_to_tune():
    """Ray Train's TuneReportCallback, quiet about the one failure that is expected: when
    ASHA stops a trial, its Tune actor (and the queue the callback writes to) is gone
    while the Ray Train controller still reports; that is the stop, not an error."""
    import ray
    from ray.tune.integration.ray_train import TuneReportCallback

    class QuietTuneReport(TuneReportCallback):
        def after_report(self, *args: Any, **kwargs: Any) -> None:
            try:
                super().after_report(*args, **kwargs)
            except ray.exceptions.RayActorError:
                pass

    return QuietTuneReport()


def _finish(opts: TuneOptions, results: Any, storage: Path) -> TuneSummary:
    import pandas as pd

    from jobs.train.evaluation import score_order

    mode = score_order(opts.metric)
    rows = []
    curves: dict[str, list[tuple[float, float]]] = {}  # trial -> its scores by step, for the picture
    for r in results:
        m = r.metrics or {}
        trial = m.get("trial_id") or (r.path and Path(r.path).name)
        folder = storage / opts.name / "trials" / str(trial)
        spec, done, best = (_read_json(folder / n) for n in ("run.json", "done.json", "best.json"))
        history = r.metrics_dataframe
        scored_steps = (history[["step", opts.metric]].dropna() if history is not None and opts.metric in history
                        and "step" in history else None)
        scores = scored_steps[opts.metric].tolist() if scored_steps is not None else []
        curves[str(trial)] = list(zip(scored_steps["step"], scores)) if scored_steps is not None else []
        last_step = int(m.get("step", 0))
        outcome = "error" if r.error else _trial_outcome(storage, opts, r)
        rows.append({
            "trial": trial, **{f"config/{k}": v for k, v in (r.config or {}).items()},
            "best": (min if mode == "min" else max)(scores) if scores else None, "last": scores[-1] if scores else None,
            "steps": last_step, "stopped_early": outcome == "stopped", "status": outcome,
            "mlflow_run_id": (spec or {}).get("mlflow_run_id", ""), "best_model_uri": (best or {}).get("model_uri", ""),
        })
        if rows[-1]["mlflow_run_id"] and done is None:
            # Stopped by ASHA (or failed): its child run ends here rather than staying RUNNING.
            tracking.end_run(opts.tracking_uri, rows[-1]["mlflow_run_id"], "FAILED" if r.error else "KILLED")
    scored = [r for r in rows if r["best"] is not None]
    if not scored:
        raise RaycutError(f"no trial of {opts.name} reported {opts.metric}; see the trial errors above")
    scored.sort(key=lambda r: r["best"], reverse=(mode == "max"))
    best = scored[0]
    out = storage / opts.name
    frame = pd.DataFrame(scored + [r for r in rows if r["best"] is None])
    frame.to_csv(out / "results.csv", index=False)
    frame.to_parquet(out / "results.parquet", index=False)
    config_path = _write_best_config(opts, best, out / "best_config.yaml")
    save_trial_curves(curves, out / CURVES_NAME, metric=opts.metric, best=str(best["trial"]),
                      stopped=[str(r["trial"]) for r in rows if r["stopped_early"]])
    # The champion is the best trial that ran to its end (a stopped trial logged no model).
    with_model = next((r for r in scored if r["best_model_uri"]), None)
    version = _promote(opts, with_model) if opts.register and with_model else None
    stopped = sum(r["stopped_early"] for r in rows)
    summary = TuneSummary(rows=scored, metric=opts.metric, mode=mode, best=best, best_config_path=config_path,
                          results_path=out / "results.csv", parent_run_id=opts.parent_run_id, model_version=version,
                          stopped_early=stopped)
    _log_parent(opts, summary, frame, out)
    (out / FINISHED_NAME).write_text(json.dumps({"model_version": version, "stopped_early": stopped}) + "\n")
    print(format_results(summary), flush=True)
    return summary


def _finished_summary(opts: TuneOptions, storage: Path) -> TuneSummary | None:
    """The summary of a search that has finished, from its files; None if it has not."""
    import pandas as pd

    from jobs.train.evaluation import score_order

    out = storage / opts.name
    ended = _read_json(out / FINISHED_NAME)
    if ended is None:
        return None
    frame = pd.read_parquet(out / "results.parquet")
    rows = [r for r in frame.to_dict("records") if pd.notna(r["best"])]  # ranked best first when written
    return TuneSummary(rows=rows, metric=opts.metric, mode=score_order(opts.metric), best=rows[0],
                       best_config_path=out / "best_config.yaml", results_path=out / "results.csv",
                       parent_run_id=opts.parent_run_id, model_version=ended["model_version"],
                       stopped_early=int(ended["stopped_early"]))


def _write_best_config(opts: TuneOptions, best: dict[str, Any], path: Path) -> Path:
    """The best trial's whole configuration (every section, perf included) as the YAML
    `raycut train --config` takes, with where each non-preset value came from."""
    from jobs.config_file import resolve_with_sources, show_config
    from jobs.tune.space import overrides

    trial_values = {k.removeprefix("config/"): v for k, v in best.items() if k.startswith("config/")}
    resolved = resolve_with_sources(opts.preset, opts.config_file, list(opts.sets), overrides(trial_values),
                                    overrides_from=f"tune trial {best['trial']}")
    header = (f"# Best trial {best['trial']} of raycut tune search {opts.name}: {opts.metric} {best['best']:.4f}\n"
              f"# Use it: raycut train --config {path.name} --data-a ... --data-b ...\n")
    path.write_text(header + show_config(resolved))
    return path


def _promote(opts: TuneOptions, best: dict[str, Any]) -> str | None:
    """Register the trial's best model and point the alias `champion` at it."""
    version = tracking.register(opts.tracking_uri, best["best_model_uri"], opts.register,
                                {"raycut.tune": opts.name, "raycut.trial": str(best["trial"])})
    tracking.set_alias(opts.tracking_uri, opts.register, CHAMPION, version)
    return version


def _log_parent(opts: TuneOptions, summary: TuneSummary, frame: Any, out: Path) -> None:
    tracking.log_metrics_now(opts.tracking_uri, opts.parent_run_id, {
        f"best_{opts.metric}": float(summary.best["best"]), "trials": float(len(frame)),
        "stopped_early": float(summary.stopped_early)})
    for name in ("results.csv", "best_config.yaml", CURVES_NAME):
        tracking.log_artifact(opts.tracking_uri, opts.parent_run_id, out / name)
    tracking.end_run(opts.tracking_uri, opts.parent_run_id, "FINISHED")


def format_results(summary: TuneSummary) -> str:
    keys = sorted({k for r in summary.rows for k in r if k.startswith("config/")})
    head = ["trial", summary.metric + (" v" if summary.mode == "min" else " ^"), "steps", "status"]
    head += [k.removeprefix("config/") for k in keys]
    table = [head]
    for r in summary.rows:
        table.append([str(r["trial"]), f"{r['best']:.4f}", str(r["steps"]), r["status"]]
                     + [_short(r.get(k)) for k in keys])
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [
        f"[tune] best: trial {summary.best['trial']} ({summary.metric} {summary.best['best']:.4f}); "
        f"{summary.stopped_early} trial(s) stopped early by ASHA",
        f"[tune] best config: {summary.best_config_path} (raycut train --config {summary.best_config_path})",
        f"[tune] results: {summary.results_path} (+ .parquet), the trials' curves: "
        f"{summary.results_path.with_name(CURVES_NAME)}; MLflow parent run {summary.parent_run_id}",
    ]
    if summary.model_version:
        lines.append(f"[tune] registered version {summary.model_version} with alias {CHAMPION}")
    return "\n".join(lines)


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _load(storage: Path, name: str | None) -> TuneOptions:
    if not name:
        specs = sorted(storage.glob(f"*/{SPEC_NAME}"), key=lambda p: p.stat().st_mtime)
        if not specs:
            raise RaycutError(f"no search to resume in {storage}; start one with raycut tune --data-a ... --data-b ...")
        name = specs[-1].parent.name
    path = storage / name / SPEC_NAME
    if not path.is_file():
        raise RaycutError(f"search {name} has no {SPEC_NAME} in {storage}; pass the --name and --storage-path it started with")
    return TuneOptions.from_dict(json.loads(path.read_text()))
