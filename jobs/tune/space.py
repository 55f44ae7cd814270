"""The search space of ``raycut tune``: the paper's knobs, and the YAML that changes them.

A space maps option names (the official ones ``raycut train --set`` takes, plus
``negatives``, which names the negative source) to a domain:

    nce_layers: {choice: ["0,4,8,12,16", "0,8,16"]}     one of these values
    nce_T: {loguniform: [0.03, 0.3]}                   log-uniform between
    lambda_NCE: {uniform: [1, 10]}                     uniform between
    num_patches: {grid: [64, 256]}                     every value (a grid axis)
    nce_idt: false                                     fixed for every trial
    flip_equivariance: null                            not searched: the preset's value

A user's YAML is laid over the default space key by key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from cut_core.config import NEGATIVE_SOURCES
from cut_core.errors import ConfigError

# The paper's ablations (Sec. 4, Table 3 and Fig. 5): which layers, how many patches,
# the temperature, the NCE weight, internal vs external negatives, identity NCE, flips.
DEFAULT_SPACE: dict[str, Any] = {
    "nce_layers": {"choice": ["0,4,8,12,16", "0,4,8,12", "4,8,12,16", "0,8,16", "8,12,16", "16"]},
    "num_patches": {"choice": [32, 64, 128, 256, 512]},
    "nce_T": {"loguniform": [0.03, 0.3]},
    "lambda_NCE": {"loguniform": [0.5, 10.0]},
    "negatives": {"choice": list(NEGATIVE_SOURCES)},
    "nce_idt": {"choice": [True, False]},
    "flip_equivariance": {"choice": [True, False]},
}
DOMAINS = ("choice", "grid", "uniform", "loguniform", "randint")


def load_space(path: str | Path | None) -> dict[str, Any]:
    """The default space with a user's YAML laid over it (``null`` drops a key)."""
    space = dict(DEFAULT_SPACE)
    if path:
        import yaml

        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"--space {path} does not exist")
        try:
            user = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"--space {path} is not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(user, dict):
            raise ConfigError(f"--space {path} must map option names to domains")
        for key, value in user.items():
            if value is None:
                space.pop(key, None)
            else:
                space[key] = value
    for key, value in space.items():
        _check_domain(key, value)
    return space


def _check_domain(key: str, value: Any) -> None:
    if not isinstance(value, Mapping):
        return  # a fixed value
    if len(value) != 1 or next(iter(value)) not in DOMAINS:
        raise ConfigError(f"search space {key}: give one of {', '.join(DOMAINS)} (e.g. {{choice: [a, b]}}), not {dict(value)}")
    kind, args = next(iter(value.items()))
    if not isinstance(args, list) or not args:
        raise ConfigError(f"search space {key}: {kind} needs a list of values")
    if kind in ("uniform", "loguniform", "randint") and (len(args) != 2 or not args[0] < args[1]):
        raise ConfigError(f"search space {key}: {kind} needs [low, high] with low < high")
    if kind == "loguniform" and args[0] <= 0:
        raise ConfigError(f"search space {key}: loguniform needs a positive low bound")
    if key == "negatives" and kind in ("choice", "grid") and not set(args) <= set(NEGATIVE_SOURCES):
        raise ConfigError(f"search space negatives: values must be among {', '.join(NEGATIVE_SOURCES)}")


def to_tune(space: Mapping[str, Any]) -> dict[str, Any]:
    """Ray Tune's param_space for a checked space."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, value in space.items():
        if not isinstance(value, Mapping):
            out[key] = value
            continue
        kind, args = next(iter(value.items()))
        out[key] = {
            "choice": lambda a: tune.choice(a),
            "grid": lambda a: tune.grid_search(a),
            "uniform": lambda a: tune.uniform(*a),
            "loguniform": lambda a: tune.loguniform(*a),
            "randint": lambda a: tune.randint(*a),
        }[kind](args)
    return out


def overrides(trial_config: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's sampled values as config overrides (``negatives`` expanded)."""
    out: dict[str, Any] = {}
    for key, value in trial_config.items():
        if key == "negatives":
            out.update(NEGATIVE_SOURCES[value])
        else:
            out[key] = value
    return out
