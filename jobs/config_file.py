"""A run's CUTConfig from preset + YAML file + ``--set`` overrides (in that order)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from cut_core import CUTConfig, parse_overrides
from cut_core.errors import ConfigError


def resolve_config(preset: str, config_file: str | Path | None = None, sets: list[str] | None = None) -> CUTConfig:
    """YAML may use flat official names (``crop_size: 512``), sections
    (``loss: {nce_T: 0.05}``) or dotted keys; ``--set`` wins over the file."""
    cfg = CUTConfig.from_preset(preset)
    if config_file:
        cfg = cfg.with_overrides(_flatten(_read_yaml(Path(config_file))))
    if sets:
        cfg = cfg.with_overrides(parse_overrides(sets))
    return cfg


def _read_yaml(path: Path) -> Mapping[str, Any]:
    import yaml

    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value, not {type(data).__name__}")
    return data


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        elif key == "preset" and not prefix:
            continue  # the preset is chosen by --preset
        else:
            out[name] = ",".join(map(str, value)) if isinstance(value, list) else value
    return out
