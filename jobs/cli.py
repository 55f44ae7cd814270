"""The `raycut` command line. Each subcommand imports its work lazily so that
`raycut --help` is instant and commands that need no Ray never import it."""

from __future__ import annotations

import argparse
import os
import sys
import typing
from pathlib import Path

from cut_core.config import Precision
from cut_core.translate import PRECISIONS as TRANSLATE_PRECISIONS
from cut_core.errors import RaycutError


def _switch(value: str) -> bool | str:
    """auto | on | off -> "auto" | True | False."""
    return value if value == "auto" else value == "on"


def _cmd_demo(args: argparse.Namespace) -> int:
    from jobs.demo import DemoOptions, run_demo

    if args.n_train < 8:
        raise RaycutError("--n-train must be at least 8")
    run_demo(DemoOptions(out=Path(args.out), size=args.size, steps=args.steps, precision=args.precision, seed=args.seed,
                         n_train=args.n_train))
    return 0


def _cmd_toy_data(args: argparse.Namespace) -> int:
    from pipelines.toy_data import ToySpec, write_toy_dataset

    if args.size < 16 or args.size % 4:
        raise RaycutError(f"--size {args.size} must be a multiple of 4 and at least 16")
    if args.n < 1 or args.n_test < 1:
        raise RaycutError("--n and --n-test must be at least 1")
    root = write_toy_dataset(args.out, ToySpec(size=args.size, n_train=args.n, n_test=args.n_test, seed=args.seed))
    print(f"wrote the toy sim->real dataset to {root} ({args.n} train images per domain, {args.n_test} test pairs)")
    return 0


def _cmd_import_official(args: argparse.Namespace) -> int:
    from cut_core.model_dir import import_official_generator

    out = import_official_generator(args.generator, args.out, preset=args.preset)
    print(f"wrote model directory {out} (config.json + generator.safetensors)")
    return 0


def _data_args(args: argparse.Namespace) -> None:
    """``--dataroot ROOT``: the CycleGAN layout (ROOT/trainA, ROOT/trainB), as in CUT."""
    if getattr(args, "dataroot", None):
        args.data_a = args.data_a or f"cyclegan:{args.dataroot}:trainA"
        args.data_b = args.data_b or f"cyclegan:{args.dataroot}:trainB"


def _dry_run(args: argparse.Namespace) -> bool:
    """``--dry-run``: print the resolved configuration and stop."""
    if not args.dry_run:
        return False
    from jobs.config_file import resolve_with_sources, show_config

    print(show_config(resolve_with_sources(args.preset, args.config, list(args.set))), end="")
    return True


def _cmd_config(args: argparse.Namespace) -> int:
    args.dry_run = True
    _dry_run(args)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from jobs.train.driver import TrainOptions, run_train

    _data_args(args)
    if _dry_run(args):
        return 0
    run_train(
        TrainOptions(
            preset=args.preset, data_a=args.data_a or "", data_b=args.data_b or "", config_file=args.config,
            sets=tuple(args.set), workers=args.workers, gpus_per_worker=args.gpus_per_worker,
            cpus_per_worker=args.cpus_per_worker, steps=args.steps, epochs=args.epochs, register=args.register or "",
            resume=args.resume, name=args.name, storage_path=args.storage_path, checkpoint_every=args.checkpoint_every,
            keep_checkpoints=args.keep_checkpoints, log_every=args.log_every, sample_every=args.sample_every,
            max_failures=args.max_failures, experiment=args.experiment, placement=args.placement,
            eval_every=args.eval_every, eval_data=args.eval_data, eval_real=args.eval_real, eval_images=args.eval_images,
            inception_weights=args.inception_weights, feature_extractor=args.feature_extractor,
        )
    )
    return 0


def _cmd_translate(args: argparse.Namespace) -> int:
    from jobs.translate.driver import TranslateOptions, run_translate

    summary = run_translate(TranslateOptions(
        model=args.model, input=args.input, output=args.output, batch_size=args.batch_size,
        concurrency=args.concurrency, gpus_per_actor=args.gpus_per_actor, precision=args.precision,
        calibration_images=args.calibration_images, channels_last=_switch(args.channels_last), tile=args.tile,
        overlap=args.overlap, fmt=args.format, png_level=args.png_level, jpeg_quality=args.jpeg_quality,
        labels=args.labels, link_labels=args.link_labels,
    ))
    return 1 if summary.failed else 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from jobs.tune.driver import TuneOptions, run_tune

    _data_args(args)
    if _dry_run(args):
        return 0
    run_tune(TuneOptions(
        data_a=args.data_a or "", data_b=args.data_b or "", preset=args.preset, config_file=args.config,
        sets=tuple(args.set), space=args.space, samples=args.samples, max_concurrent=args.max_concurrent,
        metric=args.metric, steps_per_trial=args.steps_per_trial, eval_every=args.eval_every,
        grace_period=args.grace_period, reduction_factor=args.reduction_factor, search=args.search,
        workers=args.workers, register=args.register or "", name=args.name, storage_path=args.storage_path,
        resume=args.resume, seed=args.seed, experiment=args.experiment, eval_data=args.eval_data,
        eval_real=args.eval_real, eval_images=args.eval_images, inception_weights=args.inception_weights,
        feature_extractor=args.feature_extractor,
    ))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from jobs.evaluate import EvaluateOptions, run_evaluate

    try:
        w, h = (int(v) for v in args.seg_size.lower().split("x"))
    except ValueError:
        raise RaycutError(f"--seg-size must be WIDTHxHEIGHT, e.g. 256x128, not {args.seg_size}") from None
    run_evaluate(EvaluateOptions(
        real=args.real, fake=args.fake, toy=args.toy, name=args.name, inception_weights=args.inception_weights,
        feature_extractor=args.feature_extractor, feature_size=args.feature_size, kid_subsets=args.kid_subsets,
        kid_subset_size=args.kid_subset_size, seg_model=args.seg_model, labels=args.labels, label_kind=args.label_kind,
        seg_normalize=args.seg_normalize, seg_size=(h, w), batch_size=args.batch_size, concurrency=args.concurrency,
        out=args.out, run_id=args.run_id,
    ))
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    from jobs.submit import SubmitOptions, submit

    command = [c for c in args.command if c != "--"] if args.command[:1] == ["--"] else list(args.command)
    return submit(SubmitOptions(command=tuple(command), address=args.address, runtime_env=args.runtime_env,
                                wait=args.wait, pip=not args.no_pip, env=tuple(args.env)))


def _cmd_jobs(args: argparse.Namespace) -> int:
    from jobs.submit import jobs_command

    return jobs_command(args.action, args.job_id, args.address, follow_logs=args.follow)


def _cmd_bench(args: argparse.Namespace) -> int:
    from jobs.bench.commands import run_bench

    return run_bench(args)


def _add_validation_options(parser: argparse.ArgumentParser, *, images: int) -> None:
    """Where evaluation during training (train --eval-every, every tune trial) gets its data."""
    parser.add_argument("--eval-data", help="held-out A images (default: the toy testA beside --data-a)")
    parser.add_argument("--eval-real", help="held-out B images: KID's reference set (non-toy data)")
    parser.add_argument("--eval-images", type=int, default=images, help="validation images per evaluation")
    parser.add_argument("--inception-weights", help="pt_inception-2015-12-05-6726825d.pth for KID (see raycut evaluate --help)")
    parser.add_argument("--feature-extractor", help="TorchScript feature extractor for KID instead of Inception")


def _add_config_options(parser: argparse.ArgumentParser, preset_help: str) -> None:
    """--preset (or CUT's --CUT_mode), --config and --set: the run's configuration."""
    parser.add_argument("--preset", "--CUT_mode", dest="preset", type=_preset_arg, metavar="PRESET", help=preset_help)
    parser.add_argument("--config", help="YAML file of options (official CUT names; may name its preset:), applied over the preset")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one option, e.g. crop_size=512 or netG=resnet_6blocks (wins over --config)")


def _preset_arg(value: str) -> str:
    from jobs.config_file import preset_name

    try:
        return preset_name(value)
    except RaycutError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# One example per command, shown at the end of its --help.
EXAMPLES = {
    "demo": "raycut demo                      # ./raycut-demo: samples.png, losses.png, summary.md",
    "toy-data": "raycut toy-data --out toy --size 64",
    "import-official": "raycut import-official --generator checkpoints/horse2zebra/latest_net_G.pth --out models/h2z",
    "train": "raycut train --CUT_mode FastCUT --dataroot ./datasets/grumpifycat --set netG=resnet_9blocks \\\n"
             "    --workers 2 --steps 2000 --register grumpy\n"
             "raycut train --preset fastcut --config toy --data-a cyclegan:toy:trainA "
             "--data-b cyclegan:toy:trainB --dry-run",
    "tune": "raycut tune --preset fastcut --dataroot toy --samples 8 --steps-per-trial 400 --register toy-best",
    "translate": "raycut translate --model models:/grumpy@latest --input gta5:/data/gta5 --output /data/gta5-real \\\n"
                 "    --labels /data/gta5/labels --gpus-per-actor 1 --concurrency 1-8",
    "evaluate": "raycut evaluate --toy toy --fake toy-real\n"
                "raycut evaluate --real cityscapes:/data/cityscapes:val --fake /data/gta5-real "
                "--inception-weights pt_inception-2015-12-05-6726825d.pth",
    "config": "raycut config show --preset fastcut --config toy --set crop_size=128 > run.yaml",
    "submit": "RAY_ADDRESS=http://127.0.0.1:8265 raycut submit -- raycut train --dataroot s3://bucket/toy --workers 4",
    "jobs": "raycut jobs list; raycut jobs logs JOB_ID --follow",
    "bench": "raycut bench train --out bench-train.json\nraycut bench translate --out bench-translate.json",
}


def _with_examples(sub: argparse._SubParsersAction) -> None:
    for name, parser in sub.choices.items():
        if name in EXAMPLES:
            parser.epilog = "example:\n  " + EXAMPLES[name].replace("\n", "\n  ")
            parser.formatter_class = argparse.RawDescriptionHelpFormatter


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"raycut {version('raycut')}"
    except PackageNotFoundError:
        return "raycut (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="raycut", description="CUT / FastCUT / SinCUT unpaired image translation on Ray.")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("config", help="print a run's fully resolved configuration as YAML (a valid --config file)")
    c.add_argument("action", choices=["show"])
    _add_config_options(c, "cut | fastcut | sincut | sincut-paper (default: the config file's preset:, else cut)")
    c.set_defaults(func=_cmd_config)

    d = sub.add_parser("demo", help="the whole pipeline on the embedded default (toy sim->real data)")
    d.add_argument("--out", default="raycut-demo", help="output folder (default: ./raycut-demo)")
    d.add_argument("--size", type=int, default=64, choices=[32, 64, 128], help="toy image size")
    d.add_argument("--steps", type=int, default=600, help="training steps")
    d.add_argument("--precision", default="auto", choices=list(typing.get_args(Precision)),
                   help="auto (default): bf16 only where this machine runs it natively and faster (measured), else fp32")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--n-train", type=int, default=200, help="toy training images per domain")
    d.set_defaults(func=_cmd_demo)

    t = sub.add_parser("toy-data", help="generate the toy sim->real dataset (CycleGAN layout + labels + paired truth)")
    t.add_argument("--out", required=True)
    t.add_argument("--size", type=int, default=128)
    t.add_argument("--n", type=int, default=200, help="training images per domain")
    t.add_argument("--n-test", type=int, default=40, help="test pairs")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=_cmd_toy_data)

    i = sub.add_parser("import-official", help="turn an official CUT latest_net_G.pth into a model directory")
    i.add_argument("--generator", required=True, help="path to latest_net_G.pth (read with weights_only=True)")
    i.add_argument("--preset", default="cut", choices=["cut", "fastcut"], help="the official ResNet G's training preset")
    i.add_argument("--out", required=True, help="model directory to write")
    i.set_defaults(func=_cmd_import_official)

    r = sub.add_parser(
        "train",
        help="train CUT / FastCUT with Ray Train (local Ray, or the cluster at RAY_ADDRESS), tracked in MLflow",
        description="Train on Ray Train; checkpoints in --storage-path, metrics and sample grids in MLflow "
        "(MLFLOW_TRACKING_URI, default ./mlflow.db). batch_size is per worker: global batch = batch_size x workers.",
    )
    _add_config_options(r, "cut | fastcut | sincut (one image per domain, official SinCUT) | sincut-paper (its appendix "
                        "recipe); default: the config file's preset:, else cut")
    r.add_argument("--dataroot", help="CUT's form: ROOT with trainA/ and trainB/ (sets --data-a and --data-b)")
    r.add_argument("--dry-run", action="store_true", help="print the resolved configuration (raycut config show) and stop")
    r.add_argument("--data-a", help="source domain: folder, glob, cyclegan:ROOT:trainA, gta5:ROOT, parquet:PATH[:COL], s3://...; "
                   "for sincut, one image file")
    r.add_argument("--data-b", help="target domain (same forms)")
    r.add_argument("--workers", type=int, default=1, help="data-parallel workers (DDP)")
    r.add_argument("--gpus-per-worker", type=float, default=0.0)
    r.add_argument("--cpus-per-worker", type=float,
                   help="CPUs (and torch threads) per worker (default: on a local Ray, the cores / --workers; 1 on a cluster)")
    length = r.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="total training steps")
    length.add_argument("--epochs", type=int, help="total epochs (default: n_epochs + n_epochs_decay of the config)")
    r.add_argument("--register", help="register the final model in the MLflow Model Registry under this name")
    r.add_argument("--resume", action="store_true", help="continue the latest run (or --name) from its last checkpoint")
    r.add_argument("--name", help="run name (default: <preset>-<date>-<time>)")
    r.add_argument("--storage-path", default=os.environ.get("RAYCUT_STORAGE_PATH", "raycut-runs"),
                   help="checkpoint storage: folder, NFS path or s3://bucket/prefix (default: $RAYCUT_STORAGE_PATH, "
                   "else ./raycut-runs)")
    r.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    r.add_argument("--keep-checkpoints", type=int, default=3, help="checkpoints kept (the newest)")
    r.add_argument("--log-every", type=int, default=20, help="steps between metric reports and progress lines")
    r.add_argument("--sample-every", type=int, default=500, help="steps between sample grids logged to MLflow")
    r.add_argument("--max-failures", type=int, default=3, help="worker-group restarts from the last checkpoint")
    r.add_argument("--experiment", default="raycut", help="MLflow experiment")
    r.add_argument("--placement", default="pack", choices=["pack", "spread", "strict-spread"],
                   help="how workers spread over nodes (strict-spread: one per node)")
    r.add_argument("--eval-every", type=int, default=0,
                   help="score G every N steps on a fixed validation subset (checkpoints follow; the best is kept, "
                   "marked and registered): toy colour error on toy data, else KID (needs --eval-data, --eval-real)")
    _add_validation_options(r, images=32)
    r.set_defaults(func=_cmd_train)

    u = sub.add_parser(
        "tune", help="search CUT's layer/negative settings with Ray Tune (ASHA), each trial a Ray Train run",
        description="Each trial is a `raycut train` run that reports an evaluation metric every --eval-every steps; "
        "ASHA stops the weak ones. MLflow: one parent run per search, one child run per trial. At the end: a results "
        "table (CSV + Parquet), the best config as YAML for `raycut train --config`, and with --register the best "
        "model under the alias champion.",
    )
    u.add_argument("--data-a", help="source domain (same forms as raycut train)")
    u.add_argument("--data-b", help="target domain")
    _add_config_options(u, "cut | fastcut (default: the config file's preset:, else cut); every trial starts from it")
    u.add_argument("--dataroot", help="CUT's form: ROOT with trainA/ and trainB/ (sets --data-a and --data-b)")
    u.add_argument("--dry-run", action="store_true", help="print the resolved base configuration and stop")
    u.add_argument("--space", help="YAML search space laid over the default (see jobs/tune/space.py)")
    u.add_argument("--samples", type=int, default=8, help="trials")
    u.add_argument("--max-concurrent", type=int, default=2, help="trials at once")
    u.add_argument("--metric", help="what ASHA and the ranking use (default: eval_colour_err on toy data, else eval_kid)")
    u.add_argument("--steps-per-trial", type=int, default=400)
    u.add_argument("--eval-every", type=int, help="steps between evaluations (default: steps-per-trial / 8)")
    u.add_argument("--grace-period", type=int, help="ASHA: steps before a trial may be stopped (default: eval-every)")
    u.add_argument("--reduction-factor", type=int, default=2, help="ASHA: keep the best 1/N at each rung")
    u.add_argument("--search", default="random", choices=["random", "optuna"],
                   help="random sampling, or Optuna's TPE (needs `pip install optuna`)")
    u.add_argument("--workers", type=int, default=1, help="Ray Train workers per trial")
    u.add_argument("--register", help="register the best trial's model under this name, with the alias champion")
    u.add_argument("--name", help="search name (default: tune-<preset>-<date>-<time>)")
    u.add_argument("--storage-path", default="raycut-tune", help="where Tune's state and the trials' checkpoints go")
    u.add_argument("--resume", action="store_true", help="continue the latest (or --name) interrupted search")
    u.add_argument("--seed", type=int, default=0)
    u.add_argument("--experiment", default="raycut-tune", help="MLflow experiment")
    _add_validation_options(u, images=16)
    u.set_defaults(func=_cmd_tune)

    tr = sub.add_parser("translate", help="translate a whole dataset at full resolution (resumable, manifest, labels kept)")
    tr.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/model, or a model dir")
    tr.add_argument("--input", required=True, help="any ingest source: folder, glob, cyclegan:ROOT:testA, gta5:ROOT, cityscapes:ROOT[:split], "
                    "parquet:PATH[:column], or any of these at s3:// or gs://")
    tr.add_argument("--output", required=True, help="output folder; mirrors the input tree, holds manifest/")
    tr.add_argument("--batch-size", type=int, default=4, help="images per actor call")
    tr.add_argument("--concurrency", help="G actors: N, or MIN-MAX for a pool that grows as nodes join "
                    "(default: 1-16 with --gpus-per-actor, else 1 using every core)")
    tr.add_argument("--gpus-per-actor", type=float, default=0.0)
    tr.add_argument("--precision", default="auto", choices=list(TRANSLATE_PRECISIONS),
                    help="auto (default): the fastest path each actor's device runs natively, measured (int8 on CPUs "
                    "with VNNI, bf16 where native, else fp32); int8: CPU actors, weights and activations quantized, "
                    "ranges calibrated once on the first inputs")
    tr.add_argument("--calibration-images", type=int, default=2, help="int8: how many of the first inputs set the ranges")
    tr.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"],
                    help="NHWC memory layout for G (auto: where the probe finds it faster)")
    tr.add_argument("--tile", type=int, default=0, help="translate in tiles of this size (multiple of 4; 0: whole image)")
    tr.add_argument("--overlap", type=int, default=32, help="tile overlap, blended linearly")
    tr.add_argument("--format", default="png", choices=["png", "jpg", "webp"],
                    help="png (lossless, the default), jpg (--jpeg-quality) or webp (lossless)")
    tr.add_argument("--png-level", type=int, default=1, help="PNG zlib level 0-9 (default 1: fast, lossless)")
    tr.add_argument("--jpeg-quality", type=int, default=95)
    tr.add_argument("--labels", help="label folder to copy alongside (mirrored like the images)")
    tr.add_argument("--link-labels", action="store_true", help="hard-link labels instead of copying")
    tr.set_defaults(func=_cmd_translate)

    e = sub.add_parser(
        "evaluate", help="FID/KID, label preservation, or the toy benchmark with its baselines",
        description="Score translations: --real/--fake for FID and KID (pytorch-fid's Inception weights from a local file, "
        "or any TorchScript extractor) and optional label preservation; --toy for the toy benchmark. Prints a table, "
        "writes JSON, and logs every metric into --run-id (or $MLFLOW_RUN_ID).",
    )
    e.add_argument("--real", help="real images (folder, glob, cyclegan:ROOT:testB, cityscapes:ROOT[:split], ...)")
    e.add_argument("--fake", help="translated images (a raycut translate output folder, or any source)")
    e.add_argument("--toy", help="toy dataset root: score --fake (its translated testA) against the paired truth")
    e.add_argument("--name", default="model", help="the translation's row name in the table")
    e.add_argument("--inception-weights", help="pt_inception-2015-12-05-6726825d.pth (default: ~/.cache/raycut/ "
                   "or $RAYCUT_CACHE, then torch hub's checkpoints folder)")
    e.add_argument("--feature-extractor", help="TorchScript file used instead of Inception (the report names it)")
    e.add_argument("--feature-size", type=int, default=299, help="input size of --feature-extractor")
    e.add_argument("--kid-subsets", type=int, default=100)
    e.add_argument("--kid-subset-size", type=int, default=1000, help="shrunk to the smaller set when needed")
    e.add_argument("--seg-model", help="TorchScript segmenter for label preservation (the paper: DRN-D-22 on Cityscapes)")
    e.add_argument("--labels", help="labels of the translated images' inputs (same relative paths and stems)")
    e.add_argument("--label-kind", default="cityscapes-ids", choices=["cityscapes-ids", "train-ids"],
                   help="label encoding: Cityscapes/GTA5 label ids, or the 19 train ids")
    e.add_argument("--seg-normalize", default="imagenet", choices=["imagenet", "unit", "symmetric"])
    e.add_argument("--seg-size", default="256x128", help="WIDTHxHEIGHT the segmenter scores at (the paper: 256x128)")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--concurrency", type=int, help="feature-extraction actors (default 1, using every core)")
    e.add_argument("--out", help="JSON report (default: FAKE/evaluation.json)")
    e.add_argument("--run-id", help="MLflow run to log the metrics into (default: $MLFLOW_RUN_ID)")
    e.set_defaults(func=_cmd_evaluate)

    sm = sub.add_parser(
        "submit", help="run any raycut command as a Ray job on a cluster (Job Submission API)",
        description="Uploads the working directory (minus .gitignore'd files) as the job's working_dir, installs the "
        "package's pip requirements (--no-pip on raycut's image) and forwards MLFLOW_TRACKING_URI and "
        "RAYCUT_STORAGE_PATH. Example: raycut submit --wait -- raycut train --data-a ... --data-b ...",
    )
    sm.add_argument("--address", help="the job server, e.g. http://127.0.0.1:8265 (default: $RAY_ADDRESS, else that)")
    sm.add_argument("--runtime-env", help="YAML runtime environment merged over raycut's (pip, env_vars, ...)")
    sm.add_argument("--wait", action="store_true", help="stream the logs and exit with the job's result")
    sm.add_argument("--no-pip", action="store_true", help="the cluster image already has raycut's requirements")
    sm.add_argument("--env", action="append", default=[], metavar="NAME",
                    help="also forward this environment variable (e.g. AWS_ACCESS_KEY_ID)")
    sm.add_argument("command", nargs=argparse.REMAINDER, help="-- raycut COMMAND [ARGS...]")
    sm.set_defaults(func=_cmd_submit)

    jb = sub.add_parser("jobs", help="list, inspect, follow and stop submitted jobs")
    jb.add_argument("action", choices=["list", "status", "logs", "stop"])
    jb.add_argument("job_id", nargs="?")
    jb.add_argument("--address", help="the job server (default: $RAY_ADDRESS, else http://127.0.0.1:8265)")
    jb.add_argument("--follow", action="store_true", help="logs: stream until the job ends")
    jb.set_defaults(func=_cmd_jobs)

    b = sub.add_parser("bench", help="benchmarks that print a table and write a JSON record")
    b.add_argument("which", choices=["train", "ingest", "translate"], help="what to measure")
    b.add_argument("--out", required=True, help="JSON file to write")
    b.add_argument("--device", default="cpu")
    b.add_argument("--crop", type=int, default=256)
    b.add_argument("--iters", type=int, default=5, help="train: timed rounds (each times every variant once)")
    b.add_argument("--warmup", type=int, default=1)
    b.add_argument("--presets", nargs="+", default=["cut", "fastcut"], choices=["cut", "fastcut", "sincut"])
    b.add_argument("--variants", nargs="+", default=None, help="fast paths to time (default: all but compile)")
    b.add_argument("--compile", action="store_true", help="also time torch.compile (adds about a minute of compile per preset)")
    b.add_argument("--ray", action="store_true",
                   help="train: time `raycut train` on Ray (1 and 2 workers) against the bare cut_core step")
    b.add_argument("--workers", type=int, default=2, help="ingest: worker processes / Ray CPUs")
    b.add_argument("--images", type=int, default=16, help="ingest: distinct frames per format (each read 24 times); "
                   "translate: frames per size (default 4)")
    b.add_argument("--precisions-translate", nargs="+", default=["auto"], choices=list(TRANSLATE_PRECISIONS),
                   help="translate: the precisions of the job rows")
    b.set_defaults(func=_cmd_bench)
    _with_examples(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RaycutError as e:
        print(f"raycut: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raycut: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
