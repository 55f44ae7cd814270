"""The model directory: the one place where cut_core touches files.

Layout (format version 1)::

    MODEL_DIR/
      config.json              {"format": "raycut-generator", "format_version": 1,
                                "architecture": "resnet_generator" | "stylegan2_generator",
                                "model": {...ModelConfig},
                                "normalization": {...}, "training": {...resolved CUTConfig or null}}
      generator.safetensors    G's state dict, official key names (model.1.weight ...)

Nothing here unpickles: weights are safetensors, config is JSON, and an official
``latest_net_G.pth`` is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cut_core.config import FORMAT_VERSION, CUTConfig, ModelConfig
from cut_core.errors import ConfigError, ModelDirError
from cut_core.networks import Generator, build_generator

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "generator.safetensors"
FORMAT_NAME = "raycut-generator"
# ModelConfig.netG -> the architecture name a model directory records, so a reader
# knows what it holds before it builds anything.
ARCHITECTURES = {"resnet": "resnet_generator", "stylegan2": "stylegan2_generator"}

# What G consumes and produces, for whoever feeds it images.
NORMALIZATION = {
    "input_range": [-1.0, 1.0],
    "output_range": [-1.0, 1.0],
    "from_uint8": "x / 127.5 - 1",
    "to_uint8": "round((y + 1) * 127.5)",
    "layout": "NCHW, RGB",
    "size_multiple": 4,
}


def save_generator(
    generator: Generator,
    path: str | Path,
    *,
    model_config: ModelConfig,
    training_config: CUTConfig | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``config.json`` + ``generator.safetensors`` into ``path`` (created if needed)."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in generator.state_dict().items()}
    save_file(state, str(out / WEIGHTS_NAME), metadata={"format": FORMAT_NAME})
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "architecture": ARCHITECTURES[model_config.netG],
        "model": asdict(model_config),
        "normalization": NORMALIZATION,
        "training": training_config.to_dict() if training_config is not None else None,
        **(extra or {}),
    }
    (out / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def load_generator(path: str | Path, *, device: torch.device | str = "cpu") -> Generator:
    """Load a model directory as an eval-mode G: (B, 3, H, W) in [-1, 1] -> same."""
    root = Path(path)
    if not root.is_dir():
        raise ModelDirError(f"model directory {root} does not exist; pass a directory holding {CONFIG_NAME} and {WEIGHTS_NAME}")
    meta = read_model_config(root)
    weights = root / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelDirError(f"{weights} is missing; the model directory needs {WEIGHTS_NAME} beside {CONFIG_NAME}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise ModelDirError(f"{weights} is not a readable safetensors file ({e}); re-export the model") from None
    cfg = _model_config(meta["model"], root / CONFIG_NAME)
    if ARCHITECTURES[cfg.netG] != meta["architecture"]:
        raise ModelDirError(f"{root / CONFIG_NAME}: architecture {meta['architecture']!r} does not match netG={cfg.netG!r}")
    generator = build_generator(cfg)
    _load_state(generator, state, source=str(weights))
    return generator.to(device).eval()


def model_digest(path: str | Path) -> str:
    """What identifies the function a model directory computes: a SHA-256 of G's
    weights file and of the config sections that build and feed G (architecture, model,
    normalization), 16 hex digits. The training record and other metadata are left
    out: they change nothing G computes. ~0.1 s for a full-size G's 45 MB."""
    root = Path(path)
    meta = read_model_config(root)
    digest = hashlib.sha256()
    digest.update(json.dumps({k: meta.get(k) for k in ("architecture", "model", "normalization")},
                             sort_keys=True).encode())
    with open(root / WEIGHTS_NAME, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def read_model_config(path: str | Path) -> dict[str, Any]:
    """The parsed and checked ``config.json`` of a model directory."""
    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        raise ModelDirError(f"{file} is missing; is {Path(path)} a raycut model directory?")
    try:
        meta = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelDirError(f"{file} is not valid JSON ({e}); restore it from the run's artifacts") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ModelDirError(f"{file} is not a raycut generator config (no \"format\": \"{FORMAT_NAME}\")")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelDirError(
            f"{file} has format_version {version!r}; this raycut reads version {FORMAT_VERSION}: upgrade raycut or re-export"
        )
    if meta.get("architecture") not in ARCHITECTURES.values():
        raise ModelDirError(f"{file} describes architecture {meta.get('architecture')!r}; raycut loads "
                            f"{' or '.join(map(repr, ARCHITECTURES.values()))}")
    return meta


def import_official_generator(checkpoint: str | Path, out: str | Path, *, preset: str = "cut") -> Path:
    """Turn an official CUT/CycleGAN ``latest_net_G.pth`` (ResnetGenerator with
    anti-aliasing, instance norm) into a raycut model directory.

    ngf and n_blocks are read off the tensors; the preset only fills the training
    section of the config. The file is read with ``weights_only=True``.
    """
    src = Path(checkpoint)
    if not src.is_file():
        raise ModelDirError(f"checkpoint {src} does not exist; pass the path of an official latest_net_G.pth")
    try:
        state = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelDirError(
            f"cannot read {src} as a weights-only PyTorch checkpoint ({first}); "
            "raycut never unpickles objects, so pass a plain state dict"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelDirError(f"{src} does not hold a state dict of tensors; pass the official latest_net_G.pth")
    # DataParallel-saved files prefix every key with 'module.'.
    state = {k.removeprefix("module."): v for k, v in state.items()}
    cfg = _infer_model_config(state, src)
    generator = build_generator(cfg)
    _load_state(generator, state, source=str(src))
    try:
        training = CUTConfig.from_preset(preset)
    except ConfigError as e:
        raise ModelDirError(str(e)) from None
    training = training.with_overrides({"ngf": cfg.ngf, "n_blocks": cfg.n_blocks})
    return save_generator(generator, out, model_config=cfg, training_config=training, extra={"imported_from": src.name})


_BLOCK_KEY = re.compile(r"^model\.(\d+)\.conv_block\.1\.weight$")


def _infer_model_config(state: dict[str, torch.Tensor], src: Path) -> ModelConfig:
    stem = state.get("model.1.weight")
    if stem is None or stem.ndim != 4 or tuple(stem.shape[2:]) != (7, 7):
        raise ModelDirError(
            f"{src} is not a CUT ResnetGenerator checkpoint (no 7x7 'model.1.weight'); "
            "raycut imports the official resnet_9blocks/resnet_6blocks generator (netG), not U-Net or StyleGAN2"
        )
    n_blocks = sum(1 for k in state if _BLOCK_KEY.match(k))
    if "model.7.filt" not in state:
        raise ModelDirError(
            f"{src} is a generator without anti-aliased sampling (--no_antialias); "
            "raycut imports the default CUT generator with anti-aliasing"
        )
    out_nc = state.get(f"model.{n_blocks + 21}.weight")
    try:
        return ModelConfig(ngf=int(stem.shape[0]), input_nc=int(stem.shape[1]), n_blocks=n_blocks,
                           output_nc=int(out_nc.shape[0]) if out_nc is not None else 3)
    except ConfigError as e:
        raise ModelDirError(f"{src}: {e}") from None


def _load_state(generator: Generator, state: dict[str, torch.Tensor], *, source: str) -> None:
    expected = generator.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise ModelDirError(f"{source} does not match the {type(generator).__name__} architecture ({detail}); it was saved for another architecture")
    for k, v in expected.items():
        if v.shape != state[k].shape:
            raise ModelDirError(
                f"{source}: tensor {k} has shape {tuple(state[k].shape)}, the architecture expects {tuple(v.shape)}"
            )
    generator.load_state_dict(state)


def _model_config(data: Any, file: Path) -> ModelConfig:
    try:
        return ModelConfig(**data)
    except (TypeError, ConfigError) as e:
        raise ModelDirError(f"{file}: bad \"model\" section ({e})") from None
