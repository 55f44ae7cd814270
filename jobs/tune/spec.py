"""What one search is: TuneOptions, written as ``tune.json`` and handed to every trial;
the ``raycut tune`` command line is derived from its fields (jobs.options)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobs.options import opt
from jobs.train.spec import Validation

TUNE_EVAL_IMAGES = 16  # a trial evaluates often: fewer images than a single run's 32


@dataclass(frozen=True)
class TuneOptions:
    """Everything ``raycut tune`` takes; its command line is derived from the ``opt``
    fields (jobs.options)."""

    preset: str | None = None  # the base config: --preset / --config / --set, applied to every trial
    config_file: str | None = None
    sets: tuple[str, ...] = ()
    data_a: str = opt("", "source domain (same forms as raycut train)")
    data_b: str = opt("", "target domain")
    space: str | None = opt(None, "YAML search space laid over the default (see jobs/tune/space.py)")
    samples: int = opt(8, "trials")
    max_concurrent: int = opt(2, "trials at once")
    metric: str | None = opt(None, "what ASHA and the ranking use (default: eval_colour_err on toy data, else eval_kid)")
    steps_per_trial: int = opt(400, "training steps of each trial")
    eval_every: int | None = opt(None, "steps between evaluations (default: steps-per-trial / 8)")
    grace_period: int | None = opt(None, "ASHA: steps before a trial may be stopped (default: eval-every)")
    reduction_factor: int = opt(2, "ASHA: keep the best 1/N at each rung")
    search: str = opt("random", "random sampling, or Optuna's TPE (needs `pip install optuna`)",
                      choices=["random", "optuna"])
    workers: int = opt(1, "Ray Train workers per trial")
    register: str = opt("", "register the best trial's model under this name, with the alias champion")
    name: str | None = opt(None, "search name (default: tune-<preset>-<date>-<time>)")
    storage_path: str = opt("raycut-tune", "where Tune's state and the trials' checkpoints go")
    resume: bool = opt(False, "continue the latest (or --name) interrupted search")
    seed: int = opt(0, "seed of the search (and of Optuna)")
    experiment: str = opt("raycut-tune", "MLflow experiment")
    validation: Validation = field(default_factory=lambda: Validation(eval_images=TUNE_EVAL_IMAGES))
    # Filled in by the driver before the trials start (so every trial, and a resumed
    # search, sees the same values):
    parent_run_id: str = ""
    tracking_uri: str = ""
    cpus_per_worker: float = 1.0
    data_cpus: float = 1.0
    space_resolved: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TuneOptions:
        """From ``tune.json`` (or a trial's spec): the nested validation made typed again."""
        data = dict(data)
        v = data.pop("validation", None) or {k: data.pop(k) for k in list(data) if k in Validation.__dataclass_fields__}
        return cls(**{**data, "sets": tuple(data.get("sets", ()))}, validation=Validation(**v))
