"""`raycut tune` end to end on a real local Ray and a real SQLite MLflow: ASHA stops
weak trials, the best config trains, an interrupted search resumes without redoing
its finished trials. Each search runs as the CLI in its own process (as a user runs
it), with tiny models on tiny toy data."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from jobs.config_file import resolve_config
from jobs.tune.driver import INTERRUPT_AFTER_ENV
from jobs.tune.space import DEFAULT_SPACE, load_space, overrides
from pipelines.toy_data import ToySpec, write_toy_dataset
from tests.conftest import TINY_SETS, patience, small_disk

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), ToySpec(size=32, n_train=16, n_test=4))


def _tune_cmd(toy: Path, *extra: str) -> list[str]:
    sets = [a for s in TINY_SETS for a in ("--set", s)]
    return [sys.executable, "-m", "jobs.cli", "tune", "--data-a", f"cyclegan:{toy}:trainA", "--data-b",
            f"cyclegan:{toy}:trainB", "--preset", "fastcut", *sets, "--steps-per-trial", "10", "--eval-every", "5",
            "--name", "search", *extra]


def _env(tmp_path: Path) -> dict[str, str]:
    root = Path(__file__).resolve().parents[1]
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "PYTHONPATH": str(root)}


@pytest.mark.cost(120)
def test_search_stops_weak_trials_resumes_after_ctrl_c_and_its_best_config_trains(toy, tmp_path):
    """One search, the whole life cycle: the driver is interrupted (as by Ctrl-C) right
    after its first trial completes; --resume finishes the search without training
    that trial again; ASHA, with its books kept across the interrupt, stops the weak
    trial; the champion is registered; the best config file resolves to the winner."""
    space = tmp_path / "space.yaml"
    # A grid over the learning rate, run one trial at a time: a good one first, then
    # one 1000x too high. Measured at step 5: colour error ~40 with lr 5e-4, ~42
    # untrained, ~130-147 with lr 0.5. ASHA's rung at step 5 holds the good trial's
    # score when the bad one reaches it (after the resume), so ASHA stops it there.
    space.write_text("lr: {grid: [0.0005, 0.5]}\nnce_layers: {choice: ['0,4,8,12,16', '4,8,12,16']}\n"
                     "lambda_NCE: {loguniform: [1, 4]}\nnegatives: {choice: [image, bank]}\n"
                     "num_patches: {choice: [32, 64]}\nnce_T: null\nnce_idt: null\nflip_equivariance: null\n")
    cmd = _tune_cmd(toy, "--samples", "1", "--max-concurrent", "1", "--space", str(space), "--register", "toy-tuned")
    r = subprocess.run(cmd, cwd=tmp_path, env={**_env(tmp_path), INTERRUPT_AFTER_ENV: "1"}, capture_output=True,
                       text=True, timeout=patience(600))
    trials = tmp_path / "raycut-tune" / "search" / "trials"
    done = list(trials.glob("*/done.json"))
    assert r.returncode == 130 and len(done) == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert ("raycut: interrupted: search search has 1 trial(s) unfinished; continue it with `raycut tune --resume "
            "--name search --storage-path raycut-tune`") in r.stderr, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Tuner.restore(" not in r.stdout + r.stderr  # Ray Tune's Python advice, not a command
    first, stamp = done[0].parent.name, done[0].stat().st_mtime

    r = subprocess.run([sys.executable, "-m", "jobs.cli", "tune", "--resume", "--name", "search"], cwd=tmp_path,
                       env=_env(tmp_path), capture_output=True, text=True, timeout=patience(600))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    out = tmp_path / "raycut-tune" / "search"
    results = pd.read_parquet(out / "results.parquet")
    assert len(results) == 2 and (out / "results.csv").is_file()
    assert set(results["status"]) <= {"finished", "stopped"}, results[["trial", "status"]]
    stopped = results[results["stopped_early"]]
    assert len(stopped) == 1 and (stopped["steps"] < 10).all(), results[["trial", "best", "steps", "status"]]
    assert (stopped["config/lr"] == 0.5).all() and results.iloc[0]["config/lr"] == 0.0005
    assert "eval_colour_err v" in r.stdout and "stopped early by ASHA" in r.stdout
    # ASHA's stop reads as the table says, without Ray's internal notices (jobs.console).
    from jobs.console import is_noise

    assert not [line for line in (r.stdout + r.stderr).splitlines() if is_noise(line)]
    assert done[0].stat().st_mtime == stamp  # the finished trial was not trained again
    # One progress line for the search, none per trial step: the resumed search starts
    # with its finished trial's steps done, ASHA's stop takes the rest of the stopped
    # trial's steps out of the total, and the last line names the table's best.
    searched = [line for line in r.stdout.splitlines() if re.match(r"\[tune\] \d+/\d+ ", line)]
    assert searched and all("ETA" in line for line in searched), r.stdout[-3000:]
    assert int(re.match(r"\[tune\] (\d+)/", searched[0]).group(1)) >= 10, searched  # the finished trial's 10
    steps = int(stopped["steps"].iloc[0])
    assert searched[-1].startswith(f"[tune] {10 + steps}/{10 + steps} 100% "), searched
    assert "trials: 0 running, 0 waiting, 1 finished, 1 stopped" in searched[-1]
    assert f"best eval_colour_err {results.iloc[0]['best']:.4g} ({results.iloc[0]['trial']})" in searched[-1]
    assert not re.search(r"\[train\] \d+/10 ", r.stdout), r.stdout[-3000:]
    assert "Configuration for experiment" not in r.stdout and "tensorboard --logdir" not in r.stdout  # Tune's banner
    # A trial's own lines say which trial they come from (trials may run side by side).
    trial_ids = set(results["trial"])
    named = set(re.findall(r"\[trial (\w+)\] (?:starting|resuming at step \d+): ", r.stdout))
    assert named and named <= trial_ids and first not in named, r.stdout[-3000:]  # the finished trial does not train

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("raycut-tune").experiment_id])
    parent = [x for x in runs if x.data.tags.get("raycut.tune") == "search"]
    children = [x for x in runs if x.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert len(parent) == 1 and len(children) == 2  # one run per trial, resumed trials included
    # The trials' curves: a picture beside the results and in the parent run.
    from PIL import Image

    with Image.open(out / "search.png") as im:
        im.verify()
    assert {"results.csv", "best_config.yaml", "search.png"} <= {a.path for a in client.list_artifacts(parent[0].info.run_id)}
    assert f"the trials' curves: {out / 'search.png'}" in r.stdout
    assert sum(x.data.tags.get("raycut.run") == first for x in children) == 1
    assert all(x.info.status in ("FINISHED", "KILLED") for x in children)
    assert any(len(client.get_metric_history(x.info.run_id, "eval_colour_err")) >= 2 for x in children)
    best = results.iloc[0]
    assert client.get_model_version_by_alias("toy-tuned", "champion").tags["raycut.trial"] == best["trial"]
    # Resuming the finished search again trains nothing and registers nothing twice.
    again = subprocess.run([sys.executable, "-m", "jobs.cli", "tune", "--resume", "--name", "search"], cwd=tmp_path,
                           env=_env(tmp_path), capture_output=True, text=True, timeout=patience(120))
    assert again.returncode == 0 and "has finished: nothing to resume" in again.stdout, again.stdout + again.stderr
    assert f"[tune] best: trial {best['trial']} " in again.stdout
    assert len(client.search_model_versions("name='toy-tuned'")) == 1

    # The best config is a YAML that raycut train takes as it is (train resolves its
    # --config with this function; a Ray Train run of a config is tested in test_train_ray).
    cfg = resolve_config("fastcut", out / "best_config.yaml", [])
    assert cfg.loss.nce_layers == tuple(int(v) for v in str(best["config/nce_layers"]).split(","))
    assert cfg.loss.lambda_NCE == pytest.approx(best["config/lambda_NCE"])
    assert cfg.optim.lr == pytest.approx(best["config/lr"]) and cfg.model.ngf == 8  # the base --set values too


def test_a_full_storage_stops_the_search_in_one_line_before_any_trial(toy, tmp_path):
    """A real full disk as the search's storage (a filled 8 KB tmpfs): one line that
    names it and its room, no empty search spec left to block the name, and the MLflow
    parent run marked FAILED, not left running."""
    disk = tmp_path / "small"
    with small_disk(disk, "8k"):
        (disk / "fill").write_bytes(bytes(8191))
        r = subprocess.run(_tune_cmd(toy, "--samples", "1", "--storage-path", str(disk / "tune")), cwd=tmp_path,
                           env=_env(tmp_path), capture_output=True, text=True, timeout=patience(120))
        assert r.returncode == 2, r.stderr[-2000:]
        assert r.stderr.strip() == (f"raycut: error: the search's storage is full: {disk / 'tune'} (0 B free of "
                                    "8.0 KB); free space on it or pass another --storage-path")
        assert not list(disk.rglob("tune.json*")) and not list(disk.rglob("*.raycut-tmp"))
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (parent,) = client.search_runs([client.get_experiment_by_name("raycut-tune").experiment_id])
    assert parent.info.status == "FAILED"


def test_space_yaml_overrides_and_checks(tmp_path):
    space = tmp_path / "s.yaml"
    space.write_text("num_patches: {choice: [64]}\nflip_equivariance: null\nnce_T: 0.1\n")
    got = load_space(space)
    assert got["num_patches"] == {"choice": [64]} and "flip_equivariance" not in got and got["nce_T"] == 0.1
    assert got["nce_layers"] == DEFAULT_SPACE["nce_layers"]
    assert overrides({"negatives": "bank", "nce_T": 0.1}) == {
        "nce_includes_all_negatives_from_minibatch": False, "nce_bank_size": 16384, "nce_T": 0.1}
    space.write_text("nce_T: {loguniform: [0.3, 0.03]}\n")
    with pytest.raises(Exception, match="low < high"):
        load_space(space)


def test_the_search_line_counts_steps_over_trials_and_drops_those_asha_stopped():
    """jobs.tune.progress.count_search on the states Tune hands its callbacks: a report
    or an end that the trial does not show yet counts, a stopped trial's unrun steps
    leave the total, trials not created yet wait with all their steps."""
    from types import SimpleNamespace as Trial

    from jobs.tune.progress import count_search

    trials = [Trial(trial_id="t0", status="TERMINATED", last_result={"step": 10, "err": 30.0},  # restored, finished
                    metric_analysis={"err": {"min": 26.0, "max": 44.0, "last": 30.0}}),
              Trial(trial_id="t1", status="RUNNING", last_result={"step": 5, "err": 50.0}),  # ASHA stops it now
              Trial(trial_id="t2", status="RUNNING", last_result={"step": 2, "err": 45.0}),
              Trial(trial_id="t3", status="PENDING", last_result={})]
    count = count_search(trials, expected=6, steps_per_trial=10, metric="err", mode="min",
                         latest={"t2": {"step": 4, "err": 29.0}}, ended={"t1"}, scores={"t2": 25.0})
    assert (count.done, count.total) == (10 + 5 + 4, 10 + 5 + 10 + 10 + 2 * 10)
    assert (count.running, count.waiting, count.finished, count.stopped) == (1, 3, 1, 1)
    assert (count.best, count.best_trial) == (25.0, "t2")  # its best so far, not its last score
    trials[2].last_result["err"] = 20.0  # a report that `scores` has not seen yet counts too
    assert count_search(trials, expected=4, steps_per_trial=10, metric="err", mode="min").best == 20.0
    trials[2].last_result["err"] = 45.0
    restored = count_search(trials, expected=4, steps_per_trial=10, metric="err", mode="min", scores={"t2": 27.0})
    assert (restored.best, restored.best_trial) == (26.0, "t0")  # Tune's record of the restored trial's best
    high = count_search(trials, expected=4, steps_per_trial=10, metric="err", mode="max")
    assert (high.best, high.best_trial, high.total) == (50.0, "t1", 10 + 10 + 10 + 10)
