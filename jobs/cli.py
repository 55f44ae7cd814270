"""The `raycut` command line. Each subcommand imports its work lazily so that
`raycut --help` is instant and commands that need no Ray never import it."""

from __future__ import annotations

import argparse
import os
import sys
import typing
from pathlib import Path

from cut_core.config import Precision
from cut_core.config import TRANSLATE_PRECISIONS
from cut_core.errors import RaycutError
from jobs.bench.quality import QUALITY_VARIANTS


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
    if args.n < 1 or args.n_test < 1 or args.n_val < 0:
        raise RaycutError("--n and --n-test must be at least 1, --n-val at least 0")
    root = write_toy_dataset(args.out, ToySpec(size=args.size, n_train=args.n, n_test=args.n_test, n_val=args.n_val,
                                               seed=args.seed, scene=args.scene))
    val = f", {args.n_val} val pairs" if args.n_val else ""
    print(f"wrote the toy sim->real dataset ({args.scene}) to {root} ({args.n} train images per domain, "
          f"{args.n_test} test pairs{val})")
    return 0


def _cmd_import_official(args: argparse.Namespace) -> int:
    from cut_core.model_dir import import_official_generator

    out = import_official_generator(args.generator, args.out, preset=args.preset)
    print(f"wrote model directory {out} (config.json + generator.safetensors)")
    return 0


def _data_args(args: argparse.Namespace) -> None:
    """``--dataroot ROOT``: the CycleGAN layout (ROOT/trainA, ROOT/trainB), as in CUT."""
    if getattr(args, "dataroot", None):
        root = Path(args.dataroot)
        local = "://" not in args.dataroot and root.is_dir()
        if local and not (root / "trainA").exists() and not (args.data_a and args.data_b):
            # The usual slip: the domain's own folder (toy/trainA) instead of the root above it.
            raise RaycutError(f"--dataroot {args.dataroot} holds no trainA/ folder; pass the folder above trainA/ and "
                              f"trainB/ (CUT's layout), or name each domain with --data-a and --data-b")
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


def _config_options(args: argparse.Namespace) -> dict:
    """--preset / --config / --set as the fields of TrainOptions and TuneOptions."""
    return {"preset": args.preset, "config_file": args.config, "sets": tuple(args.set)}


def _cmd_train(args: argparse.Namespace) -> int:
    from jobs.options import options_from
    from jobs.train.driver import run_train
    from jobs.train.spec import Schedule, TrainOptions, Validation

    _data_args(args)
    if _dry_run(args):
        return 0
    run_train(TrainOptions(**_config_options(args), **options_from(TrainOptions, args),
                           schedule=Schedule(**options_from(Schedule, args)),
                           validation=Validation(**options_from(Validation, args))))
    return 0


def _cmd_translate(args: argparse.Namespace) -> int:
    from jobs.options import options_from
    from jobs.translate.driver import run_translate
    from jobs.translate.spec import TranslateOptions

    summary = run_translate(TranslateOptions(**options_from(TranslateOptions, args)))
    return 1 if summary.failed else 0


def _cmd_tune(args: argparse.Namespace) -> int:
    # Concurrent trials print lines that differ only in numbers (their trial ids among
    # them), which Ray's log de-duplication folds into "[repeated 2x across cluster]":
    # one trial's warning would hide another's. Ray reads this when it is imported.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from jobs.options import options_from
    from jobs.train.spec import Validation
    from jobs.tune.driver import run_tune
    from jobs.tune.spec import TuneOptions

    _data_args(args)
    if _dry_run(args):
        return 0
    run_tune(TuneOptions(**_config_options(args), **options_from(TuneOptions, args),
                         validation=Validation(**options_from(Validation, args))))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from jobs.evaluate import EvaluateOptions, run_evaluate
    from jobs.options import options_from

    run_evaluate(EvaluateOptions(**options_from(EvaluateOptions, args)))
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    from jobs.submit import SubmitOptions, submit

    command = [c for c in args.command if c != "--"] if args.command[:1] == ["--"] else list(args.command)
    return submit(SubmitOptions(command=tuple(command), address=args.address, runtime_env=args.runtime_env,
                                wait=not args.no_wait, pip=not args.no_pip, env=tuple(args.env),
                                working_dir=args.working_dir))


def _cmd_jobs(args: argparse.Namespace) -> int:
    from jobs.submit import jobs_command

    return jobs_command(args.action, args.job_id, args.address, follow_logs=args.follow)


def _cmd_env(args: argparse.Namespace) -> int:
    from jobs.env import run_env

    return run_env(as_json=args.json, probe=not args.no_probe)


def _cmd_bench(args: argparse.Namespace) -> int:
    from jobs.bench.commands import run_bench

    return run_bench(args)


def _add_config_options(parser: argparse.ArgumentParser, preset_help: str) -> None:
    """--preset (or CUT's --CUT_mode), --config and --set: the run's configuration;
    --dataroot (CUT's data form) and --dry-run (print that configuration, stop)."""
    parser.add_argument("--preset", "--CUT_mode", dest="preset", type=_preset_arg, metavar="PRESET", help=preset_help)
    parser.add_argument("--config", help="YAML file of options (official CUT names; may name its preset:), applied over the preset")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one option, e.g. crop_size=512 or netG=resnet_6blocks (wins over --config)")
    parser.add_argument("--dataroot", help="CUT's form: ROOT with trainA/ and trainB/ (sets --data-a and --data-b)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved configuration (raycut config show) "
                        "and stop")


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
    "tune": "raycut tune --preset fastcut --config toy --dataroot toy --samples 8 --steps-per-trial 400 --register toy-best",
    "translate": "raycut translate --model models:/grumpy@latest --input gta5:/data/gta5 --output /data/gta5-real \\\n"
                 "    --labels /data/gta5/labels --gpus-per-actor 1 --concurrency 1-8",
    "evaluate": "raycut evaluate --toy toy --fake toy-real\n"
                "raycut evaluate --real cityscapes:/data/cityscapes:val --fake /data/gta5-real "
                "--inception-weights pt_inception-2015-12-05-6726825d.pth",
    "config": "raycut config show --preset fastcut --config toy --set crop_size=128 > run.yaml",
    "submit": "RAY_ADDRESS=http://127.0.0.1:8265 raycut submit -- raycut train --dataroot s3://bucket/toy --workers 4",
    "jobs": "raycut jobs list; raycut jobs logs JOB_ID --follow",
    "env": "raycut env              # paste it into a bug report\nraycut env --json --no-probe",
    "bench": "raycut bench train --out bench-train.json\nraycut bench translate --out bench-translate.json\nraycut bench quality --presets fastcut --out bench-quality.json",
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
    from jobs.options import add_options
    from jobs.train.spec import Schedule, TrainOptions, Validation
    from jobs.evaluate import EvaluateOptions
    from jobs.translate.spec import TranslateOptions
    from jobs.tune.spec import TUNE_EVAL_IMAGES, TuneOptions

    p = argparse.ArgumentParser(prog="raycut", description="CUT / FastCUT / SinCUT unpaired image translation on Ray.")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("config", help="print a run's fully resolved configuration as YAML (a valid --config file)")
    c.add_argument("action", choices=["show"])
    _add_config_options(c, "cut | fastcut | sincut | sincut-paper | cyclegan (default: the config file's preset:, else cut)")
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
    t.add_argument("--out", required=True, help="a new or empty folder, or an earlier toy dataset (replaced whole)")
    t.add_argument("--size", type=int, default=128)
    t.add_argument("--n", type=int, default=200, help="training images per domain")
    t.add_argument("--n-test", type=int, default=40, help="test pairs")
    t.add_argument("--n-val", type=int, default=16, help="val pairs (valA/valB): what train --eval-every scores "
                   "checkpoints on, so that testA only scores the chosen one")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--scene", default="street",
                   help="street (what raycut is developed on), coast (held out: no test trains on it) or aerial "
                   "(held out from the tests and from the choice of settings)")
    t.set_defaults(func=_cmd_toy_data)

    i = sub.add_parser("import-official", help="turn an official CUT latest_net_G.pth (or the CUT code's CycleGAN "
                       "latest_net_G_A.pth) into a model directory")
    i.add_argument("--generator", required=True, help="path to latest_net_G.pth or latest_net_G_A.pth (read with "
                   "weights_only=True)")
    i.add_argument("--preset", default="cut", choices=["cut", "fastcut", "cyclegan"],
                   help="the official ResNet G's training preset")
    i.add_argument("--out", required=True, help="model directory to write")
    i.set_defaults(func=_cmd_import_official)

    # The run commands: a configuration (preset, --config, --set) and their specs' fields.
    for name, func, help, description, preset_help, specs in (
        ("train", _cmd_train,
         "train CUT / FastCUT with Ray Train (local Ray, or the cluster at RAY_ADDRESS), tracked in MLflow",
         "Train on Ray Train; checkpoints in --storage-path, metrics and sample grids in MLflow "
         "(MLFLOW_TRACKING_URI, default ./mlflow.db). batch_size is per worker: global batch = batch_size x workers.",
         "cut | fastcut | sincut (one image per domain, official SinCUT) | sincut-paper (its appendix recipe) | "
         "cyclegan (the baseline to compare with); default: the config file's preset:, else cut",
         ((TrainOptions, {"storage_path": os.environ.get("RAYCUT_STORAGE_PATH", "raycut-runs")}), (Schedule, None),
          (Validation, None))),
        ("tune", _cmd_tune,
         "search CUT's layer/negative settings with Ray Tune (ASHA), each trial a Ray Train run",
         "Each trial is a `raycut train` run that reports an evaluation metric every --eval-every steps; ASHA stops "
         "the weak ones. MLflow: one parent run per search, one child run per trial. At the end: a results table "
         "(CSV + Parquet), the best config as YAML for `raycut train --config`, and with --register the best model "
         "under the alias champion.",
         "cut | fastcut (default: the config file's preset:, else cut); every trial starts from it",
         ((TuneOptions, None), (Validation, {"eval_images": TUNE_EVAL_IMAGES}))),
    ):
        command = sub.add_parser(name, help=help, description=description)
        _add_config_options(command, preset_help)
        for spec, defaults in specs:
            add_options(command, spec, defaults=defaults)
        command.set_defaults(func=func)

    # Commands whose options are exactly their spec's fields.
    for name, func, spec, help, description in (
        ("translate", _cmd_translate, TranslateOptions,
         "translate a whole dataset at full resolution (resumable, manifest, labels kept)", None),
        ("evaluate", _cmd_evaluate, EvaluateOptions,
         "FID/KID, label preservation, or the toy benchmark with its baselines",
         "Score translations: --real/--fake for FID and KID (pytorch-fid's Inception weights from a local file, or "
         "any TorchScript extractor) and optional label preservation; --toy for the toy benchmark. Prints a table, "
         "writes JSON, and logs every metric into --run-id (or $MLFLOW_RUN_ID)."),
    ):
        command = sub.add_parser(name, help=help, description=description)
        add_options(command, spec)
        command.set_defaults(func=func)

    sm = sub.add_parser(
        "submit", help="run any raycut command as a Ray job on a cluster (Job Submission API)",
        description="Ships raycut's code (Ray's py_modules) and its requirements from the installed package (neither "
        "with --no-pip, on raycut's image), forwards MLFLOW_TRACKING_URI and RAYCUT_STORAGE_PATH, then streams the "
        "job's logs until it ends. Example: raycut submit -- raycut train --data-a ... --data-b ...",
    )
    sm.add_argument("--address", help="the job server, e.g. http://127.0.0.1:8265 (default: $RAY_ADDRESS, else that)")
    sm.add_argument("--runtime-env", help="YAML runtime environment merged over raycut's (pip, env_vars, ...)")
    sm.add_argument("--no-wait", action="store_true", help="return once the job is submitted (default: stream its "
                    "logs and exit with its result, as `ray job submit` does)")
    sm.add_argument("--wait", action="store_true", help=argparse.SUPPRESS)  # the default; kept for old scripts
    sm.add_argument("--no-pip", action="store_true", help="the node image already has raycut and its requirements "
                    "(cluster/Dockerfile): ship neither")
    sm.add_argument("--working-dir", help="also upload this folder as the job's working directory (relative data "
                    "paths in the command resolve there)")
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

    e = sub.add_parser("env", help="what raycut sees on this machine: versions, devices, what auto picks and why, "
                       "where runs go")
    e.add_argument("--json", action="store_true", help="print it as JSON")
    e.add_argument("--no-probe", action="store_true", help="read the probe cache only; never time anything")
    e.set_defaults(func=_cmd_env)

    b = sub.add_parser("bench", help="benchmarks that print a table and write a JSON record")
    b.add_argument("which", choices=["train", "ingest", "translate", "quality", "checkpoint-choice"],
                   help="what to measure")
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
    b.add_argument("--config", default="toy", help="quality: the config file the variants start from")
    b.add_argument("--size", type=int, default=32, help="quality: toy image size")
    b.add_argument("--steps", type=int, default=300, help="quality: training steps per run")
    b.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="quality: seeds per variant")
    b.add_argument("--scene", default="street", help="quality: the toy pair to train and score on: street, coast or "
                   "aerial (the held-out pairs)")
    b.add_argument("--eval-every", type=int, default=None, metavar="N",
                   help="quality: also score each run's best checkpoint on the toy val pair, chosen every N steps as "
                   "`raycut train --eval-every` does (default: a sixth of --steps; 0: the last step only)")
    b.add_argument("--threads", type=int, default=1,
                   help="quality: torch threads per run, as many runs at a time as fit the cores (a seed trained on "
                   "another count is another draw of it: the kernels' sums run in another order)")
    b.add_argument("--val-metric", default="colour_err", choices=["colour_err", "kid"],
                   help="quality: what scores the val pair, picks the best checkpoint and drives lr_plateau_patience: "
                   "the paired truth's colour error, or KID as on your data (against trainB, in the toy segmenter's "
                   "features; the val colour error is logged beside it)")
    b.add_argument("--kid-pool", type=int, default=0, metavar="N",
                   help="quality: a checkpoint study: record every evaluated checkpoint's test scores and the KID "
                   "features of N val translations and N held-out reals (an .npz per run beside the runs log), for "
                   "`raycut bench checkpoint-choice`")
    b.add_argument("--runs", nargs="+", default=None, metavar="RUNS_JSONL",
                   help="checkpoint-choice: the runs logs of `raycut bench quality --kid-pool N` to replay")
    b.add_argument("--sizes", nargs="+", type=int, default=[16, 32, 64, 128],
                   help="checkpoint-choice: val images per val set")
    b.add_argument("--draws", type=int, default=200, help="checkpoint-choice: val sets drawn per size")
    b.add_argument("--reversed", action="store_true",
                   help="checkpoint-choice: also replay each run's checkpoints in reverse order (a run that got "
                   "worse as it went on)")
    b.add_argument("--quality-variants", nargs="+", default=None, metavar="VARIANT",
                   help=f"quality: {', '.join(QUALITY_VARIANTS)} (cyclegan for the time of --steps steps of the "
                   "first other variant, or of the preset as configured; default: all), or your own as "
                   "NAME:KEY=VALUE[:KEY=VALUE...], e.g. nce2:lambda_NCE=2")
    b.set_defaults(func=_cmd_bench)
    _with_examples(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """The ``raycut`` command. Run as the command (``argv`` from ``sys.argv``) it also
    keeps Ray's noise off the console (jobs.console); a caller that passes ``argv``
    keeps its own streams."""
    args = build_parser().parse_args(argv)
    if argv is None:
        from jobs.console import filter_stderr

        filter_stderr()
    try:
        return args.func(args)
    except RaycutError as e:
        print(f"raycut: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        # A command may say what the interrupt kept and how to go on (raycut train does).
        print("raycut: interrupted" + (f": {e}" if str(e) else ""), file=sys.stderr)
        return 130
    except OSError as e:
        # A full disk met where no command expected it (the commands name their own
        # folders where they can): one line, not pyarrow's or PIL's traceback.
        from jobs.disk import describe_room, is_disk_full

        if not is_disk_full(e):
            raise
        where = f" under {describe_room(os.path.dirname(os.path.abspath(e.filename)))}" if e.filename else ""
        print(f"raycut: error: a disk is full{where} ({e}); free space and run the same command again", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
