"""What one training run is. TrainOptions: what the user asked for (the command line
is derived from its fields). TrainJob: the planned run, the spec the driver writes as ``run.json`` and every
worker receives as its ``train_loop_config``. ``--resume`` reads it back, so a
resumed run has the same data, config and final step count as the original."""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from cut_core import CUTConfig
from jobs.options import opt

SPEC_NAME = "run.json"
PLACEMENTS = {"pack": "PACK", "spread": "SPREAD", "strict-spread": "STRICT_SPREAD"}  # Ray placement strategies


@dataclass(frozen=True)
class Schedule:
    """When a run reports, checkpoints, samples and restarts."""

    checkpoint_every: int = opt(500, "steps between checkpoints")
    keep_checkpoints: int = opt(3, "checkpoints kept (the newest)")
    log_every: int = opt(20, "steps between metric reports and progress lines")
    sample_every: int = opt(500, "steps between sample grids logged to MLflow")
    max_failures: int = opt(3, "worker-group restarts from the last checkpoint")


@dataclass(frozen=True)
class Validation:
    """Where evaluation during training (train --eval-every, every tune trial) gets its data."""

    eval_data: str | None = opt(None, "held-out A images (default: the toy valA beside --data-a, else its testA)")
    eval_real: str | None = opt(None, "held-out B images: KID's reference set (non-toy data)")
    eval_images: int = opt(32, "validation images per evaluation")
    inception_weights: str | None = opt(None, "pt_inception-2015-12-05-6726825d.pth for KID (see raycut evaluate --help)")
    feature_extractor: str | None = opt(None, "TorchScript feature extractor for KID instead of Inception")


@dataclass(frozen=True)
class TrainJob:
    config: dict[str, Any]  # CUTConfig.to_dict(): plain data at the Ray boundary
    data_a: str
    data_b: str
    name: str  # Ray Train run name: <storage_path>/<name>/
    storage_path: str
    steps: int  # planned total, the same across restarts and --resume
    steps_per_epoch: int
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    schedule: Schedule = field(default_factory=Schedule)
    tracking_uri: str = ""
    mlflow_run_id: str = ""
    register: str = ""
    register_raw_g: bool = False  # the model directory holds the raw G even when its EMA is kept
    samples: int = 4  # images in each sample grid
    # Evaluation during training (jobs/train/evaluation.py): every eval_every steps, 0 = off;
    # eval holds where the validation subset comes from, so --resume rebuilds it.
    eval_every: int = 0
    eval: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    step_lines: bool = True  # the lead worker's progress line (a Tune trial's is the search's)
    console_label: str = "train"  # the worker's lines start [train]; a Tune trial's name its trial

    @functools.cached_property
    def cut(self) -> CUTConfig:
        """The typed config, rebuilt and checked once per process (``config`` is the
        plain data that crosses the Ray boundary)."""
        return CUTConfig.from_dict(self.config)

    @property
    def batch_per_worker(self) -> int:
        return int(self.config["optim"]["batch_size"])

    @property
    def global_batch(self) -> int:
        return self.batch_per_worker * self.workers

    @property
    def run_dir(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.name}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainJob:
        known = {f.name for f in fields(cls)}
        schedule = data.get("schedule") or {k: data[k] for k in Schedule.__dataclass_fields__ if k in data}
        return cls(**{k: v for k, v in data.items() if k in known and k != "schedule"}, schedule=Schedule(**schedule))


@dataclass(frozen=True)
class TrainOptions:
    """Everything ``raycut train`` takes; the command line is derived from the ``opt``
    fields here and in Schedule and Validation (jobs.options)."""

    preset: str | None = None  # --preset / --config / --set: jobs.config_file.resolve_config
    config_file: str | None = None
    sets: tuple[str, ...] = ()
    # Typed values over the resolved config, after --set (a Tune trial's sampled values,
    # a benchmark's settings): applied with CUTConfig.with_overrides, never through text.
    overrides: Mapping[str, Any] = field(default_factory=dict)
    data_a: str = opt("", "source domain: folder, glob, cyclegan:ROOT:trainA, gta5:ROOT, parquet:PATH[:COL], "
                      "s3://...; for sincut, one image file")
    data_b: str = opt("", "target domain (same forms)")
    workers: int = opt(1, "data-parallel workers (DDP)")
    gpus_per_worker: float = opt(0.0, "GPUs per worker")
    cpus_per_worker: float | None = opt(None, "CPUs (and torch threads) per worker (default: on a local Ray, the "
                                        "cores this process may use / --workers, at most OMP_NUM_THREADS; 1 on a "
                                        "cluster)")
    steps: int | None = opt(None, "total training steps (the LR schedule's n_epochs + n_epochs_decay are fitted to "
                            "them, keeping its shape)", group="length")
    epochs: int | None = opt(None, "total epochs (default: n_epochs + n_epochs_decay of the config; the LR schedule "
                             "is fitted to them, keeping its shape)", group="length")
    register: str = opt("", "register the final model in the MLflow Model Registry under this name")
    register_raw_g: bool = opt(False, "when an EMA of G is kept (the cut preset's default, or --set ema_decay=...): save "
                               "and register the raw G, not its moving average "
                               "(evaluation and samples still use the average)")
    resume: bool = opt(False, "continue the latest run (or --name) from its last checkpoint")
    name: str | None = opt(None, "run name (default: <preset>-<date>-<time>)")
    storage_path: str = opt("raycut-runs", "checkpoint storage: folder, NFS path or s3://bucket/prefix "
                            "($RAYCUT_STORAGE_PATH sets the default)")
    experiment: str = opt("raycut", "MLflow experiment")
    placement: str = opt("pack", "how workers spread over nodes (strict-spread: one per node)",
                         choices=list(PLACEMENTS))
    data_cpus: float | None = opt(None, "logical CPUs for the Ray Data feed on a local Ray (default: what the "
                                  "trainers leave)")
    data_actors: str | None = opt(None, "decode actors per domain: N, or MIN-MAX for a pool that grows as CPU nodes "
                                  "join (default: on a cluster 1-16; on a local Ray one per 4 spare CPUs)")
    eval_every: int = opt(0, "score G every N steps on a fixed validation subset (checkpoints follow; the best is "
                          "kept, marked and registered): toy colour error on toy data, else KID (needs --eval-data, "
                          "--eval-real)")
    schedule: Schedule = field(default_factory=Schedule)
    validation: Validation = field(default_factory=Validation)
    parent_run_id: str = ""  # MLflow parent run (a Tune search): this run becomes its child
    # A Tune trial prints no progress line of its own: the search prints one for every
    # trial (jobs.tune.progress), where concurrent trials' lines would interleave; its
    # other lines (start, fast paths, warnings) say which trial they come from.
    step_lines: bool = True
    console_label: str = "train"
