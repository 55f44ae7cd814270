"""The toy sim->real dataset: street scenes whose right translation is known.

Each layout is a label map with 7 classes (sky, building, road, sidewalk,
vegetation, car, pole). It is rendered twice:

- "sim": flat, saturated colours with hard edges, as a game engine's raw buffers;
- "real": another palette, per-class texture, a lighting gradient, blur and noise.

trainA holds sim renders and trainB real renders of *disjoint* layouts (unpaired
training data). testA holds sim renders whose real render of the same layout sits
in testB: the paired truth that no unpaired method sees, so quality can be
measured without downloads. An optional valA/valB pair, drawn like the test pair
from other layouts, is for choosing a checkpoint during training, so that the test
pair is never used to select what it then scores. Everything is deterministic in
``seed``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("sky", "building", "road", "sidewalk", "vegetation", "car", "pole")

# (R, G, B) per class. Sim: saturated primaries. Real: the muted colours of a photo.
SIM_PALETTE = np.array(
    [(40, 120, 255), (255, 60, 60), (200, 0, 200), (255, 220, 0), (0, 230, 0), (0, 230, 230), (255, 255, 255)],
    dtype=np.float32,
)
REAL_PALETTE = np.array(
    [(170, 195, 220), (120, 100, 90), (80, 80, 85), (150, 145, 135), (60, 90, 45), (30, 40, 70), (60, 60, 60)],
    dtype=np.float32,
)
# Texture amplitude per class in the real style (grey levels).
_TEXTURE = np.array([4, 14, 10, 8, 22, 6, 3], dtype=np.float32)


@dataclass(frozen=True)
class ToySpec:
    size: int = 128
    n_train: int = 200  # per domain
    n_test: int = 40
    seed: int = 0
    n_val: int = 0  # valA/valB pairs (0: none)


def make_layout(size: int, rng: np.random.Generator) -> np.ndarray:
    """A street-like label map, (size, size) uint8 class ids."""
    s = size
    lab = np.zeros((s, s), np.uint8)  # sky
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    horizon = rng.uniform(0.38, 0.52)
    # Buildings: a skyline of blocks standing on the horizon.
    x = 0.0
    while x < 1.0:
        w = rng.uniform(0.08, 0.25)
        top = horizon - rng.uniform(0.12, horizon - 0.03)
        lab[(xx >= x) & (xx < x + w) & (yy >= top) & (yy < horizon)] = 1
        x += w + rng.uniform(0.0, 0.06)
    # Ground below the horizon: sidewalk, with a road converging to a vanishing point.
    ground = yy >= horizon
    lab[ground] = 3
    vx = rng.uniform(0.35, 0.65)
    depth = np.clip((yy - horizon) / (1.0 - horizon), 0, 1)
    half_width = 0.02 + depth * rng.uniform(0.45, 0.7)
    road = ground & (np.abs(xx - vx) < half_width)
    lab[road] = 2
    # Vegetation: a few blobs on the horizon line.
    for _ in range(rng.integers(1, 4)):
        cx, cy = rng.uniform(0, 1), horizon - rng.uniform(0.0, 0.08)
        rx, ry = rng.uniform(0.05, 0.14), rng.uniform(0.04, 0.1)
        lab[((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1] = 4
    # Cars on the road, larger when nearer.
    for _ in range(rng.integers(1, 4)):
        d = rng.uniform(0.25, 0.9)
        cy = horizon + d * (1 - horizon)
        cw, ch = 0.06 + 0.16 * d, 0.04 + 0.09 * d
        cx = vx + rng.uniform(-0.6, 0.6) * (0.02 + d * 0.5)
        lab[(np.abs(xx - cx) < cw / 2) & (yy > cy - ch) & (yy < cy)] = 5
    # Poles on the sidewalk side.
    for _ in range(rng.integers(1, 3)):
        px = rng.choice([rng.uniform(0.02, 0.2), rng.uniform(0.8, 0.98)])
        bottom = rng.uniform(horizon + 0.1, 0.98)
        lab[(np.abs(xx - px) < 0.012) & (yy > bottom - rng.uniform(0.3, 0.5)) & (yy < bottom)] = 6
    return lab


def render_sim(labels: np.ndarray) -> np.ndarray:
    """Flat palette colours: (H, W) ids -> (H, W, 3) uint8."""
    return SIM_PALETTE[labels].astype(np.uint8)


def render_real(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Photo-like render: palette + per-class texture + lighting + blur + noise."""
    h, w = labels.shape
    img = REAL_PALETTE[labels].copy()  # (H, W, 3) float
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # Per-class texture: building windows, leafy noise, asphalt grain.
    grain = rng.normal(0, 1, (h, w)).astype(np.float32)
    windows = ((np.floor(yy / max(h / 32, 2)) + np.floor(xx / max(w / 24, 2))) % 2) * 2 - 1
    tex = np.where(labels == 1, windows, grain) * _TEXTURE[labels]
    img += tex[..., None]
    # Lighting: brighter towards a random side, darker at the bottom.
    side = rng.uniform(-1, 1)
    light = 1.0 + 0.12 * side * (xx / w - 0.5) - 0.1 * (yy / h - 0.5)
    img *= light[..., None]
    img = _box_blur(img)
    img += rng.normal(0, 3.0, img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _box_blur(img: np.ndarray) -> np.ndarray:
    """3x3 box blur with edge replication, (H, W, C) float -> same."""
    p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = img.shape[:2]
    return sum(p[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)) / 9.0


def per_class_colour_error(pred: np.ndarray, truth: np.ndarray, labels: np.ndarray) -> float:
    """Mean over present classes of the L1 distance between the class's mean colour in
    ``pred`` and in ``truth`` (grey levels 0-255). (H, W, 3) uint8 x2, (H, W) ids."""
    errs = []
    for c in np.unique(labels):
        mask = labels == c
        errs.append(np.abs(pred[mask].astype(np.float64).mean(0) - truth[mask].astype(np.float64).mean(0)).mean())
    return float(np.mean(errs))


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, sum(map(ord, split)), index])


def write_toy_dataset(out: str | Path, spec: ToySpec = ToySpec()) -> Path:
    """Write the dataset in the CycleGAN layout:

    trainA/ sim renders          trainB/ real renders of other layouts
    testA/  sim renders          testB/  real renders of testA's layouts (paired truth)
    valA/, valB/ (n_val > 0): a second paired split, for checkpoint selection
    labels/{trainA,trainB,testA,valA}/ class-id PNGs (testB shares testA's)
    toy.json, README.md
    """
    root = Path(out)
    paired = ("testA", "valA") if spec.n_val else ("testA",)  # an A split whose truth is its B twin
    for split in ("trainA", "trainB", *paired):
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    for split in paired:
        (root / (split[:-1] + "B")).mkdir(exist_ok=True)

    def save(img: np.ndarray, path: Path) -> None:
        Image.fromarray(img).save(path, optimize=False, compress_level=1)

    for split, n in (("trainA", spec.n_train), ("trainB", spec.n_train), ("testA", spec.n_test), ("valA", spec.n_val)):
        for i in range(n):
            rng = _rng(spec.seed, split, i)
            lab = make_layout(spec.size, rng)
            name = f"{i:05d}.png"
            save(lab, root / "labels" / split / name)
            if split == "trainB":
                save(render_real(lab, rng), root / split / name)
            else:
                save(render_sim(lab), root / split / name)
            if split in paired:
                save(render_real(lab, rng), root / (split[:-1] + "B") / name)
    meta = {
        "name": "raycut-toy-sim2real",
        "size": spec.size,
        "n_train": spec.n_train,
        "n_test": spec.n_test,
        "n_val": spec.n_val,
        "seed": spec.seed,
        "classes": list(CLASSES),
        "sim_palette": SIM_PALETTE.astype(int).tolist(),
        "real_palette": REAL_PALETTE.astype(int).tolist(),
    }
    (root / "toy.json").write_text(json.dumps(meta, indent=2) + "\n")
    (root / "README.md").write_text(_README.format(**meta))
    return root


_README = """# raycut toy sim->real dataset

Generated by `raycut toy-data` (size {size}, seed {seed}); the same seed gives the same files.

Street-like layouts with 7 classes ({classes}), each rendered in two styles:
a "sim" style (flat saturated colours, hard edges) and a "real" style (another
palette, per-class texture, a lighting gradient, blur and noise).

| folder | what |
|---|---|
| trainA/ | {n_train} sim renders (domain A) |
| trainB/ | {n_train} real renders of *other* layouts (domain B): the training data is unpaired |
| testA/  | {n_test} sim renders to translate |
| testB/  | the real render of each testA layout, same file name: the paired truth |
| valA/, valB/ | {n_val} more sim renders and their real renders: for choosing a checkpoint (absent when 0) |
| labels/trainA, labels/trainB, labels/testA, labels/valA | class ids (0-6) as 8-bit PNGs, same file names |

A translation G(testA/x.png) should match testB/x.png in colour per class while
keeping the layout in labels/testA/x.png. The identity (sim colours) and a
histogram match are the baselines to beat.
"""
