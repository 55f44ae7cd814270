"""A run's CUTConfig from preset + YAML file + ``--set`` overrides (in that order), and
its printable form (``raycut config show``).

The preset may come from ``--preset`` (or the official ``--CUT_mode``), or from the
file's ``preset:`` key; CUT's own option names and values are taken as CUT users write
them (cut_core.config.official_names).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from cut_core import CUTConfig, parse_overrides
from cut_core.config import official_names
from cut_core.errors import ConfigError

DEFAULT_PRESET = "cut"
# The official --CUT_mode values, and raycut's preset names, to a preset.
CUT_MODES = {"cut": "cut", "fastcut": "fastcut", "sincut": "sincut", "sincut-paper": "sincut-paper",
             "cyclegan": "cyclegan", "cycle_gan": "cyclegan"}


def preset_name(value: str) -> str:
    """``CUT``, ``FastCUT``, ``fastcut`` ... -> a raycut preset; one line otherwise."""
    name = CUT_MODES.get(str(value).lower())
    if name is None:
        raise ConfigError(f"unknown preset or CUT_mode {value!r}; choose one of CUT, FastCUT, SinCUT, sincut-paper, cyclegan")
    return name


@dataclass(frozen=True)
class ResolvedConfig:
    """The config and where each value that differs from its preset came from."""

    config: CUTConfig
    preset_from: str  # "--preset", "the config file", "--set" or "default"
    sources: dict[str, str] = field(default_factory=dict)  # flat key -> "config file" | "--set" | overrides_from


def resolve_config(preset: str | None, config_file: str | Path | None = None, sets: list[str] | None = None,
                   overrides: Mapping[str, Any] | None = None) -> CUTConfig:
    """YAML may use flat official names (``crop_size: 512``), sections
    (``loss: {nce_T: 0.05}``) or dotted keys; ``--set`` wins over the file, typed
    ``overrides`` over both."""
    return resolve_with_sources(preset, config_file, sets, overrides).config


def resolve_with_sources(preset: str | None, config_file: str | Path | None = None,
                         sets: list[str] | None = None, overrides: Mapping[str, Any] | None = None,
                         overrides_from: str = "overrides") -> ResolvedConfig:
    """The preset, then the config file, then --set, then typed ``overrides`` (a Tune
    trial's values, named ``overrides_from`` in the sources)."""
    from_file = _flatten(_read_yaml(config_path(config_file))) if config_file else {}
    from_sets = dict(parse_overrides(sets or []))
    named = {where: preset_name(values.pop(key)) for where, values in (("the config file", from_file), ("--set", from_sets))
             for key in ("preset", "CUT_mode") if key in values}
    chosen, chosen_from = (preset_name(preset), "--preset") if preset else (DEFAULT_PRESET, "default")
    for where, name in named.items():
        if preset and name != chosen:
            raise ConfigError(f"{where} names preset {name} but --preset says {chosen}; keep one of the two")
        if not preset:
            chosen, chosen_from = name, where
    cfg = CUTConfig.from_preset(chosen)
    sources: dict[str, str] = {}
    for where, values in (("config file", from_file), ("--set", from_sets)):
        sources.update({key.rpartition(".")[2]: where for key in official_names(values)})
    # One application of file then --set values (a --set key replaces the file's, in either
    # spelling), so checks across fields see the final values, not a half-applied file.
    overridden = {key.rpartition(".")[2] for key in from_sets}
    merged = {k: v for k, v in from_file.items() if k.rpartition(".")[2] not in overridden} | from_sets
    if merged:
        cfg = cfg.with_overrides(merged)
    if overrides:
        cfg = cfg.with_overrides(overrides)
        sources.update({key.rpartition(".")[2]: overrides_from for key in official_names(overrides)})
    return ResolvedConfig(cfg, chosen_from, sources)


def show_config(resolved: ResolvedConfig) -> str:
    """The resolved config as YAML that ``--config`` takes back, sections as in
    cut_core.config; each value that is not the preset's says where it came from."""
    import yaml

    cfg = resolved.config
    base = CUTConfig.from_preset(cfg.preset).flat()
    lines = [f"# raycut config: preset {cfg.preset} (from {resolved.preset_from}), then the config file, then --set",
             f"preset: {cfg.preset}", f"seed: {cfg.seed}" + _why("seed", cfg.seed, base, resolved.sources)]
    for section, values in cfg.to_dict().items():
        if not isinstance(values, dict):
            continue
        lines.append(f"{section}:")
        for key, value in values.items():
            shown = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
            text = yaml.safe_dump({key: shown}, default_flow_style=True).strip()[1:-1]
            note = _why(key, value, base, resolved.sources)
            if key == "n_layers_D" and value == "auto" and cfg.model.netD == "basic":
                note += f"  # here: {cfg.d_layers} at {cfg.data.crop_size} px crops"  # what auto settles to
            lines.append(f"  {text}{note}")
    return "\n".join(lines) + "\n"


def _why(key: str, value: Any, base: Mapping[str, Any], sources: Mapping[str, str]) -> str:
    default = base.get(key)
    if isinstance(default, tuple):
        default = list(default)
    if (list(value) if isinstance(value, tuple) else value) == default:
        return ""
    return f"  # {sources.get(key, 'derived')} (preset: {','.join(map(str, default)) if isinstance(default, list) else default})"


BUILTIN_CONFIGS = Path(__file__).with_name("configs")  # shipped with the package: --config NAME


def builtin_configs() -> list[str]:
    return sorted(p.stem for p in BUILTIN_CONFIGS.glob("*.yaml"))


def config_path(config_file: str | Path) -> Path:
    """A YAML path, or the name of a built-in config (``toy``) when no such file exists.

    Only a file shadows a built-in name: the README makes a ``toy/`` dataset folder and
    then trains with ``--config toy`` from the same directory."""
    path = Path(config_file)
    if not path.is_file() and path.suffix == "" and (BUILTIN_CONFIGS / f"{path.name}.yaml").is_file():
        return BUILTIN_CONFIGS / f"{path.name}.yaml"
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder; pass a YAML file (built-in configs by name: "
                          f"{', '.join(builtin_configs())})")
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist (built-in configs by name: {', '.join(builtin_configs())})")
    return path


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
        else:
            out[name] = ",".join(map(str, value)) if isinstance(value, list) else value
    return out
