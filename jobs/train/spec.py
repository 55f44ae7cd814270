"""What one training run is: the spec the driver writes as ``run.json`` and every
worker receives as its ``train_loop_config``. ``--resume`` reads it back, so a
resumed run has the same data, config and final step count as the original."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from cut_core import CUTConfig

SPEC_NAME = "run.json"


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
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 20
    sample_every: int = 500
    max_failures: int = 3
    tracking_uri: str = ""
    mlflow_run_id: str = ""
    register: str = ""
    samples: int = 4  # images in each sample grid
    # Evaluation during training (jobs/train/evaluation.py): every eval_every steps, 0 = off;
    # eval holds where the validation subset comes from, so --resume rebuilds it.
    eval_every: int = 0
    eval: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cut(self) -> CUTConfig:
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
        return cls(**{k: v for k, v in data.items() if k in known})
