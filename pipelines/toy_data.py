"""The toy sim->real datasets: scenes whose right translation is known.

Each layout is a label map with 7 classes, rendered twice:

- "sim": flat, saturated colours with hard edges, as a game engine's raw buffers;
- "real": another palette, per-class texture, a lighting gradient, blur and noise.

Three scenes (``SCENES``): "street" (sky, building, road, sidewalk, vegetation, car,
pole) is the one raycut's tests, demo and defaults were developed on. "coast" (sky,
sea, sand, cliff, grass, boat, cloud) is held out: no test trains on it, so a setting
chosen on the street pair can be checked there for what it is worth elsewhere.
"aerial" (a map against a satellite photo, seen from above) is held out from the tests
and from the choice of settings too: it was added after FastCUT's settings had been
chosen on street and coast. Coast's
translation differs in kind too: the sim render is a cartoon with dark outlines that
the real render has not, and the real render's light changes colour with height
(dusk) and falls off at the corners, which no global colour map undoes.

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
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from cut_core.errors import ConfigError

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
    scene: str = "street"  # a key of SCENES; "coast" is the held-out pair


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


# The held-out "coast" scene. Sim: a cartoon, saturated fills with dark outlines.
# Real: a photo at dusk, warm light above and cool below, darker corners.
COAST_CLASSES = ("sky", "sea", "sand", "cliff", "grass", "boat", "cloud")
COAST_SIM_PALETTE = np.array(
    [(90, 200, 255), (0, 90, 255), (255, 230, 120), (170, 90, 40), (60, 220, 60), (230, 40, 40), (250, 250, 250)],
    dtype=np.float32,
)
COAST_REAL_PALETTE = np.array(
    [(200, 165, 155), (45, 75, 95), (190, 170, 140), (110, 95, 80), (70, 95, 50), (150, 60, 50), (215, 200, 200)],
    dtype=np.float32,
)
_COAST_TEXTURE = np.array([3, 12, 10, 16, 14, 4, 5], dtype=np.float32)
OUTLINE = 25.0  # the sim render's outline grey level


def make_coast_layout(size: int, rng: np.random.Generator) -> np.ndarray:
    """A coast label map, (size, size) uint8 ids of COAST_CLASSES: sky over sea, a
    beach below a wavy shoreline, a cliff with grass on top at one side, boats on
    the sea, clouds in the sky."""
    s = size
    lab = np.zeros((s, s), np.uint8)  # sky
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    horizon = rng.uniform(0.35, 0.5)
    lab[yy >= horizon] = 1  # sea
    shore = (rng.uniform(0.65, 0.85) + rng.uniform(-0.3, 0.3) * (xx - 0.5)
             + rng.uniform(0.01, 0.04) * np.sin(2 * np.pi * rng.uniform(2, 5) * xx + rng.uniform(0, 2 * np.pi)))
    lab[(yy >= horizon) & (yy >= shore)] = 2  # sand
    # The cliff: from one side, its top sloping down towards the sea, wider below.
    d = xx if rng.uniform() < 0.5 else 1 - xx
    width, top = rng.uniform(0.18, 0.38), horizon - rng.uniform(0.08, 0.25)
    top_at = top + 0.15 * d / width
    cliff = (yy >= top_at) & (d < width + 0.12 * (yy - top))
    lab[cliff] = 3
    lab[cliff & (yy < top_at + 0.035)] = 4  # grass on its top
    for _ in range(rng.integers(1, 4)):  # boats on open sea, larger when nearer
        depth = rng.uniform(0.1, 0.8)
        cy = horizon + 0.03 + depth * (0.6 - horizon) * 0.6
        cw, ch = 0.04 + 0.08 * depth, 0.015 + 0.03 * depth
        cx = rng.uniform(0.1, 0.9)
        lab[(np.abs(xx - cx) < cw / 2) & (np.abs(yy - cy) < ch / 2) & (lab == 1)] = 5
    for _ in range(rng.integers(1, 4)):  # clouds in the open sky
        cx, cy = rng.uniform(0, 1), rng.uniform(0.05, max(0.06, horizon - 0.12))
        rx, ry = rng.uniform(0.08, 0.2), rng.uniform(0.03, 0.07)
        lab[(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1) & (lab == 0)] = 6
    return lab


def render_coast_sim(labels: np.ndarray) -> np.ndarray:
    """Cartoon fills with a one-pixel dark outline where the class changes: (H, W) -> (H, W, 3) uint8."""
    img = COAST_SIM_PALETTE[labels].copy()
    edge = np.zeros(labels.shape, bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    img[edge] = OUTLINE
    return img.astype(np.uint8)


def render_coast_real(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Photo at dusk: palette + per-class texture (waves, sand grain, rock streaks),
    light warmer at the top and cooler at the bottom, a vignette, blur and noise."""
    h, w = labels.shape
    img = COAST_REAL_PALETTE[labels].copy()
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    grain = rng.normal(0, 1, (h, w)).astype(np.float32)
    waves = np.sin(2 * np.pi * yy / max(h / 10, 2) + rng.uniform(0, 2 * np.pi)).astype(np.float32)
    streaks = np.broadcast_to(rng.normal(0, 1, (1, w)).astype(np.float32), (h, w))
    tex = np.where(labels == 1, waves, np.where(labels == 3, streaks, grain)) * _COAST_TEXTURE[labels]
    img += tex[..., None]
    warmth = rng.uniform(0.6, 1.2) * (0.5 - yy / h)  # +0.5 at the top, -0.5 at the bottom
    img *= 1.0 + warmth[..., None] * np.array([0.15, 0.02, -0.15], np.float32)
    r2 = ((xx / w - 0.5) ** 2 + (yy / h - 0.5) ** 2) * 2  # 1 at the corners
    img *= (1.0 - 0.25 * r2)[..., None]
    img = _box_blur(img)
    img += rng.normal(0, 3.0, img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# The second held-out scene, "aerial", added after FastCUT's settings were chosen on the
# street and coast pairs. Sim: a map, flat bright fills seen from above. Real: a
# satellite photo: crop rows, tree canopy, ripples, a hazy blue cast over everything
# and a cloud's soft shadow somewhere, which no global colour map undoes.
AERIAL_CLASSES = ("meadow", "field", "forest", "road", "water", "house", "car")
AERIAL_SIM_PALETTE = np.array(
    [(170, 230, 130), (250, 225, 80), (0, 150, 60), (255, 255, 255), (60, 150, 255), (240, 100, 50), (200, 0, 200)],
    dtype=np.float32,
)
AERIAL_REAL_PALETTE = np.array(
    [(105, 120, 70), (165, 145, 95), (40, 62, 38), (125, 122, 118), (45, 70, 80), (150, 85, 70), (205, 205, 210)],
    dtype=np.float32,
)
_AERIAL_TEXTURE = np.array([8, 14, 18, 5, 6, 6, 3], dtype=np.float32)
_HAZE = np.array([175, 185, 205], np.float32)


def make_aerial_layout(size: int, rng: np.random.Generator) -> np.ndarray:
    """A top-down label map, (size, size) uint8 ids of AERIAL_CLASSES: meadow with
    fields and woods, a winding river, a straight road across it with houses beside
    it and cars on it. Half the layouts run the river across, half down."""
    s = size
    lab = np.zeros((s, s), np.uint8)  # meadow
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    if rng.uniform() < 0.5:
        xx, yy = yy, xx
    for _ in range(rng.integers(2, 6)):  # fields
        x0, y0 = rng.uniform(0, 0.8, 2)
        w, h = rng.uniform(0.15, 0.4, 2)
        lab[(xx >= x0) & (xx < x0 + w) & (yy >= y0) & (yy < y0 + h)] = 1
    for _ in range(rng.integers(2, 5)):  # woods
        cx, cy = rng.uniform(0, 1, 2)
        rx, ry = rng.uniform(0.06, 0.18, 2)
        lab[((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1] = 2
    river_y = (rng.uniform(0.3, 0.7) + rng.uniform(0.05, 0.12)
               * np.sin(2 * np.pi * rng.uniform(0.7, 1.6) * xx + rng.uniform(0, 2 * np.pi)))
    lab[np.abs(yy - river_y) < rng.uniform(0.03, 0.06)] = 4
    road_x, half = rng.uniform(0.2, 0.8), rng.uniform(0.015, 0.025)
    lab[np.abs(xx - road_x) < half] = 3  # across the river: a bridge
    for _ in range(rng.integers(3, 7)):  # houses beside the road
        side = half + rng.uniform(0.01, 0.03)
        hx = road_x + (side if rng.uniform() < 0.5 else -side - 0.06)
        hy, a = rng.uniform(0.05, 0.95), rng.uniform(0.04, 0.06)
        lab[(xx >= hx) & (xx < hx + a) & (yy >= hy) & (yy < hy + a) & (lab != 4)] = 5
    for _ in range(rng.integers(1, 4)):  # cars on the road
        cy = rng.uniform(0.05, 0.95)
        lab[(np.abs(xx - road_x) < half * 0.7) & (np.abs(yy - cy) < 0.02)] = 6
    return lab


def render_aerial_sim(labels: np.ndarray) -> np.ndarray:
    """A map's flat fills: (H, W) ids -> (H, W, 3) uint8."""
    return AERIAL_SIM_PALETTE[labels].astype(np.uint8)


def render_aerial_real(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Satellite photo: palette + per-class texture (crop rows, canopy grain, ripples),
    a cloud's soft shadow, a haze that lifts and blues every colour, blur and noise."""
    h, w = labels.shape
    img = AERIAL_REAL_PALETTE[labels].copy()
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    grain = rng.normal(0, 1, (h, w)).astype(np.float32)
    angle = rng.uniform(0, np.pi)
    rows = np.sign(np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / max(w / 16, 2))).astype(np.float32)
    ripples = np.sin(2 * np.pi * (xx + yy) / max(w / 12, 2) + rng.uniform(0, 2 * np.pi)).astype(np.float32)
    tex = np.where(labels == 1, rows, np.where(labels == 4, ripples, grain)) * _AERIAL_TEXTURE[labels]
    img += tex[..., None]
    cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.15, 0.3) * w
    img *= (1.0 - 0.3 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)))[..., None]
    haze = rng.uniform(0.1, 0.3)
    img = img * (1 - haze) + haze * _HAZE
    img = _box_blur(img)
    img += rng.normal(0, 3.0, img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Scene:
    """What a toy dataset draws: its classes, their two palettes, the layouts and the
    two renders (sim: labels -> image; real: labels, rng -> image)."""

    name: str
    classes: tuple[str, ...]
    sim_palette: np.ndarray
    real_palette: np.ndarray
    layout: Callable[[int, np.random.Generator], np.ndarray]
    render_sim: Callable[[np.ndarray], np.ndarray]
    render_real: Callable[[np.ndarray, np.random.Generator], np.ndarray]
    what: str  # a sentence for the dataset's README


# Every scene has 7 classes: the toy segmenter (label preservation) is sized by CLASSES.
SCENES = {
    "street": Scene("street", CLASSES, SIM_PALETTE, REAL_PALETTE, make_layout, render_sim, render_real,
                    "Street-like layouts with 7 classes ({classes}), each rendered in two styles: a \"sim\" style "
                    "(flat saturated colours, hard edges) and a \"real\" style (another palette, per-class texture, "
                    "a lighting gradient, blur and noise)."),
    "coast": Scene("coast", COAST_CLASSES, COAST_SIM_PALETTE, COAST_REAL_PALETTE, make_coast_layout, render_coast_sim,
                   render_coast_real,
                   "Coast layouts with 7 classes ({classes}), each rendered in two styles: a \"sim\" cartoon "
                   "(saturated fills, dark outlines) and a \"real\" photo at dusk (another palette, waves, sand grain "
                   "and rock streaks, light warmer above and cooler below, darker corners, blur and noise). raycut's "
                   "tests never train on it: it is the held-out pair."),
    "aerial": Scene("aerial", AERIAL_CLASSES, AERIAL_SIM_PALETTE, AERIAL_REAL_PALETTE, make_aerial_layout,
                    render_aerial_sim, render_aerial_real,
                    "Top-down layouts with 7 classes ({classes}), each rendered in two styles: a \"sim\" map (flat "
                    "bright fills) and a \"real\" satellite photo (another palette, crop rows, canopy grain, ripples, "
                    "a cloud's shadow, a hazy blue cast, blur and noise). Held out like coast, and also from the "
                    "choice of raycut's FastCUT settings, which were made after looking at street and coast."),
}


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
    if spec.scene not in SCENES:  # a ValueError, and one line from the CLI
        raise ConfigError(f"unknown toy scene {spec.scene!r}; choose from {', '.join(SCENES)}")
    root = Path(out)
    _make_room(root)
    paired = ("testA", "valA") if spec.n_val else ("testA",)  # an A split whose truth is its B twin
    for split in ("trainA", "trainB", *paired):
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    for split in paired:
        (root / (split[:-1] + "B")).mkdir(exist_ok=True)

    def save(img: np.ndarray, path: Path) -> None:
        Image.fromarray(img).save(path, optimize=False, compress_level=1)

    scene = SCENES[spec.scene]
    for split, n in (("trainA", spec.n_train), ("trainB", spec.n_train), ("testA", spec.n_test), ("valA", spec.n_val)):
        for i in range(n):
            rng = _rng(spec.seed, split, i)
            lab = scene.layout(spec.size, rng)
            name = f"{i:05d}.png"
            save(lab, root / "labels" / split / name)
            if split == "trainB":
                save(scene.render_real(lab, rng), root / split / name)
            else:
                save(scene.render_sim(lab), root / split / name)
            if split in paired:
                save(scene.render_real(lab, rng), root / (split[:-1] + "B") / name)
    meta = {
        # The street scene keeps the name it had before there were scenes.
        "name": "raycut-toy-sim2real" if spec.scene == "street" else f"raycut-toy-{spec.scene}",
        "scene": spec.scene,
        "size": spec.size,
        "n_train": spec.n_train,
        "n_test": spec.n_test,
        "n_val": spec.n_val,
        "seed": spec.seed,
        "classes": list(scene.classes),
        "sim_palette": scene.sim_palette.astype(int).tolist(),
        "real_palette": scene.real_palette.astype(int).tolist(),
    }
    (root / "toy.json").write_text(json.dumps(meta, indent=2) + "\n")
    (root / "README.md").write_text(_README.format(what=scene.what.format(classes=", ".join(scene.classes)), **meta))
    return root


TOY_ENTRIES = ("trainA", "trainB", "testA", "testB", "valA", "valB", "labels", "toy.json", "README.md")


def _make_room(root: Path) -> None:
    """An earlier toy dataset in ``root`` is replaced whole (written again with fewer
    images it would keep the old extra ones); any other content is refused, so that no
    file of the user's is overwritten or mixed into the toy's splits."""
    if not root.exists():
        return
    if not root.is_dir():
        raise ConfigError(f"{root} is a file; pass a folder for the toy dataset")
    if (root / "toy.json").is_file():
        for name in TOY_ENTRIES:
            path = root / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        return
    if any(root.iterdir()):
        raise ConfigError(f"{root} is not empty and holds no toy dataset (no toy.json): pass a new or empty folder, so "
                          f"that none of its files is overwritten or mixed with the toy's")


_README = """# raycut toy sim->real dataset ({scene})

Generated by `raycut toy-data --scene {scene}` (size {size}, seed {seed}); the same seed gives the same files.

{what}

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
