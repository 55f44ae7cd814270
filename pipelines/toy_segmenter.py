"""The toy benchmark's judge of label preservation: a small segmenter trained on the
real-style renders (trainB) with their labels, then run on translations.

As in the paper's Cityscapes protocol, a translation keeps its labels when a
segmenter that knows only real images reads the right classes from it. The net is
small (4 conv layers, ~20k parameters) and trains in seconds to a minute on a CPU;
it is cached beside the dataset, keyed by everything that decides its weights.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from pipelines.local_images import list_images, load_folder, read_rgb
from pipelines.toy_data import CLASSES

CACHE_NAME = ".raycut-toy-segmenter"  # inside the toy dataset's folder


@dataclass(frozen=True)
class ToySegmenterConfig:
    width: int = 24
    steps: int = 300
    batch_size: int = 8
    crop: int = 32  # random crops: enough context for these textures, cheap on a CPU
    lr: float = 3e-3
    seed: int = 0


class ToySegmenter(nn.Module):
    """(N, 3, H, W) in [0, 1] -> (N, 7, H, W) logits; the receptive field (9x9) sees
    colour and local texture, which is what separates the toy's classes."""

    def __init__(self, width: int = 24, num_classes: int = len(CLASSES)) -> None:
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=2, dilation=2), nn.ReLU(),
            nn.Conv2d(w, num_classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train_toy_segmenter(root: str | Path, cfg: ToySegmenterConfig = ToySegmenterConfig()) -> ToySegmenter:
    """Train on ``root``/trainB with ``root``/labels/trainB, deterministically in ``cfg.seed``."""
    root = Path(root)
    paths = list_images(root / "trainB")
    images = np.stack([read_rgb(p) for p in paths])
    labels = np.stack([np.asarray(Image.open(root / "labels" / "trainB" / p.name)) for p in paths]).astype(np.int64)
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    net = ToySegmenter(cfg.width)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    y_all = torch.from_numpy(labels)
    size = x_all.shape[-1]
    crop = min(cfg.crop, size)
    for _ in range(cfg.steps):
        idx = torch.randint(len(x_all), (cfg.batch_size,), generator=gen)
        top, left = (int(v) for v in torch.randint(size - crop + 1, (2,), generator=gen))
        x = x_all[idx, :, top : top + crop, left : left + crop]
        y = y_all[idx, top : top + crop, left : left + crop]
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


def toy_segmenter(root: str | Path, cfg: ToySegmenterConfig = ToySegmenterConfig()) -> ToySegmenter:
    """The cached segmenter of this dataset (trained on first use)."""
    root = Path(root)
    key = {"config": asdict(cfg), "dataset": json.loads((root / "toy.json").read_text())}
    folder = root / CACHE_NAME
    weights, meta = folder / "segmenter.safetensors", folder / "segmenter.json"
    if weights.is_file() and meta.is_file() and json.loads(meta.read_text()) == key:
        net = ToySegmenter(cfg.width)
        net.load_state_dict(load_file(str(weights)))
        return net.eval()
    net = train_toy_segmenter(root, cfg)
    folder.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    meta.write_text(json.dumps(key, indent=2, sort_keys=True) + "\n")
    return net


class SegmenterFeatures(nn.Module):
    """(N, 3, S, S) in [0, 1] -> (N, 2 * width) in [-1, 1]: the mean and the spread over
    the image of each channel of the segmenter's last hidden layer, centred and scaled
    by their values on real-style renders (``shift``, ``scale``), then squashed.

    A KID feature space that needs no download, for the toy data: the segmenter knows
    only real-style renders, so its features tell real-looking colour and texture per
    class from sim-looking ones, as Inception's do on photos (cruder, and cheap). Why
    squashed: KID's kernel is cubic in the features, and sim-looking images drive a few
    channels to many times their spread on reals, so unbounded features made KID 1e5-1e8
    times larger on sim images than between two sets of reals, and the values that
    matter in training, near the reals, would differ only in the noise of 16 images.
    Bounded, like Inception's pooled features, the ranges are closer to KID's on photos."""

    def __init__(self, segmenter: ToySegmenter, shift: torch.Tensor | None = None,
                 scale: torch.Tensor | None = None) -> None:
        super().__init__()
        self.body = segmenter.net[:-1]  # everything but the 1x1 classifier
        d = 2 * segmenter.net[0].out_channels
        self.register_buffer("shift", torch.zeros(d) if shift is None else shift.detach().clone())
        self.register_buffer("scale", torch.ones(d) if scale is None else scale.detach().clone())

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """The features before centring and squashing: (N, 2 * width)."""
        h = self.body(x)
        return torch.cat([h.mean(dim=(2, 3)), h.std(dim=(2, 3))], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh((self.raw(x) - self.shift) / self.scale)


def toy_feature_extractor(root: str | Path, cfg: ToySegmenterConfig = ToySegmenterConfig()) -> Path:
    """The dataset's segmenter features (centred and scaled on trainB: each feature by
    its spread, at least a tenth of their average) as an exported program
    beside its cache: what ``--feature-extractor`` takes, so KID on toy data runs the
    same code as KID on a user's data. Written when missing or older than the cached
    segmenter, through a rename, so processes that read it while another writes it see
    a whole file."""
    root = Path(root)
    segmenter = toy_segmenter(root, cfg)
    folder = root / CACHE_NAME
    path = folder / "features.pt2"
    if path.is_file() and path.stat().st_mtime >= (folder / "segmenter.safetensors").stat().st_mtime:
        return path
    reals = torch.from_numpy(np.stack(load_folder(root / "trainB"))).permute(0, 3, 1, 2) / 255.0
    with torch.no_grad():
        f = SegmenterFeatures(segmenter).raw(reals.float())
    spread = f.std(0)
    net = SegmenterFeatures(segmenter, f.mean(0), spread.clamp_min(0.1 * float(spread.mean()))).eval()
    example = reals[:2].float()
    program = torch.export.export(net, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    tmp = folder / f"features.{os.getpid()}.tmp.pt2"
    torch.export.save(program, str(tmp))
    os.replace(tmp, path)
    return path
