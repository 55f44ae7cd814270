"""Pictures people would rather look at than read: sample grids and loss curves."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw


def save_grid(rows: Sequence[Sequence[np.ndarray]], path: str | Path, *, titles: Sequence[str] = (), scale: int = 1) -> Path:
    """Tile (H, W, 3) uint8 images into a PNG, one row per sample; ``titles`` label the columns."""
    if not rows or not rows[0]:
        raise ValueError("save_grid needs at least one image")
    h, w = rows[0][0].shape[:2]
    pad, head = 2, (14 if titles else 0)
    cols = max(len(r) for r in rows)
    canvas = Image.new("RGB", (cols * (w * scale + pad) + pad, head + len(rows) * (h * scale + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for j, title in enumerate(titles):
        draw.text((pad + j * (w * scale + pad) + 2, 1), title, fill=(0, 0, 0))
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            tile = Image.fromarray(img)
            if scale != 1:
                tile = tile.resize((w * scale, h * scale), Image.NEAREST)
            canvas.paste(tile, (pad + j * (w * scale + pad), head + pad + i * (h * scale + pad)))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


def save_loss_plot(history: Sequence[Mapping[str, float]], path: str | Path, *, keys: Sequence[str] | None = None) -> Path:
    """Loss curves (one panel per loss, smoothed) from a list of per-step dicts with a 'step' key."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(keys or [k for k in history[0] if k != "step"])
    steps = np.array([h["step"] for h in history])
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
    for ax, k in zip(axes[0], keys):
        y = np.array([h.get(k, np.nan) for h in history], dtype=float)
        ax.plot(steps, y, lw=0.6, alpha=0.35, color="C0")
        win = max(1, len(y) // 20)
        if win > 1:
            smooth = np.convolve(y, np.ones(win) / win, mode="valid")
            ax.plot(steps[win - 1 :], smooth, lw=1.5, color="C0")
        ax.set_title(k)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
