"""`raycut train` on a real local Ray with a real SQLite MLflow: a crashed worker is
restarted from its checkpoint, a failed run resumes, bad setups fail early."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from cut_core import CUTConfig
from cut_core.ema_schedule import describe_ema
from cut_core.errors import RaycutError
from cut_core.lr_schedule import lr_factor, schedule_epoch
from jobs.train.driver import run_train
from jobs.train.spec import SPEC_NAME, Schedule, TrainOptions
from pipelines.toy_data import ToySpec, write_toy_dataset
from tests.conftest import TINY_SETS, cpus_held, kill_train_workers_when, patience, small_disk

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    root = write_toy_dataset(tmp_path_factory.mktemp("toy"), ToySpec(size=32, n_train=16, n_test=2))
    (root / "trainB" / "zz-corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n and then nothing")  # skipped, reported
    return root


def _options(toy: Path, storage: Path, **kw) -> TrainOptions:
    schedule = {"log_every": 5, "checkpoint_every": 5, "sample_every": 10}
    schedule.update({k: kw.pop(k) for k in list(kw) if k in Schedule.__dataclass_fields__})
    base = dict(preset="fastcut", data_a=f"cyclegan:{toy}:trainA", data_b=f"cyclegan:{toy}:trainB", sets=TINY_SETS,
                workers=2, steps=20, storage_path=str(storage), name="run", schedule=Schedule(**schedule))
    base.update(kw)
    return TrainOptions(**base)


def _checkpoint_at(run_dir: Path, step: int):
    """True once Ray Train has registered a checkpoint at ``step`` or later (all ranks
    reported): its snapshot names the newest. (Not a count of the listed checkpoints:
    retention by score drops some from the list.)"""
    def ready() -> bool:
        try:
            snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
        except (OSError, ValueError):  # not written yet, or being written
            return False
        latest = snapshot.get("latest_checkpoint_result") or {}
        return (latest.get("metrics") or {}).get("step", 0) >= step
    return ready


def _train_run_gone(within_s: float) -> str | None:
    """None once no actor of a Ray Train run is alive on the shared local Ray and all its
    CPUs are free; else, after ``within_s``, what is still there."""
    import time

    from ray._private.state import actors

    deadline = time.monotonic() + within_s
    held = cpus_held(within_s)  # the actors that held them go with them
    while True:
        # The GCS's actor table of this process's Ray (the shared local Ray runs no
        # dashboard, so not the State API; Ray is pinned: requirements.lock).
        alive = sorted(a["ActorClassName"] for a in actors().values() if a["State"] == "ALIVE")
        left = [n for n in alive if n in ("TrainController", "SplitCoordinator", "DatasetManager") or n.startswith("MapWorker")]
        if not left and not held:
            return None
        if time.monotonic() > deadline:
            return f"after {within_s:g} s: actors {left} alive, {held:g} CPUs held"
        time.sleep(0.5)


@pytest.mark.cost(140)
def test_crashed_worker_restarts_then_the_failed_run_resumes(local_ray, toy, tmp_path, monkeypatch, capsys) -> None:
    """One evaluated run's whole failure story: a worker killed after the first
    checkpoint is restarted from it (max_failures 1); a second kill, after the next
    checkpoint, ends the run with a pointer to --resume; the resume finishes the same
    MLflow run. The run is evaluated every checkpoint, with an EMA of G and D's
    augmentation on, and the rate cut on the val metric: the marks and the cut survive the
    restart and the resume, and the best checkpoint (the moving average) is the one kept
    and registered."""
    monkeypatch.chdir(tmp_path)  # the embedded default: ./mlflow.db and ./mlruns
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    storage, run_dir = tmp_path / "runs", tmp_path / "runs" / "run"
    sets = (*TINY_SETS, "ema_decay=0.9", "d_augment=color,translation,cutout", "lr_plateau_patience=1")
    killer = kill_train_workers_when(_checkpoint_at(run_dir, 5), _checkpoint_at(run_dir, 10))
    # The line says why, what the run keeps and how to go on (the kill may come before
    # Ray Train registers the checkpoint that set it off).
    with pytest.raises(RaycutError, match=r"^training failed after 1 restart \(.*\); fix the cause, then: run run keeps "
                                          r"its checkpoint of step (5|10) of 20; continue with `raycut train --resume "
                                          r"--name run --storage-path "):
        run_train(_options(toy, storage, max_failures=1, eval_every=5, keep_checkpoints=1, sets=sets))
    killer.join(timeout=1)
    assert len(killer.killed) == 2, f"the run ended after {len(killer.killed)} kill(s)"
    # The failed run leaves nothing on the caller's Ray: its controller and the Ray Data
    # actors that it owned are gone and their CPUs free (until raycut put back the SIGINT
    # handler that Ray Train leaves behind, they stayed for as long as the process ran).
    assert _train_run_gone(within_s=patience(20)) is None
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (first,) = client.search_runs([client.get_experiment_by_name("raycut").experiment_id])
    assert first.info.status == "FAILED"
    restarts = [h.value for h in client.get_metric_history(first.info.run_id, "resumed_from_step")]
    assert restarts and restarts[-1] >= 5  # the restart after the first kill resumed from a checkpoint

    with pytest.raises(RaycutError, match="already exists"):
        run_train(_options(toy, storage))  # the same name again without --resume
    result = run_train(TrainOptions(resume=True, storage_path=str(storage), register="toy-resumed"))
    m = result.metrics
    assert m["step"] == 20 and m["resumed_from_step"] >= 10 and m["replica_divergence"] == 0.0
    assert result.mlflow_run_id == first.info.run_id
    run = client.get_run(first.info.run_id)
    assert run.info.status == "FINISHED"
    # The corrupt file of domain B was skipped, and said so once however many passes met
    # it: on the console and in the run (a tag, and the list as an artifact).
    corrupt = str(toy / "trainB" / "zz-corrupt.png")
    console = capsys.readouterr().out
    report = [line for line in console.splitlines() if line.startswith("[ingest A + B]")]
    assert report and report[-1].startswith("[ingest A + B] decoded 32 images, skipped 1 bad files"), report
    assert run.data.tags["raycut.ingest_skipped_files"] == "1"
    listed = client.download_artifacts(run.info.run_id, "ingest_report.json", str(tmp_path))
    assert [path for path, _ in json.loads(Path(listed).read_text())["skipped"]] == [corrupt]
    assert run.data.params["crop_size"] == "32" and run.data.params["global_batch"] == "4"
    # n_layers_D auto: the depth that D was built with at these crops, logged.
    assert run.data.params["n_layers_D"] == "auto" and run.data.params["resolved_n_layers_D"] == "1"
    steps = {h.step for h in client.get_metric_history(run.info.run_id, "NCE")}
    assert {5, 20} <= steps
    # The LR: FastCUT's 150 + 50 epochs fitted to the planned 20 steps (constant through
    # step 15, then the decay), the same across the restart and the resume.
    optim = CUTConfig.from_dict(json.loads((run_dir / SPEC_NAME).read_text())["config"]).optim
    assert run.data.params["lr_constant_steps"] == "15" and "fitted" in run.data.params["lr_schedule"]
    assert run.data.params["ema_schedule"] == describe_ema(0.9, 20) and "ramp" in run.data.params["ema_schedule"]
    lrs = {h.step: h.value for h in client.get_metric_history(run.info.run_id, "lr")}
    assert sorted(lrs) == [5, 10, 15, 20]
    # ... times the plateau's scale (lr_plateau_patience=1, decided on rank 0, shared by
    # both): cut to half at step 10 exactly when that evaluation did not beat step 5's
    # (step 15's is in the decay, which cuts nothing); the replicas stayed one model.
    history = {h.step: h.value for h in client.get_metric_history(run.info.run_id, "eval_colour_err")}
    scale = 0.5 if history[10] >= history[5] else 1.0
    assert {h.step: h.value for h in client.get_metric_history(run.info.run_id, "lr_scale")} == {
        5: 1.0, 10: scale, 15: scale, 20: scale}
    assert [lrs[s] for s in (5, 10, 15)] == [pytest.approx(optim.lr)] * 2 + [pytest.approx(optim.lr * scale)]
    assert lrs[20] == pytest.approx(optim.lr * scale * lr_factor(optim, schedule_epoch(optim, 19, 20)))
    assert lrs[20] < optim.lr * scale
    artifacts = {f.path for f in client.list_artifacts(run.info.run_id, "samples")}
    assert {"samples/step_0000010.png", "samples/step_0000020.png"} <= artifacts
    # ... and in MLflow's image view, by key and step
    images = {f.path.split("/")[-1].split("+timestamp")[0] for f in client.list_artifacts(run.info.run_id, "images")}
    assert {"samples+step+10", "samples+step+20"} <= images
    assert (tmp_path / "mlruns").is_dir()  # artifacts beside the database

    # Evaluation: a mark at every checkpoint step, across the restart and the resume
    # (a step evaluated again after a restart logs the same step twice).
    assert sorted(history) == [5, 10, 15, 20]
    best_step = min(history, key=history.get)
    marked = json.loads((run_dir / "best.json").read_text())
    assert marked["step"] == best_step == result.best["step"]
    assert marked["value"] == pytest.approx(history[best_step])
    assert run.data.metrics["best_eval_colour_err"] == pytest.approx(history[best_step])
    # The best checkpoint holds the model directory: the moving average, not the raw G.
    saved = load_file(str(Path(marked["checkpoint"], "model", "generator.safetensors")))
    nets = load_file(str(Path(marked["checkpoint"], "networks.safetensors")))
    for k, v in saved.items():
        assert torch.equal(v, nets[f"G_ema.average.{k}"]), k
    assert any(not torch.equal(v, nets[f"G.{k}"]) for k, v in saved.items())
    assert "EMA" in json.loads(Path(marked["checkpoint"], "model", "config.json").read_text())["weights"]
    # D's balance and the augmentation probability are tracked.
    assert {"D_rt", "D_aug_p", "D_won_steps"} <= set(run.data.metrics)
    # The registered version is the best one; it is logged apart from the final model
    # unless it is the final one.
    version = client.get_model_version_by_alias("toy-resumed", "latest")
    assert str(version.version) == result.model_version and version.tags["raycut.steps"] == str(best_step)
    assert (marked["model_uri"] == result.model_uri) == (best_step == 20)
    assert version.source == marked["model_uri"] or version.model_id == marked["model_uri"].removeprefix("models:/")
    # ... and the console's last words say which model that was.
    registered_as = f"models:/toy-resumed@latest (version {result.model_version})"
    said = f"registered: the best checkpoint's (step {best_step}) as {registered_as}" if best_step != 20 else \
        f"model: {result.model_uri}, registered as {registered_as}"
    assert f"[train] model: {result.model_uri}" in console and said in console, console[-2000:]

    # Retention: the best checkpoint by score (keep_checkpoints 1) and the newest, each a
    # complete state. A crash between a checkpoint's upload and its registration leaves
    # a folder Ray Train never lists: the resume removes such folders, so only
    # registered ones remain.
    kept = sorted(json.loads(f.read_text())["step"] for f in run_dir.glob("checkpoint_*/train_state.json"))
    assert kept == sorted({best_step, 20}), kept
    snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    registered = {r["checkpoint_dir_name"] for r in snapshot["checkpoint_results"]}
    assert {p.name for p in run_dir.glob("checkpoint_*") if p.is_dir()} == registered
    with pytest.raises(RaycutError, match="already finished"):
        run_train(TrainOptions(resume=True, storage_path=str(storage)))


@pytest.mark.cost(25)
def test_ctrl_c_checkpoints_where_the_run_is_and_says_how_to_resume(local_ray, toy, tmp_path, monkeypatch,
                                                                     capsys) -> None:
    """Ctrl-C during `raycut train` (SIGINT to the driver): the workers save a checkpoint
    at their next report, not only the last periodic one, and stop; the MLflow run ends
    as KILLED, the run's actors leave the caller's Ray, and the interrupt names the
    checkpoint kept and the --resume command that goes on from it."""
    import signal
    import threading
    import time

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    storage, run_dir = tmp_path / "runs", tmp_path / "runs" / "run"
    checkpointed, sent = _checkpoint_at(run_dir, 20), threading.Event()

    def interrupt() -> None:  # the run is far from its end: the signal lands inside Ray Train's fit
        deadline = time.monotonic() + patience(120)
        while time.monotonic() < deadline and not checkpointed():
            time.sleep(0.1)
        if checkpointed():
            sent.set()
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt) as stopped:
        run_train(_options(toy, storage, steps=100000, workers=1, checkpoint_every=20, log_every=3))
    assert sent.is_set()
    assert "[train] Ctrl-C: the workers save a checkpoint at their next report and stop" in capsys.readouterr().out
    snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    step = snapshot["latest_checkpoint_result"]["metrics"]["step"]
    # At a report (every 3 steps) after the signal, not the periodic checkpoint (every
    # 20) that Ray Train's own abort would have left.
    assert step > 20 and step % 3 == 0, step
    assert str(stopped.value) == (f"run run keeps its checkpoint of step {step} of 100000; continue with "
                                  f"`raycut train --resume --name run --storage-path {storage}`")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("raycut").experiment_id])
    assert run.info.status == "KILLED"
    assert _train_run_gone(within_s=patience(20)) is None


def test_a_local_rays_workers_run_at_the_normal_priority(local_ray) -> None:
    """Ray starts its workers at nice 15 unless told otherwise; beside anything at the
    normal priority its trainers and G actors then got a few % of a core (a 1.5 s
    translation took 87 s). A local Ray's workers start at 0 (jobs.ray_runtime.LOCAL_RAY_ENV,
    which the suite's Ray gets as `raycut` gives it to its own); decode actors keep
    DECODE_NICE below the trainers."""
    import os

    import ray

    from jobs.train.driver import DECODE_NICE

    assert ray.get(ray.remote(num_cpus=0)(lambda: os.nice(0)).remote()) == 0

    @ray.remote(num_cpus=0)
    class Decoder:
        def __init__(self) -> None:
            os.nice(DECODE_NICE)  # as pipelines.ingest.DecodeAugment does

        def niceness(self) -> int:
            return os.nice(0)

    decoder = Decoder.remote()
    assert ray.get(decoder.niceness.remote()) == DECODE_NICE
    ray.kill(decoder)


def test_unreachable_tracking_server_fails_before_training(toy, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(RaycutError, match="unreachable"):
        run_train(_options(toy, tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()


def test_a_domain_of_unreadable_files_fails_before_training(toy, tmp_path) -> None:
    """The wrong folder (nothing in it decodes) is one line naming a file and why, before
    a run is recorded, not a worker error after Ray Train's restarts."""
    junk = tmp_path / "junk"
    junk.mkdir()
    for i in range(3):
        (junk / f"{i}.png").write_text("a label list, not a picture")
    with pytest.raises(RaycutError, match=r"no readable image among the first 3 files of .*0\.png: not an image"):
        run_train(_options(toy, tmp_path / "runs", data_b=str(junk)))
    assert not (tmp_path / "runs").exists()


def test_a_failed_run_says_the_workers_cause_in_one_line() -> None:
    """Ray Train's error starts "Training failed due to worker errors:"; the line raycut
    prints is the cause: raycut's own message from any rank, else the exception's line."""
    from ray.train import WorkerGroupError

    from jobs.train.driver import failure_cause

    ours = RaycutError("domain B gave no full batch of 2")
    assert failure_cause(WorkerGroupError("rank 1: ...", {0: RuntimeError("collective aborted"), 1: ours})) == str(ours)
    wrapped = RuntimeError("in the worker")
    wrapped.__cause__ = ours
    assert failure_cause(WorkerGroupError("...", {0: wrapped})) == str(ours)
    trace = RuntimeError("Traceback (most recent call last):\n  File \"w.py\", line 1\nValueError: bad shape\n")
    assert failure_cause(WorkerGroupError("...", {0: trace})) == "ValueError: bad shape"
    assert failure_cause(RuntimeError("no worker said\nmore")) == "no worker said"


def test_resume_removes_checkpoint_folders_ray_train_never_registered(tmp_path, capsys) -> None:
    from jobs.train.driver import _drop_unregistered_checkpoints

    run = tmp_path / "run"
    for name in ("checkpoint_a", "checkpoint_orphan", "checkpoint_best"):
        (run / name).mkdir(parents=True)
        (run / name / "train_state.json").write_text("{}")
    (run / "checkpoint_manager_snapshot.json").write_text(
        json.dumps({"checkpoint_results": [{"checkpoint_dir_name": "checkpoint_a"}]}))
    (run / "best.json").write_text(json.dumps({"checkpoint": str(run / "checkpoint_best")}))
    _drop_unregistered_checkpoints(str(tmp_path), "run")
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == ["checkpoint_a", "checkpoint_best"]
    assert "removed 1 checkpoint folder(s)" in capsys.readouterr().out
    # A run that failed at its first checkpoint (a full disk: Ray Train registered none,
    # so it has no snapshot) leaves the truncated folder and one per restart: all go.
    failed = tmp_path / "failed"
    for name in ("checkpoint_1", "checkpoint_2"):
        (failed / name).mkdir(parents=True)
        (failed / name / "networks.safetensors").write_bytes(b"")
    (failed / "run.json").write_text("{}")
    _drop_unregistered_checkpoints(str(tmp_path), "failed")
    assert [p.name for p in failed.iterdir()] == ["run.json"]
    assert "removed 2 checkpoint folder(s)" in capsys.readouterr().out


def test_a_full_checkpoint_storage_fails_before_training_in_one_line(toy, tmp_path, monkeypatch) -> None:
    """A real full disk as the storage (a filled tmpfs): the run's spec cannot be
    written, and the run stops before Ray starts, in one line that names the storage and
    its room, leaving no empty run.json to block the name and no MLflow run marked
    running. (A disk that fills at a checkpoint, inside Ray Train's upload, is the
    next test's line.)"""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    disk = tmp_path / "small"
    with small_disk(disk, "8k"):
        (disk / "fill").write_bytes(bytes(8192)[: 8192 - 1])
        with pytest.raises(RaycutError) as failed:
            run_train(_options(toy, disk / "runs", workers=1, steps=5))
        assert str(failed.value) == (f"the checkpoint storage is full: {disk / 'runs'} (0 B free of 8.0 KB); free space "
                                     "on it or pass another --storage-path")
        assert not list((disk / "runs").rglob("run.json*")) and not list(disk.rglob("*.raycut-tmp"))
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("raycut").experiment_id])
    assert run.info.status == "FAILED"


def test_a_run_that_fills_its_disk_says_where_it_writes_and_how_full_each_place_is(tmp_path) -> None:
    """pyarrow's copy of a checkpoint to a full disk fails with errno 28 inside Ray
    Train's upload; the line raycut prints names the storage and the temp folder that
    each checkpoint passes through, with the room left on each."""
    import tempfile

    from ray.train import WorkerGroupError

    from jobs.disk import human_bytes, is_disk_full, room
    from jobs.train.driver import _disk_full_hint, failure_cause

    trace = RuntimeError("Traceback (most recent call last):\n  File \"storage.py\", line 113\nOSError: [Errno 28] Error "
                         "writing bytes to file. Detail: [errno 28] No space left on device")
    cause = failure_cause(WorkerGroupError("...", {0: trace}))
    assert is_disk_full(cause) and is_disk_full(OSError(28, "No space left on device"))
    assert not is_disk_full("ValueError: bad shape") and not is_disk_full(OSError(2, "No such file"))
    hint = _disk_full_hint(str(tmp_path / "runs"))  # not made yet: the disk it will be on
    free, total = room(tmp_path)
    assert hint.startswith(f"a disk is full: checkpoints go to {tmp_path / 'runs'} (") and f"free of {human_bytes(total)})" in hint
    assert f"temp folder, here {tempfile.gettempdir()} (" in hint
    assert "checkpoints go to" not in _disk_full_hint("s3://bucket/runs")
    assert human_bytes(3 * 2 ** 20) == "3.0 MB" and human_bytes(12.5 * 2 ** 30) == "12.5 GB" and human_bytes(10) == "10 B"
