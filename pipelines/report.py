"""Pictures people would rather look at than read: sample grids, loss curves, and a
search's trials side by side."""

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
    keys = list(keys or [k for k in history[0] if k != "step"])
    steps = np.array([h["step"] for h in history])
    fig, axes = _panels(len(keys), 3.2, 2.8)
    for ax, k in zip(axes, keys):
        y = np.array([h.get(k, np.nan) for h in history], dtype=float)
        ax.plot(steps, y, lw=0.6, alpha=0.35, color="C0")
        win = max(1, len(y) // 20)
        if win > 1:
            smooth = np.convolve(y, np.ones(win) / win, mode="valid")
            ax.plot(steps[win - 1 :], smooth, lw=1.5, color="C0")
        _label(ax, k)
    return _save(fig, path)


def _panels(n: int, width: float, height: float):
    """A row of n matplotlib panels (headless backend): (figure, list of axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, list(axes[0])


def _label(ax, title: str) -> None:  # noqa: ANN001 - a matplotlib Axes
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)


def _save(fig, path: str | Path) -> Path:  # noqa: ANN001 - a matplotlib Figure
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def save_variant_curves(curves: Mapping[str, Sequence[Sequence[Mapping[str, float]]]], path: str | Path, *,
                        keys: Sequence[str] = ("D", "D_rt", "G_GAN", "NCE")) -> Path:
    """Training curves of several variants side by side: one panel per key, one line
    per variant (the mean over its seeds, smoothed), from ``{variant: [history per
    seed]}`` where a history is a list of dicts with 'step'."""
    fig, axes = _panels(len(keys), 3.4, 3.0)
    for ax, k in zip(axes, keys):
        for i, (variant, runs) in enumerate(curves.items()):
            usable = [r for r in runs if r and k in r[0]]
            if not usable:
                continue
            n = min(len(r) for r in usable)
            steps = np.array([h["step"] for h in usable[0][:n]])
            y = np.mean([[h[k] for h in r[:n]] for r in usable], axis=0)
            win = max(1, n // 15)
            if win > 1:
                y, steps = np.convolve(y, np.ones(win) / win, mode="valid"), steps[win - 1 :]
            ax.plot(steps, y, lw=1.4, color=f"C{i}", ls=("-", "--", ":", "-.")[i % 4], label=variant)
        _label(ax, k)
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def save_trial_curves(curves: Mapping[str, Sequence[tuple[float, float]]], path: str | Path, *, metric: str,
                      stopped: Sequence[str] = (), best: str = "") -> Path:
    """A search at a glance: each trial's ``metric`` over its steps, from ``{trial:
    [(step, score), ...]}``; the trials ASHA ``stopped`` dashed and ending in a cross,
    the ``best`` one drawn thick and named in the legend."""
    fig, (ax,) = _panels(1, 6.0, 3.6)
    for i, (trial, points) in enumerate(sorted(curves.items())):
        if not points:
            continue
        steps, scores = zip(*points)
        is_best, was_stopped = trial == best, trial in stopped
        ax.plot(steps, scores, lw=2.4 if is_best else 1.0, ls="--" if was_stopped else "-", color=f"C{i % 10}",
                alpha=1.0 if is_best else 0.7, label=f"{trial} (best)" if is_best else trial if len(curves) <= 10 else None)
        if was_stopped:
            ax.plot(steps[-1], scores[-1], "x", color=f"C{i % 10}")
    _label(ax, f"{metric} by trial (dashed: stopped by ASHA)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return _save(fig, path)
