"""CycleGAN as a mode of the trainer: its image pool, its losses on a hand-checked
tiny case, exact resume, learning on the toy data, and the `raycut train` path."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from cut_core import CUTConfig
from cut_core.cyclegan import CycleGANState, ImagePool
from cut_core.train_checkpoint import load_train_state, save_train_state
from cut_core.training import build_train_state, train_step


def _batch(seed: int, b: int = 2, size: int = 32) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_pool_returns_new_fakes_while_filling_then_swaps_about_half():
    pool, rng = ImagePool(4, (3, 2, 2)), torch.Generator().manual_seed(0)
    first = torch.arange(4 * 12, dtype=torch.float32).reshape(4, 3, 2, 2)
    assert torch.equal(pool.query(first, rng), first) and int(pool.count) == 4
    old = 0
    for i in range(200):
        new = torch.full((1, 3, 2, 2), 1000.0 + i)
        before = pool.images.clone()
        got = pool.query(new, rng)
        if torch.equal(got, new):
            assert torch.equal(pool.images, before)  # returned the new one, kept the pool
        else:
            old += 1
            assert any(torch.equal(got[0], im) for im in before)  # an older fake ...
            assert any(torch.equal(new[0], im) for im in pool.images)  # ... swapped for the new one
    assert 70 < old < 130
    off = ImagePool(0, (3, 2, 2))
    assert torch.equal(off.query(first, rng), first)


def test_step_matches_the_losses_computed_by_hand():
    cfg = CUTConfig.tiny("cyclegan")
    assert (cfg.loss.lambda_A, cfg.loss.lambda_B, cfg.loss.lambda_identity, cfg.loss.pool_size) == (10.0, 10.0, 0.5, 50)
    state = build_train_state(cfg)
    assert isinstance(state, CycleGANState)
    a, b = _batch(1), _batch(2)
    G, GB, D, DA = (copy.deepcopy(m) for m in (state.G, state.G_B, state.D, state.D_A))
    out = train_step(state, a, b)

    def mse(x, t):
        return ((x - t) ** 2).mean()

    with torch.no_grad():
        fake_B, fake_A = G(a), GB(b)
        rec_A, rec_B = GB(fake_B), G(fake_A)
        want = {
            "G_GAN": mse(D(fake_B), 1.0), "G_B_GAN": mse(DA(fake_A), 1.0),
            "cycle_A": (rec_A - a).abs().mean() * 10, "cycle_B": (rec_B - b).abs().mean() * 10,
            "idt_B": (G(b) - b).abs().mean() * 10 * 0.5, "idt_A": (GB(a) - a).abs().mean() * 10 * 0.5,
            # The pool is filling: each D sees this step's fakes.
            "D_B": 0.5 * (mse(D(b), 1.0) + mse(D(fake_B), 0.0)), "D_A": 0.5 * (mse(DA(a), 1.0) + mse(DA(fake_A), 0.0)),
        }
    want["G"] = sum(want[k] for k in ("G_GAN", "G_B_GAN", "cycle_A", "cycle_B", "idt_A", "idt_B"))
    for k, v in want.items():
        torch.testing.assert_close(out[k], v, rtol=1e-5, atol=1e-6, msg=k)
    # Both Gs and both Ds moved; the pools hold this step's fakes.
    for before, after in ((G, state.G), (GB, state.G_B), (D, state.D), (DA, state.D_A)):
        assert not torch.equal(next(before.parameters()), next(after.parameters()))
    assert int(state.pool_A.count) == int(state.pool_B.count) == 2


def test_resume_is_exact_pools_included(tmp_path):
    cfg = CUTConfig.tiny("cyclegan", pool_size=3)  # full after 2 steps: later steps draw from it
    a, b = _batch(1), _batch(2)
    run = build_train_state(cfg)
    for _ in range(3):
        train_step(run, a, b)
    save_train_state(run, tmp_path / "ckpt")
    after = torch.stack([train_step(run, a, b)["D"] for _ in range(3)])
    resumed = build_train_state(cfg)
    load_train_state(resumed, tmp_path / "ckpt")
    again = torch.stack([train_step(resumed, a, b)["D"] for _ in range(3)])
    torch.testing.assert_close(again, after)


@pytest.mark.cost(30)
def test_cyclegan_learns_the_toy_translation(tmp_path):
    from jobs.train.in_process import train_in_process, translate_array
    from pipelines.local_images import load_folder
    from pipelines.toy_data import ToySpec, write_toy_dataset
    from pipelines.toy_eval import evaluate_toy

    toy = write_toy_dataset(tmp_path / "toy", ToySpec(size=32, n_train=64, n_test=16, seed=0))
    cfg = CUTConfig.tiny("cyclegan", lr=5e-4, n_layers_D=2, batch_size=4)
    state, history = train_in_process(cfg, load_folder(toy / "trainA"), load_folder(toy / "trainB"), steps=200,
                                      progress=False, log_every=50)
    rows = evaluate_toy(toy, {"cyclegan": lambda x: translate_array(state, x)}, label_preservation=False)
    scores = {name: row["colour_err"] for name, row in rows.items()}
    assert scores["cyclegan"] < scores["baseline/histogram"] and scores["cyclegan"] < 0.6 * scores["baseline/identity"], scores
    assert history[-1]["cycle_A"] < history[0]["cycle_A"]  # G_B learns to undo G


@pytest.mark.cost(40)
def test_raycut_train_cyclegan_registers_a_model_that_translates(local_ray, tmp_path, monkeypatch):
    from jobs.tracking import resolve_model_dir
    from jobs.train.driver import run_train
    from jobs.train.spec import Schedule, TrainOptions
    from pipelines.toy_data import ToySpec, write_toy_dataset
    from tests.conftest import TINY_SETS
    from cut_core import load_generator
    from cut_core.translate import translate_uint8

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    toy = write_toy_dataset(tmp_path / "toy", ToySpec(size=32, n_train=8, n_test=2))
    opts = dict(preset="cyclegan", data_a=f"cyclegan:{toy}:trainA", data_b=f"cyclegan:{toy}:trainB", sets=TINY_SETS,
                steps=6, storage_path=str(tmp_path / "runs"), register="toy-cyclegan",
                schedule=Schedule(log_every=3, checkpoint_every=6, sample_every=6))
    # On two workers: its four networks under DDP (gloo) stay equal on both ranks.
    result = run_train(TrainOptions(**opts, workers=2, name="two"))
    assert result.metrics["step"] == 6 and {"cycle_A", "cycle_B", "D_A", "D_B"} <= set(result.metrics)
    assert result.metrics["replica_divergence"] == 0.0
    from mlflow.tracking import MlflowClient

    params = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(result.mlflow_run_id).data.params
    assert params["workers"] == "2" and params["global_batch"] == "4"
    G = load_generator(resolve_model_dir("models:/toy-cyclegan@latest", cache=tmp_path / "fetched"))
    x = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    y = translate_uint8(G, x)
    assert y.shape == x.shape and y.std() > 0


def test_options_cyclegan_does_not_use_are_refused_in_one_line():
    from cut_core.errors import ConfigError
    from jobs.config_file import resolve_config

    with pytest.raises(ConfigError, match="not used by the cyclegan preset"):
        resolve_config("cyclegan", "toy", [])  # the toy config turns d_augment on
    assert resolve_config("CycleGAN", "toy", ["d_augment="]).loss.pool_size == 50
