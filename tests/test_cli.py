"""The `raycut` command as a user runs it: real subprocesses, real files."""

import json
import os
import re
import statistics
import subprocess
import sys

import pytest
from PIL import Image

from cut_core.errors import RaycutError
from tests.conftest import patience, small_disk


# An ERROR-level line of Python's logging or of Ray's C++ log, a deprecation warning,
# or a Python traceback.
CONSOLE_PROBLEM = re.compile(r"\bERROR\b|,\d{3} E \d+ \d+\]|[Dd]eprecat|Traceback \(most recent call last\)")
# Ray 2.60's own fault, seen twice in ~2100 worker exits (2026-12-03, the AVX2-only EPYC;
# jobs.ray_runtime.compute_runtime_env): a Ray worker that exits as it should (idle, or
# its actor done) finds one of Ray's locks overwritten and aborts, and Ray forwards the
# stack. A worker's line, never the driver's; the run and its outputs are unaffected.
RAY_WORKER_EXIT_ABORT = re.compile(r"^\S*\(\S+ pid=\d+\)\S* \[[^]]+ E \d+ \d+\] logging\.cc:\d+: "
                                   r"(\*\*\* SIG[A-Z]+ received at time=|PC: @|\s+@\s)")


def raycut(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=None if env is None else {**os.environ, **env}, timeout=patience(600))


def test_help_lists_the_commands():
    r = raycut("--help")
    assert r.returncode == 0
    for name in ("demo", "toy-data", "import-official", "train", "bench", "env"):
        assert name in r.stdout


@pytest.mark.cost(15)
def test_env_says_what_auto_picks_here_and_why(tmp_path):
    """`raycut env` on a CPU without native bf16 (the AVX2 emulation): auto is fp32 for
    training and for translation (no VNNI, so no int8), with the probe's figures. The
    first call probes and fills the cache; --no-probe then reads it, and on an empty
    cache says that nothing was probed and times nothing."""
    env = {**os.environ, "RAYCUT_CACHE": str(tmp_path / "cache"), "RAYCUT_PROBES": "1",
           "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"}

    def env_command(*args: str) -> subprocess.CompletedProcess:
        r = subprocess.run([sys.executable, "-m", "jobs.cli", "env", *args], capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=patience(120))
        assert r.returncode == 0, r.stderr[-2000:]
        return r

    empty = env_command("--no-probe")
    assert "not probed yet" in empty.stdout and not (tmp_path / "cache" / "fast_paths.json").exists()
    report = json.loads(env_command("--json").stdout)
    cpu = report["devices"][0]
    assert cpu["device"] == "cpu" and not cpu["native_bf16"] and not cpu["vnni"], cpu
    assert cpu["training"].startswith("precision auto -> fp32") and cpu["probed"] == "probed now", cpu
    assert cpu["translation"].startswith("precision auto -> fp32"), cpu  # int8 needs VNNI
    assert "fp32's time" in cpu["reason"] and report["isa_limits"]["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert report["packages"]["torch"] != "not installed" and report["mlflow"] == env["MLFLOW_TRACKING_URI"]
    assert (tmp_path / "cache" / "fast_paths.json").is_file() and report["probe_cache_writable"]
    cached = env_command("--no-probe").stdout
    assert "why (from the cache" in cached and "training:    precision auto -> fp32" in cached, cached
    assert "no RAY_ADDRESS" in cached
    # Where a local Ray's files go (RAY_TMPDIR, as Ray reads it) and how full that disk
    # is, against the raylet's spill limit (lowered here to 1%: any disk is over it).
    assert " GB free of " in report["ray_files"] and "its files: " in cached
    env.update(RAY_TMPDIR=str(tmp_path / "ray-tmp"), RAY_local_fs_capacity_threshold="0.01")
    full = json.loads(env_command("--json", "--no-probe").stdout)
    assert full["ray_files"].startswith(f"{tmp_path / 'ray-tmp' / 'ray'}, on a disk with ") and full["ray_disk_over_limit"]
    assert "over Ray's 1% limit" in full["ray_files"] and "RAY_TMPDIR" in full["ray_files"]
    del env["RAY_local_fs_capacity_threshold"], env["RAY_TMPDIR"]
    (tmp_path / "a-file").write_text("")
    env["RAYCUT_CACHE"] = str(tmp_path / "a-file" / "cache")  # unwritable for root too
    assert "cannot be written: every process probes again" in env_command("--no-probe").stdout


def test_the_command_line_and_the_cpu_stages_load_no_torch():
    """The processes that never run a network never import torch: the CLI parsing
    options, and Ray Data's decode and encode workers (ingest, translation's CPU stages,
    the manifest), which unpickle these modules. torch costs each ~2.5 s of CPU and
    ~300 MB; on a 2-core machine that was most of a decode actor's start."""
    modules = ("jobs.cli", "jobs.train.spec", "jobs.translate.spec", "pipelines.ingest", "pipelines.translate_io",
               "pipelines.manifest", "pipelines.single_image", "cut_core.config")
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3])"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=patience(120))
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
    # The package's names still resolve (on first use).
    r = subprocess.run([sys.executable, "-c", "import cut_core; print(cut_core.train_step.__module__, len(dir(cut_core)))"],
                       capture_output=True, text=True, timeout=patience(120))
    assert r.returncode == 0 and r.stdout.split()[0] == "cut_core.training", r.stdout + r.stderr


def test_toy_data_command(tmp_path):
    r = raycut("toy-data", "--out", str(tmp_path / "toy"), "--size", "32", "--n", "3", "--n-test", "2")
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "toy/trainB").glob("*.png"))) == 3
    bad = raycut("toy-data", "--out", str(tmp_path / "x"), "--size", "30")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "multiple of 4" in bad.stderr


@pytest.mark.parametrize("content, words", [(None, "does not exist"), (b"junk", "cannot read")])
def test_import_official_bad_input_is_one_line(tmp_path, content, words):
    src = tmp_path / "latest_net_G.pth"
    if content is not None:
        src.write_bytes(content)
    r = raycut("import-official", "--generator", str(src), "--out", str(tmp_path / "m"))
    assert r.returncode == 2
    assert r.stderr.startswith("raycut: error:") and words in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert not (tmp_path / "m").exists()


@pytest.mark.cost(180)
def test_demo_runs_every_stage_and_writes_its_report(local_ray, tmp_path):
    """A shortened demo: Ray Data, Ray Train on 2 workers, MLflow, the registry alias,
    batch translation and evaluation all run for real, next to another Ray on this
    machine (this test process's, as a notebook's would be), and the model that Ray Train
    trained (150 steps at 32 px), the checkpoint that scored best on the val pair,
    beats both baselines on the test pair. The margin over histogram matching varies
    between runs (Ray Data's order is not seeded): the last step's colour error was
    26-43 in most runs, and 59-73 against histogram's 61 in three of about twenty,
    where D won part-way (docs/quality.md); so the test asks for a win, not a factor."""
    from mlflow.tracking import MlflowClient

    from jobs.demo import DemoOptions

    # 150 steps, scored every 25 (it was 300, then 180): with today's demo config the val
    # error is far under histogram matching's from the first score on (a 300-step run,
    # 2026-12-02 on the AMD EPYC: 26.8 at step 50, 17.4 at 300; this command at 180 steps,
    # 2026-12-07 on the AMD EPYC without AVX-512: 29.2 at step 30, 18.8 at 60, 13.6 on the
    # test pair against histogram matching's 61.9), and in the old runs where D took over it
    # did so after step ~100, where the val-chosen checkpoint of an earlier step is what is
    # judged (docs/quality.md). Each step cut is about 0.2 s of both cores; 150 is the
    # fewest that the demo still scores 6 times (every max(steps // 6, 25) steps).
    steps = 150
    # As on a nearly full disk (a CI host with 12.5 GB free of 252 failed this test on
    # it): the raylet's "over N% full" ERROR line, every 10 s, becomes one warning of
    # raycut's (jobs.console.tidy). A threshold of 1% makes any disk "full"; nothing here
    # spills, so nothing else changes.
    r = raycut("demo", "--out", str(tmp_path / "demo"), "--size", "32", "--steps", str(steps), cwd=tmp_path,
               env={"RAY_local_fs_capacity_threshold": "0.01"})
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "demo"
    for name in ("samples.png", "losses.png"):
        with Image.open(out / name) as im:
            im.verify()
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["metrics"]) == {"truth (paired real)", "baseline/identity", "baseline/histogram", "fastcut"}
    gains = summary["improvement_over_baselines"]
    assert set(gains) == {"baseline/identity", "baseline/histogram"}
    assert gains["baseline/histogram"] > 1.0 and gains["baseline/identity"] > 1.5, summary["metrics"]
    # Stage 2 read every training image of both domains (one Ray Data pass over both).
    assert summary["ingest"] == {"trainA": DemoOptions.n_train, "trainB": DemoOptions.n_train}
    assert f"[ingest trainA + trainB] decoded {2 * DemoOptions.n_train} images, skipped 0" in r.stdout
    assert summary["translated"] == 24 and len(list((out / "translated" / "testA").glob("*.png"))) == 24
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")  # the working directory's store
    run = client.get_run(summary["mlflow"]["run_id"])
    assert run.info.status == "FINISHED" and "eval/colour_err" in run.data.metrics
    registered = client.get_model_version_by_alias("raycut-demo", "demo")
    assert str(registered.version) == str(summary["mlflow"]["version"])
    # The registered model is the best checkpoint on the val pair, one of those scored.
    chosen = summary["selected"]
    every = chosen["every"]
    assert every == steps // 6 and chosen["step"] in range(every, steps + 1, every)
    assert registered.tags["raycut.steps"] == str(chosen["step"])
    scored = {int(m.step): m.value for m in client.get_metric_history(run.info.run_id, "eval_colour_err")}
    assert set(range(every, steps + 1, every)) <= set(scored) and chosen["val_colour_err"] == min(scored.values())
    assert f"checkpoint of step {chosen['step']}" in (out / "summary.md").read_text()
    for stage in range(1, 8):
        assert f"<== [{stage}/7] done in" in r.stdout
    text = (out / "summary.md").read_text()
    assert "baseline/identity" in text and "mlflow ui --backend-store-uri" in text
    # precision auto was settled in the workers, logged to MLflow and shown in the report.
    resolved = summary["fast_paths"]["resolved_precision"]
    assert resolved in ("fp32", "bf16") and run.data.params["resolved_precision"] == resolved
    assert "fp32's time" in run.data.params["fast_paths_reason"]
    assert run.data.params["cpu_malloc"] and f"malloc: {run.data.params['cpu_malloc']}" in r.stdout  # cut_core.allocator
    assert f"precision auto -> {resolved}" in text
    assert f"fast paths on cpu: precision auto -> {resolved}" in r.stdout
    # A run that works prints no ERROR-level line, no deprecation warning and no
    # traceback: with another Ray here, Ray Train's placement-group cleaner once printed
    # "Found multiple active Ray instances" (jobs.ray_runtime.start_ray).
    # Nor any line of the noise that jobs.console drops (Ray Data's progress-bar notice
    # is a Python log line of the driver, which the fd-2 filter does not see).
    from jobs.console import is_noise

    lines = (r.stdout + r.stderr).splitlines()
    problems = [i for i, line in enumerate(lines) if (CONSOLE_PROBLEM.search(line) or is_noise(line))
                and not RAY_WORKER_EXIT_ABORT.search(line)]
    # The first problem with what follows it: a traceback's first line alone says nothing.
    assert not problems, "\n".join(lines[problems[0]:problems[0] + 25]) if problems else ""
    full = [line for line in lines if "is over 1% full" in line]
    assert len(full) == 1 and full[0].startswith("raycut: warning: the disk under ") and "RAY_TMPDIR" in full[0], full


def test_a_full_disk_anywhere_is_one_line_not_a_traceback(tmp_path):
    """A disk that fills where no command names its folder (here the toy data's PNGs, on
    a real 64 KB tmpfs): `raycut` says so in one line and exits 2."""
    with small_disk(tmp_path / "small", "64k"):
        r = raycut("toy-data", "--out", str(tmp_path / "small" / "toy"))
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.startswith("raycut: error: a disk is full") and "No space left on device" in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr


def test_the_console_filter_drops_rays_noise_and_keeps_everything_else():
    """fd 2 of a `raycut` process goes through jobs.console: Ray's C++ ERROR line about
    actor arguments is dropped, another C++ ERROR line and a traceback are kept, and a
    progress line redrawn with \\r (no newline) is shown too."""
    noise = ("[2026-11-30 02:55:58,434 E 21617 21688] core_worker.cc:2465: Actor with class name: 'MapWorker' and ID: "
             "'e6bd' has constructor arguments in the object store and max_restarts > 0. If the arguments ...")
    real = "[2026-11-30 02:55:58,435 E 21617 21688] core_worker.cc:812: Failed to register worker to Raylet"
    script = f"""
import os, sys
from jobs.console import filter_stderr
filter_stderr()
os.write(2, {noise!r}.encode() + b"\\n" + {real!r}.encode() + b"\\n")
os.write(2, b"(PlacementGroupCleaner pid=7) Detected that the Ray Train controller actor (b5017d) is dead. "
            b"Cleaning up placement group 0a1b.\\n")
os.write(2, b"(raylet) Task MapWorker(MapBatches(DecodeA)).submit failed. There are infinite retries remaining, so "
            b"the task will be retried. Error: The actor is dead because it was killed by `ray.kill`.\\n")
os.write(2, b"[train] 1/4 25%\\r")
for free in (12.5587, 12.5585):  # the raylet's note every 10 s: said once, in raycut's words
    os.write(2, f"[2026-12-06 06:24:26,013 E 29800 29811] (raylet) file_system_monitor.cc:116: /tmp/ray/session_2026-12-06_1 "
                f"is over 95% full, available space: {{free}} GB; capacity: 251.972 GB. Object creation will fail if "
                f"spilling is required.\\n".encode())
print("python's own stderr", file=sys.stderr)
os.write(2, b"[2026-11-30 02:55:58,436 E 1 1] core_")
os.write(2, b"worker.cc:1: Actor x has constructor arguments in the object store and max_restarts > 0\\nTraceback (most recent call last)\\n")
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=patience(60))
    assert r.returncode == 0, r.stderr
    assert "constructor arguments" not in r.stderr and "PlacementGroupCleaner" not in r.stderr
    assert "MapWorker" not in r.stderr
    assert real in r.stderr and "Traceback (most recent call last)" in r.stderr
    assert "[train] 1/4 25%" in r.stderr and "python's own stderr" in r.stderr
    assert "file_system_monitor" not in r.stderr
    assert r.stderr.count("raycut: warning: the disk under /tmp/ray is over 95% full (12.6 GB free of 252 GB)") == 1


def test_the_raylets_notes_to_the_driver_go_through_the_filter_too(local_ray, capsys):
    """Ray's error listener prints the raylet's notes (here: it started more worker
    processes than the node has cores, which every Tune search on 2 cores does) through
    the module's print_to_stdstream, not the worker-log handler: raycut's Ray filters
    that route too; a note Ray repeats (the disk nearly full) is said once, as raycut's;
    other notes print."""
    from ray._private import worker

    from jobs.console import filter_worker_logs

    filter_worker_logs()
    note = ("WARNING: 14 PYTHON worker processes have been started on node: 8adf with address: 192.0.2.2, which is 7x "
            "the maximum expected startup concurrency (2). This could be a result of using a large number of actors")
    full = ("[2026-12-06 06:24:26,013 E 29800 29811] file_system_monitor.cc:116: /var/tmp/r/session_1 is over 97% full, "
            "available space: 3.04 GB; capacity: 100 GB. Object creation will fail if spilling is required.")
    for _ in range(2):
        worker.print_to_stdstream({"lines": [note, full, "a raylet note that stays"], "pid": "raylet", "is_err": False},
                                  ignore_prefix=False)
    out, err = capsys.readouterr()
    assert "a raylet note that stays" in out and "PYTHON worker processes" not in out, out
    assert "file_system_monitor" not in out + err
    said = [line for line in err.splitlines() if "over 97% full" in line]
    assert said == ["raycut: warning: the disk under /var/tmp/r is over 97% full (3.0 GB free of 100 GB): Ray fails "
                    "any task that must spill objects there. Free space on it, or set RAY_TMPDIR to a folder on a "
                    "roomier disk."], err


@pytest.mark.cost(15)
def test_bench_train_writes_the_record(tmp_path):
    out = tmp_path / "bench.json"
    r = raycut("bench", "train", "--out", str(out), "--crop", "32", "--iters", "2", "--warmup", "0",
               "--presets", "fastcut", "--variants", "auto", "fp32-eager", "bf16")
    assert r.returncode == 0, r.stderr
    record = json.loads(out.read_text())
    assert record["bench"] == "train" and "cpu" in record["machine"]
    auto = record["machine"]["auto_resolves_to"]  # what auto is here, and why, in the record
    assert auto["precision"] in ("fp32", "bf16") and "fp32's time" in auto["why"]
    rows = {row["name"]: row for row in record["results"] if row["metric"] == "ms_per_iter"}
    assert set(rows) == {"fastcut/auto@32", "fastcut/fp32-eager@32", "fastcut/bf16@32",
                         "baseline/fastcut-official-schedule@32"}
    assert rows["fastcut/auto@32"]["resolved"].startswith(f"precision auto -> {auto['precision']}")
    bf16 = rows["fastcut/bf16@32"]
    if record["machine"]["fast_paths"]["capabilities"]["bf16"]:
        assert bf16["value"] > 0 and len(bf16["times_ms"]) == 2
    else:  # emulated here: listed with the probe's figure, not timed
        assert bf16["value"] is None and "emulated" in bf16["skipped"]
    for name in ("fastcut/auto@32", "fastcut/fp32-eager@32", "baseline/fastcut-official-schedule@32"):
        assert rows[name]["value"] > 0 and len(rows[name]["times_ms"]) == 2 and rows[name]["spread_ms"] >= 0
        assert rows[name]["steps_per_round"] == 2  # an unflipped and a flipped step, times per step
    # Each row's speed-up is the median of its per-round ratios to the baseline beside it.
    base = rows["baseline/fastcut-official-schedule@32"]["times_ms"]
    for name in ("fastcut/auto@32", "fastcut/fp32-eager@32"):
        want = statistics.median(b / t for b, t in zip(base, rows[name]["times_ms"]))
        assert rows[name]["paired_vs_baseline"] == pytest.approx(want, abs=2e-3)
        table_line = r.stdout.split(name)[-1].splitlines()[0]  # the name's last mention: its table row
        assert f"{rows[name]['paired_vs_baseline']:.2f}x" in table_line
    assert "fastcut/bf16@32" in r.stdout and "fastcut/auto@32" in r.stdout  # the printed table
    # The arithmetic of a step: raycut takes the PatchNCE keys from G's own pass, so
    # an unflipped FastCUT step does less than the reference's; a flipped one encodes
    # the unflipped source as the reference does (the mean of the two is reported).
    work = rows["fastcut/fp32-eager@32"]["arith_vs_baseline"]
    assert 0.9 < work < 1.0 and rows["baseline/fastcut-official-schedule@32"]["arith_vs_baseline"] == 1.0
    assert rows["fastcut/auto@32"]["gflop_per_iter"] == rows["fastcut/fp32-eager@32"]["gflop_per_iter"] > 0
    line = r.stdout.split("fastcut/fp32-eager@32")[-1].splitlines()[0]
    assert f"{work:.3f}" in line
    # ... and the rate the row ran its arithmetic at: the work ratio over the ratio of
    # the rates is the row's time over the baseline's, up to the rounds' medians.
    rate = rows["fastcut/fp32-eager@32"]["gflop_per_s"]
    assert rate == pytest.approx(rows["fastcut/fp32-eager@32"]["gflop_per_iter"] / rows["fastcut/fp32-eager@32"]["value"] * 1000, abs=0.1)
    row = next(x for x in r.stdout.splitlines() if x.startswith("fastcut/fp32-eager@32 "))
    assert row[97:105].strip() == f"{rate:.0f}", row  # the GFLOP/s column
    # The baseline steps in a process of its own with glibc's malloc as it comes, as the
    # reference code runs; raycut's rows in the bench's process, whose malloc it tuned.
    assert rows["baseline/fastcut-official-schedule@32"]["malloc"].startswith("glibc as it comes")
    assert rows["fastcut/fp32-eager@32"]["malloc"] == rows["fastcut/auto@32"]["malloc"] != ""


def test_bench_layers_times_g_last_conv_both_ways(tmp_path):
    """`python -m jobs.bench.layers`: oneDNN's and the matmul backward of G's last conv,
    round by round; the matmul row's speed-up is the median of the per-round ratios."""
    out = tmp_path / "layers.json"
    r = subprocess.run([sys.executable, "-m", "jobs.bench.layers", "--crops", "32", "--batches", "1", "2",
                        "--rounds", "3", "--out", str(out)], capture_output=True, text=True, timeout=patience(300))
    assert r.returncode == 0, r.stderr
    record = json.loads(out.read_text())
    assert record["bench"] == "layers" and record["machine"]["device"] == "cpu"
    rows = {row["name"]: row for row in record["results"]}
    assert set(rows) == {f"g-last-conv/{v}@32px-b{b}" for v in ("oneDNN", "matmul-backward") for b in (1, 2)}
    for row in rows.values():
        assert row["value"] > 0 and row["spread_ms"] >= 0 and row["rounds"] == 3
    for b in (1, 2):
        speedup = rows[f"g-last-conv/matmul-backward@32px-b{b}"]["paired_vs_baseline"]
        assert speedup > 0
        line = r.stdout.split(f"g-last-conv/matmul-backward@32px-b{b}")[-1].splitlines()[0]
        assert f"{speedup:.2f}x" in line


@pytest.mark.cost(30)
def test_bench_quality_scores_every_run_and_shows_one_progress_line(tmp_path):
    """Each (variant, seed) trains in its own process and is scored on the toy pair's
    held-out truth; the record keeps the baselines, each seed's error and its loss
    history; the curves are plotted; and the console shows one progress line with an
    ETA over all the runs together (a 64 px bench runs for hours); and a grid shows
    the translations."""
    out = tmp_path / "quality.json"
    r = raycut("bench", "quality", "--out", str(out), "--presets", "fastcut", "--size", "32", "--steps", "20",
               "--seeds", "0", "--quality-variants", "plain",
               "aug:d_augment=color,translation,cutout:lr_plateau_patience=1", "--eval-every", "5")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {row["name"]: row for row in json.loads(out.read_text())["results"]}
    assert set(rows) == {"baseline/identity", "baseline/histogram", "fastcut/plain", "fastcut/aug"}
    # On the street pair histogram matching is the stronger baseline (106 against 62 at 32 px).
    assert 0 < rows["baseline/histogram"]["value"] < rows["baseline/identity"]["value"]
    for name in ("fastcut/plain", "fastcut/aug"):
        row = rows[name]
        assert row["steps"] == 20 and row["per_seed"] == [row["value"]] and row["value"] > 0
        assert row["threads"] == 1  # what each run trained on (--threads, default 1)
        # A log point at each evaluation (every 5 steps here; every 10 at most).
        assert [h["step"] for h in row["histories"][0]] == [5, 10, 15, 20] and "D_rt" in row["histories"][0][-1]
        # The record says what the learning rate did: FastCUT's 150 + 50 epochs over 20 steps.
        assert "constant for 15 steps, then a linear decay over the last 5 (the config's 150+50" in row["lr_schedule"]
        # Label preservation, read by the toy segmenter: the paired truth is what it
        # reads best; a 20-step G keeps some of the labels.
        assert row["mIoU_per_seed"] == [row["mIoU"]] and 0 < row["mIoU"] < row["truth_mIoU"] <= 1
        # The checkpoint `raycut train --eval-every` would register: scored on the val
        # pair every 5 steps, the best one then scored on the test pair. Where that is
        # the last step, its test scores are the last step's.
        (curve,), (chosen,) = row["val_curves"], row["best_step_per_seed"]
        assert [c["step"] for c in curve] == [5, 10, 15, 20]
        assert chosen == min(curve, key=lambda c: c["eval_colour_err"])["step"]
        assert row["best_per_seed"] == [row["best"]] and row["best"] > 0
        if chosen == 20:
            assert (row["best"], row["best_mIoU_per_seed"]) == (row["value"], row["mIoU_per_seed"])
        else:
            assert row["best"] != row["value"]
    assert 0 < rows["baseline/histogram"]["mIoU"] < rows["fastcut/plain"]["truth_mIoU"]
    # Each run also went to a log as it ended (what a bench stopped part-way keeps).
    ended = [json.loads(line) for line in out.with_suffix(".runs.jsonl").read_text().splitlines()]
    assert sorted((e["variant"], e["seed"], e["colour_err"]) for e in ended) == sorted(
        (name.split("/")[1], 0, pytest.approx(rows[name]["value"], abs=0.01)) for name in ("fastcut/plain", "fastcut/aug"))
    # A variant of the user's own (NAME:KEY=VALUE) trains with its overrides: augmenting
    # D's inputs changes what G learns from D.
    assert rows["fastcut/aug"]["sets"] == ["d_augment=color,translation,cutout", "lr_plateau_patience=1"]
    assert rows["fastcut/plain"]["value"] != rows["fastcut/aug"]["value"]
    # ... and its rate is cut on the val metric: at step 10 exactly when that evaluation
    # did not beat step 5's (patience 1; steps 15 and 20 are in the decay); the record
    # says where.
    val = {c["step"]: c["eval_colour_err"] for c in rows["fastcut/aug"]["val_curves"][0]}
    assert rows["fastcut/aug"]["lr_cuts_per_seed"] == [[{"step": 10, "scale": 0.5}] if val[10] >= val[5] else []]
    assert "lr_cuts_per_seed" not in rows["fastcut/plain"]
    with Image.open(out.with_suffix(".png")) as im:
        im.verify()
    # The translations beside the input, histogram matching and the truth: 4 test
    # images, 5 columns of 32 px tiles shown at 4x, 2 px apart, under a title line.
    with Image.open(tmp_path / "quality_samples_fastcut.png") as im:
        assert im.size == (5 * (128 + 2) + 2, 14 + 4 * (128 + 2) + 2)
    lines = [line for line in r.stderr.splitlines() if line.startswith("[quality]")]
    assert lines and lines[-1].startswith("[quality] 40/40 100%") and "ETA" in lines[-1], r.stderr[-2000:]
    assert "fastcut/aug" in r.stdout and "best on val" in r.stdout  # the printed table


def _children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (from /proc)."""
    from pathlib import Path

    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    from pathlib import Path

    try:  # a zombie has exited; only its parent's wait is missing
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.cost(15)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_killed_bench_takes_its_runs_with_it(tmp_path):
    """kill -9 of `raycut bench quality` ends its training processes too: a process
    pool's workers stop only when their parent tells them, and each would otherwise
    train on as an orphan for up to an hour."""
    import signal
    import time
    from pathlib import Path

    proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", "bench", "quality", "--out", str(tmp_path / "q.json"),
                             "--presets", "fastcut", "--size", "32", "--steps", "100000", "--seeds", "0",
                             "--quality-variants", "plain", "diffaugment"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + patience(300)  # generous: the suite runs two workers on 2 cores
        training: list[int] = []
        while len(training) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            # The runs have started once a child has torch loaded (the manager never does).
            training = [c for c in _children(proc.pid) if "libtorch" in Path(f"/proc/{c}/maps").read_text(errors="ignore")]
        assert len(training) == 2, "the bench did not start its two runs"
        children = _children(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + patience(30)
        while any(_alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [c for c in children if _alive(c)], "children outlived the killed bench"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_quality_variants_are_named_recipes_or_the_users_own():
    from jobs.bench.quality import QUALITY_VARIANTS, parse_variants

    got = parse_variants(["plain", "nce2:lambda_NCE=2:nce_layers=4,8"])
    assert got == {"plain": QUALITY_VARIANTS["plain"], "nce2": ("lambda_NCE=2", "nce_layers=4,8")}
    for bad, says in (("bogus", "unknown quality variant 'bogus'"), ("x:lambda_NCE", "'lambda_NCE' is not KEY=VALUE"),
                      (":lambda_NCE=2", "its own name")):
        with pytest.raises(RaycutError, match=says):
            parse_variants([bad])
    with pytest.raises(RaycutError, match="its own name"):
        parse_variants(["a:lr=1", "a:lr=2"])
    # CycleGAN's budget is the time of the first other variant's steps, or of the preset
    # as configured when it is alone; without CycleGAN nothing is timed.
    from jobs.bench.quality import cyclegan_reference

    assert cyclegan_reference(parse_variants(["cyclegan", "nce2:lambda_NCE=2", "plain"])) == ("nce2", ("lambda_NCE=2",))
    assert cyclegan_reference(parse_variants(["cyclegan"])) == ("(as configured)", ())
    assert cyclegan_reference(parse_variants(["plain", "ema"])) is None
    # Bad keys and values are refused before any run starts, in one line.
    r = raycut("bench", "quality", "--out", "unused.json", "--quality-variants", "x:lambda_NCEE=2")
    assert r.returncode != 0 and r.stderr.strip().splitlines() == ["raycut: error: unknown config key 'lambda_NCEE'; did you mean lambda_NCE?"]
    r = raycut("bench", "quality", "--out", "unused.json", "--threads", "0")
    assert r.returncode != 0 and r.stderr.strip().splitlines() == ["raycut: error: --threads must be at least 1"]


@pytest.mark.cost(20)
def test_bench_quality_can_choose_and_cut_on_kid_as_off_the_toy_data(tmp_path):
    """``--val-metric kid``: the val pair is scored by KID (as a user's data is) in the toy
    segmenter's features, which picks the best checkpoint and drives the rate's cut; the
    val colour error is logged beside it, at the same steps."""
    from pathlib import Path

    import numpy as np
    import torch

    from jobs.bench.quality import _held_out_reals, _train_and_score, _train_segmenter
    from pipelines.toy_data import ToySpec, write_toy_dataset

    spec = ToySpec(size=32, n_train=16, n_test=16, n_val=16, seed=0, scene="coast")
    root = write_toy_dataset(tmp_path / "toy", spec)
    _train_segmenter(str(root), "kid")
    # --kid-pool 8: a checkpoint study's records of every evaluation, against 8 reals
    # of layouts that no split holds.
    reals = _held_out_reals(tmp_path, spec, 8)
    held_out = sorted(p.read_bytes() for p in Path(reals).iterdir())
    assert len(held_out) == 8 and not set(held_out) & {p.read_bytes() for p in (root / "trainB").iterdir()}
    before = torch.get_num_threads()
    try:  # --threads 2: the run trains on two (another draw of the seed)
        r = _train_and_score("fastcut", "toy", ("lr_plateau_patience=1",), 0, 32, 16, str(root), eval_every=2,
                             val_metric="kid", threads=2, kid_pool=reals)
    finally:
        torch.set_num_threads(before)
    assert r["threads"] == 2
    curve = r["val_curve"]
    assert r["val_metric"] == "eval_kid" and [c["step"] for c in curve] == [2, 4, 6, 8, 10, 12, 14, 16]
    assert all(c["eval_colour_err"] > 0 and abs(c["eval_kid"]) < 10 for c in curve), curve
    # The checkpoint `raycut train` registers: the latest whose KID is within its own
    # standard error (logged beside it) of the lowest KID so far.
    assert all(c["eval_kid_se"] > 0 for c in curve), curve
    chosen = [c["step"] for i, c in enumerate(curve)
              if c["eval_kid"] <= min(e["eval_kid"] for e in curve[: i + 1]) + c["eval_kid_se"]]
    assert r["best_step"] == chosen[-1], (chosen, curve)
    # The study scored every evaluated checkpoint on the test pair, as the run scores
    # its last step and its chosen one, and kept the KID features of each.
    scores = {c["step"]: c for c in r["checkpoints"]}
    assert list(scores) == [c["step"] for c in curve]
    assert scores[16]["colour_err"] == pytest.approx(r["colour_err"], abs=1e-3)
    assert scores[r["best_step"]]["colour_err"] == pytest.approx(r["best_colour_err"], abs=1e-3)
    assert scores[r["best_step"]]["mIoU"] == pytest.approx(r["best_mIoU"], abs=1e-3)
    feats = r["kid_features"]
    assert feats["real"].shape == (8, 48) and feats["fake"].shape == (8, 8, 48)
    assert np.abs(feats["fake"]).max() <= 1 and not np.array_equal(feats["fake"][0], feats["fake"][-1])
    # The cut follows KID, not the colour: with a patience of one, at the first
    # evaluation of the constant-rate half (FastCUT's 150 of 200 epochs: steps 2-12)
    # that does not beat the best KID before it; once (the floor is half the rate).
    first = next((c["step"] for i, c in enumerate(curve) if 0 < i and c["step"] <= 12
                  and c["eval_kid"] >= min(e["eval_kid"] for e in curve[:i])), None)
    assert r["lr_cuts"] == ([] if first is None else [{"step": first, "scale": 0.5}])


@pytest.mark.parametrize(
    "args, words",
    [
        (["--data-a", "x"], "--data-a and --data-b are required"),
        (["--data-a", "missing-a", "--data-b", "missing-b"], "missing-a"),
        (["--data-a", "a", "--data-b", "b", "--set", "crop_size=big"], "crop_size"),
        (["--data-a", "a", "--data-b", "b", "--steps", "0"], "at least 1"),
        (["--resume"], "no run to resume"),
        (["--data-a", "a", "--data-b", "b", "--set", "lr_plateau_patience=2"], "needs --eval-every N"),
        (["--config", "cut-small-data", "--data-a", "a", "--data-b", "b"], "needs --eval-every N"),
    ],
)
def test_train_bad_input_is_one_line(tmp_path, args, words):
    """Bad input stops before Ray starts, with one line and exit code 2."""
    r = raycut("train", *args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and words in r.stderr, r.stderr


def test_translate_bad_model_is_one_line(tmp_path):
    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "in" / "a.png")
    r = raycut("translate", "--model", str(tmp_path / "nomodel"), "--input", str(tmp_path / "in"),
               "--output", str(tmp_path / "out"), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "not a raycut model directory" in r.stderr, r.stderr


def test_options_are_declared_once_and_reach_the_typed_spec():
    """The train and tune command lines are derived from the spec dataclasses: each
    ``opt`` field is an option with the field's default, and parsing gives the typed
    spec back (nested Schedule and Validation included)."""
    from dataclasses import fields

    from jobs.cli import _config_options, build_parser
    from jobs.options import cli_fields, options_from
    from jobs.train.spec import Schedule, TrainOptions, Validation
    from jobs.tune.spec import TuneOptions

    parser = build_parser()
    args = parser.parse_args(["train", "--CUT_mode", "FastCUT", "--data-a", "a", "--data-b", "b", "--steps", "7",
                              "--log-every", "3", "--eval-images", "8", "--set", "ngf=8", "--resume"])
    opts = TrainOptions(**_config_options(args), **options_from(TrainOptions, args),
                        schedule=Schedule(**options_from(Schedule, args)),
                        validation=Validation(**options_from(Validation, args)))
    assert opts == TrainOptions(preset="fastcut", sets=("ngf=8",), data_a="a", data_b="b", steps=7, resume=True,
                                schedule=Schedule(log_every=3), validation=Validation(eval_images=8))
    for command, classes in (("train", (TrainOptions, Schedule, Validation)), ("tune", (TuneOptions, Validation))):
        parsed = parser.parse_args([command])
        for cls in classes:
            assert all(hasattr(parsed, f.name) for f in cli_fields(cls)), (command, cls.__name__)
    defaults = parser.parse_args(["tune"])
    assert options_from(TuneOptions, defaults) == {f.name: f.default for f in cli_fields(TuneOptions)}
    assert Validation(**options_from(Validation, defaults)).eval_images == TuneOptions().validation.eval_images == 16
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--steps", "3", "--epochs", "2"])  # one length, not both
    assert {f.name for f in fields(Schedule)} <= {f.name for f in cli_fields(Schedule)}
