"""Single-process CUT training on in-memory images: the quickstart and the tests.
(Multi-worker training on Ray Train builds on the same cut_core step.)"""

from __future__ import annotations

import sys
from typing import Callable

import numpy as np

from cut_core import CUTConfig, TrainState, build_train_state, set_step_lr, train_step
from cut_core.d_balance import WinWatch
from cut_core.images import to_model_input
from cut_core.translate import translate_uint8
from jobs.progress import Progress
from pipelines.local_images import unpaired_array_batches


def train_in_process(
    cfg: CUTConfig,
    images_a: list[np.ndarray],
    images_b: list[np.ndarray],
    *,
    steps: int,
    device: str = "cpu",
    log_every: int = 10,
    progress: bool = True,
    on_log: Callable[[int, dict[str, float], TrainState], None] | None = None,
) -> tuple[TrainState, list[dict[str, float]]]:
    """Run ``steps`` CUT iterations; returns the state and a loss history
    (one dict with 'step' and every loss, each ``log_every`` steps). ``on_log`` gets
    (step, that dict, the state) each time, so a caller can score G mid-run."""
    state = build_train_state(cfg, device=device)
    rng = np.random.default_rng(cfg.seed)
    batches = unpaired_array_batches(images_a, images_b, cfg.data, cfg.optim.batch_size, rng)
    bar = Progress("train", steps, every=log_every) if progress else None
    history: list[dict[str, float]] = []
    acc: dict[str, float] = {}
    watch = WinWatch.for_config(cfg)
    for step in range(steps):
        set_step_lr(state, steps)  # the config's schedule fitted to these steps
        a, b = next(batches)
        out = train_step(state, to_model_input(a).to(device), to_model_input(b).to(device))
        for k, v in out.items():
            acc[k] = acc.get(k, 0.0) + float(v)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            n = (step % log_every) + 1
            row = {"step": step + 1, **{k: v / n for k, v in acc.items()}}
            if watch.observe(row["D"], n, row.get("D_rt")):
                print(f"[train] warning: {watch.message(step + 1)}", file=sys.stderr, flush=True)
            history.append(row)
            acc = {}
            if on_log:
                on_log(step + 1, row, state)
        if bar:
            bar.update(values={k: float(out[k]) for k in ("G", "NCE", "D") if k in out})
    return state, history


def translate_array(state_or_G, images: np.ndarray, *, batch_size: int = 8, device: str = "cpu") -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, H, W, 3) uint8 through G (a state's EMA of G when it
    keeps one; eval mode, fp32; int8 for an Int8ResnetGenerator)."""
    G = state_or_G.inference_G if isinstance(state_or_G, TrainState) else state_or_G
    return translate_uint8(G, images, batch_size=batch_size, device=device)
