import math
from dataclasses import replace

import pytest
import torch

from cut_core import build_train_state, set_epoch, train_step
from jobs.bench.device_checks import channels_last_agreement
from cut_core.config import OptimConfig
from cut_core.lr_schedule import constant_steps, describe_schedule, lr_factor, schedule_epoch, warmup_steps
from tests.conftest import tiny


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("preset", ["cut", "fastcut", "sincut"])
def test_one_step_changes_G_D_and_F_and_returns_finite_scalars(preset, images):
    state = build_train_state(tiny(preset))
    before = {name: _snapshot(m) for name, m in state.modules().items()}
    out = train_step(state, *images)
    expected = {"D", "D_real", "D_fake", "D_rt", "G", "G_GAN", "NCE", "G_grad_norm", "F_grad_norm"}
    expected |= {"NCE_Y"} if preset in ("cut", "sincut") else set()
    expected |= {"idt", "D_R1"} if preset == "sincut" else set()
    expected |= {"D_aug_p"} if preset == "cut" else set()  # CUT's ADA guard (p 0 until D nears winning)
    assert set(out) == expected
    assert all(v.ndim == 0 and torch.isfinite(v) and not v.requires_grad for v in out.values())
    for name, module in state.modules().items():
        changed = [k for k, v in module.state_dict().items() if not torch.equal(v, before[name][k])]
        assert changed, f"{name} did not change"
    assert state.step == 1
    # The gradient norms are of the gradients this step left on G and F.
    for net in ("G", "F"):
        grads = [p.grad.flatten() for p in getattr(state, net).parameters() if p.grad is not None]
        assert grads and torch.allclose(out[f"{net}_grad_norm"], torch.cat(grads).norm(), rtol=1e-4)
    # D's parameters must be trainable again after G's phase froze them.
    assert all(p.requires_grad for p in state.D.parameters())


def test_same_seed_same_run_and_rank_changes_the_patch_draws(images):
    runs = []
    for rank in (0, 0, 1):
        state = build_train_state(tiny("cut"), rank=rank)
        runs.append([float(train_step(state, *images)["NCE"]) for _ in range(2)])
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    # Ranks start from the same weights (data parallel replicas must agree).
    s0, s1 = build_train_state(tiny("cut"), rank=0), build_train_state(tiny("cut"), rank=1)
    assert all(torch.equal(a, b) for a, b in zip(s0.G.state_dict().values(), s1.G.state_dict().values()))


def test_bf16_losses_track_fp32_from_the_same_start(images):
    fp32 = train_step(build_train_state(tiny("cut")), *images)
    bf16 = train_step(build_train_state(tiny("cut", precision="bf16")), *images)
    for key in ("NCE", "NCE_Y", "G_GAN", "D"):
        assert bf16[key].item() == pytest.approx(fp32[key].item(), rel=0.05), key


@pytest.mark.parametrize("preset", ["cut", "fastcut"])
def test_channels_last_is_the_same_computation(images, preset):
    """Same losses, and the same gradients of G, D and F: channels_last has its own
    norm and resampling paths (fp64; see channels_last_agreement)."""
    diffs = channels_last_agreement(tiny(preset), *images)
    assert {k for k in diffs if k.startswith("grad/")} == {"grad/G", "grad/D", "grad/F"}
    assert "loss/NCE" in diffs and "loss/G_GAN" in diffs
    assert max(diffs.values()) < 1e-9, diffs


def test_linear_decay_schedule_matches_the_official_policy():
    o = OptimConfig(n_epochs=3, n_epochs_decay=2)
    assert [lr_factor(o, e) for e in range(5)] == pytest.approx([1, 1, 1, 2 / 3, 1 / 3])
    state = build_train_state(tiny("cut", n_epochs=3, n_epochs_decay=2, lr=1e-3))
    assert set_epoch(state, 4) == pytest.approx(1e-3 / 3)
    assert all(g["lr"] == pytest.approx(1e-3 / 3) for opt in state.optimizers().values() for g in opt.param_groups)


@pytest.mark.parametrize("n_epochs, n_decay, steps_per_epoch", [(150, 50, 7), (3, 2, 1), (0, 4, 5), (6, 0, 3)])
def test_a_run_of_the_configs_length_keeps_the_official_schedule(n_epochs, n_decay, steps_per_epoch):
    o = OptimConfig(n_epochs=n_epochs, n_epochs_decay=n_decay)
    total = (n_epochs + n_decay) * steps_per_epoch
    assert [schedule_epoch(o, s, total) for s in range(total)] == [s // steps_per_epoch for s in range(total)]
    assert describe_schedule(o, total, steps_per_epoch).count("fitted") == 0


def test_a_shorter_or_longer_run_gets_the_schedule_fitted_to_its_length():
    """FastCUT's 150 + 50 epochs over 1500 steps (23 epochs of 64 images): the full LR
    for three quarters of the run, then the decay, down to the last epoch's 1/51."""
    o = OptimConfig(n_epochs=150, n_epochs_decay=50, lr=2e-4)
    factors = [lr_factor(o, schedule_epoch(o, s, 1500)) for s in range(1500)]
    assert constant_steps(o, 1500) == 1125 == sum(f == 1.0 for f in factors)
    assert factors[1124] == 1.0 > factors[1125] and factors[-1] == pytest.approx(1 / 51)
    assert all(x >= y for x, y in zip(factors, factors[1:]))
    assert "constant for 1125 steps, then a linear decay over the last 375" in describe_schedule(o, 1500, 64)
    assert "(the config's 150+50 epochs fitted to this run's 1500 steps, 23.4 epochs of its data)" in (
        describe_schedule(o, 1500, 64))
    # Taken literally, 4x the config's epochs ran into negative LRs; fitted, never.
    long = [lr_factor(o, schedule_epoch(o, s, 800 * 3)) for s in range(800 * 3)]
    assert min(long) == pytest.approx(1 / 51) and constant_steps(o, 2400) == 1800


def test_a_warm_up_ramps_the_rate_mirroring_the_decay_and_is_fitted_like_it():
    """n_epochs_warmup of the n_epochs ramp linearly up to lr, (e+1)/(warmup+1), the
    decay's steps in reverse; fitted to a run like the rest, and only ever a factor <= 1."""
    o = OptimConfig(n_epochs=4, n_epochs_warmup=2, n_epochs_decay=2)
    assert [lr_factor(o, e) for e in range(6)] == pytest.approx([1 / 3, 2 / 3, 1, 1, 2 / 3, 1 / 3])
    assert [lr_factor(replace(o, n_epochs_warmup=0), e) for e in range(6)] == pytest.approx([1, 1, 1, 1, 2 / 3, 1 / 3])
    # 100 + 100 epochs (fastcut-small-data's) with a 30-epoch warm-up over 1500 steps: 225 steps
    # ramping, 525 at the full rate, 750 decaying; never above 1, rising then falling.
    w = OptimConfig(n_epochs=100, n_epochs_decay=100, n_epochs_warmup=30)
    factors = [lr_factor(w, schedule_epoch(w, s, 1500)) for s in range(1500)]
    assert warmup_steps(w, 1500) == 225 == sum(f < 1.0 for f in factors[:750])
    assert constant_steps(w, 1500) == 750 and sum(f == 1.0 for f in factors) == 525
    assert factors[0] == pytest.approx(1 / 31) and factors[224] == pytest.approx(30 / 31) and max(factors) == 1.0
    assert all(x <= y for x, y in zip(factors[:750], factors[1:750]))
    assert all(x >= y for x, y in zip(factors[750:], factors[751:]))
    assert describe_schedule(w, 1500, 64).startswith(
        "lr 0.0002 a linear warm-up over the first 225 steps, then constant for 525 steps, "
        "then a linear decay over the last 750")
    assert "warm-up over the first 5 steps, then constant for the other 15" in describe_schedule(
        OptimConfig(n_epochs=4, n_epochs_warmup=1, n_epochs_decay=0), 20, 5)
    with pytest.raises(ValueError, match=r"n_epochs_warmup=5 must lie in \[0, n_epochs=4\]"):
        OptimConfig(n_epochs=4, n_epochs_warmup=5)


def test_set_step_lr_follows_the_fitted_schedule_through_training():
    """train_in_process sets the LR of every step from the schedule fitted to its steps:
    1 + 1 epochs over 4 steps are two steps at the full LR, then two at half of it."""
    import numpy as np

    from jobs.train.in_process import train_in_process

    cfg = tiny("fastcut", n_epochs=1, n_epochs_decay=1, lr=1e-3)
    side = cfg.data.crop_size
    imgs = [np.random.default_rng(i).integers(0, 256, (side, side, 3), dtype=np.uint8) for i in range(4)]
    seen = []
    train_in_process(cfg, imgs[:2], imgs[2:], steps=4, log_every=1, progress=False,
                     on_log=lambda step, row, state: seen.append(state.opt_G.param_groups[0]["lr"]))
    assert seen == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4])


def test_the_rate_is_cut_after_patience_evaluations_without_a_new_best_and_only_before_the_decay():
    """lr_plateau_patience=2: two evaluations in a row that do not beat the best so far
    halve the schedule's rate (set from the next step on), never below lr_plateau_min;
    a value that is not finite counts as no better; in the decay nothing is cut."""
    from cut_core.training import observe_val_metric, set_step_lr

    total = 100  # 1 + 1 epochs: steps 0-49 at the full rate, then the decay
    state = build_train_state(tiny("cut", n_epochs=1, n_epochs_decay=1, lr=1e-3, lr_plateau_patience=2,
                                   lr_plateau_min=0.25))
    assert set(state.modules()) >= {"lr_plateau"}

    def evaluate(step: int, value: float) -> tuple[bool, float, float]:
        state.step = step
        cut = observe_val_metric(state, value, total)
        return cut, state.lr_plateau.value, set_step_lr(state, total)

    assert evaluate(5, 0.9) == (False, 1.0, 1e-3)  # the first value is the best
    assert evaluate(10, 0.8) == (False, 1.0, 1e-3)
    assert evaluate(15, 0.8)[0] is False  # level is not better: 1 of 2
    assert evaluate(20, math.nan) == (True, 0.5, 5e-4)  # diverged: 2 of 2, cut
    assert evaluate(25, 0.85) == (False, 0.5, 5e-4)  # the count starts again after a cut
    assert evaluate(30, 0.7) == (False, 0.5, 5e-4)  # a new best resets it
    assert evaluate(35, 0.75) == (False, 0.5, 5e-4)
    assert evaluate(40, 0.75) == (True, 0.25, 2.5e-4)
    assert evaluate(45, 0.75)[0] is False and evaluate(49, 0.9) == (False, 0.25, 2.5e-4)  # at the floor
    # In the decay (step 50 on) the schedule lowers the rate; the plateau only keeps its best.
    state.lr_plateau.scale.fill_(1.0)
    assert evaluate(50, 0.9) == (False, 1.0, pytest.approx(1e-3 * lr_factor(state.config.optim, 1)))
    assert evaluate(60, 0.9)[0] is False and evaluate(70, 0.65)[0] is False and float(state.lr_plateau.best) == 0.65
    # Scores where higher is better cut the other way round.
    up = build_train_state(tiny("cut", n_epochs=1, n_epochs_decay=1, lr_plateau_patience=1))
    assert [observe_val_metric(up, v, total, order="max") for v in (0.5, 0.6, 0.55)] == [False, False, True]
    assert "cut x0.5 after 2 evaluations without a new best" in describe_schedule(state.config.optim, total, 10)
    assert build_train_state(tiny("cut")).lr_plateau is None  # off unless asked for
    with pytest.raises(ValueError, match=r"lr_plateau_factor=1.0 must lie in \(0, 1\)"):
        OptimConfig(lr_plateau_patience=2, lr_plateau_factor=1.0)


def test_a_resumed_run_keeps_the_rates_cut_and_its_count(tmp_path) -> None:
    """The plateau's scale, best and count are in the checkpoint: a resumed run sets the
    cut rate and cuts again where the run would have; a run saved without the plateau
    can turn it on at resume (it starts uncut)."""
    from cut_core.train_checkpoint import load_train_state, save_train_state
    from cut_core.training import observe_val_metric

    cfg = tiny("cut", n_epochs=1, n_epochs_decay=1, lr=1e-3, lr_plateau_patience=2, lr_plateau_min=0.25)
    state = build_train_state(cfg)
    for step, value in ((5, 0.5), (10, 0.6), (15, 0.7), (20, 0.4), (25, 0.45)):
        state.step = step
        observe_val_metric(state, value, 100)
    save_train_state(state, tmp_path / "ckpt")
    resumed = build_train_state(cfg)
    load_train_state(resumed, tmp_path / "ckpt")
    saved = {k: float(v) for k, v in resumed.lr_plateau.state_dict().items()}
    assert saved == {"scale": 0.5, "best": 0.4, "bad": 1.0, "cuts": 1.0}
    assert resumed.opt_G.param_groups[0]["lr"] == pytest.approx(5e-4)
    resumed.step = 30
    assert observe_val_metric(resumed, 0.41, 100) is True  # 2 of 2 since the best 0.4 at step 20
    assert resumed.lr_plateau.value == 0.25
    save_train_state(build_train_state(tiny("cut")), tmp_path / "plain")
    turned_on = build_train_state(cfg)
    load_train_state(turned_on, tmp_path / "plain")
    assert turned_on.lr_plateau.value == 1.0


def test_step_rejects_mismatched_batches():
    state = build_train_state(tiny("cut"))
    with pytest.raises(ValueError, match="same shape"):
        train_step(state, torch.zeros(2, 3, 32, 32), torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        train_step(state, torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


@pytest.mark.cost(65)
@pytest.mark.slow
def test_torch_compile_path_gives_the_eager_losses(images):
    # n_blocks 1 keeps the compile time of this test down; the compiled callables are
    # G.forward_and_encode, G.encode, D and F.
    cfg = tiny("cut", n_blocks=1, nce_layers="0,4,8,12")
    eager = train_step(build_train_state(cfg), *images)
    state = build_train_state(cfg.with_overrides({"compile": True}))
    # Inductor compiles 11 graphs here (G, D and F, forward and backward, D and F twice
    # for their no-grad calls). Its scalar C++ compiles in half the time of its
    # AVX-512 code (57 s against 118 s cold on a 2-core Xeon): what is tested is that
    # raycut's compiled callables give eager's losses, not Inductor's vectorizer.
    import torch._inductor.config as inductor_config

    with inductor_config.patch({"cpp.vec_isa_ok": False}):
        compiled = [train_step(state, *images) for _ in range(2)][0]
    for key in eager:
        assert compiled[key].item() == pytest.approx(eager[key].item(), rel=1e-4, abs=1e-6), key
    # The state dict keeps its plain keys: compiled wrappers are not registered modules.
    assert "model.1.weight" in state.G.state_dict()


@pytest.mark.parametrize("centre", ["edge", "pixel"])
def test_fastcut_flip_equivariance_flips_the_input_and_keeps_unflipped_keys(images, centre):
    from cut_core.training import flip_coin, generator_pass, mirror

    state = build_train_state(tiny("fastcut", flip_centre=centre))
    a, b = images
    # Find an iteration whose coin says "flip" (the coin comes from state.rng).
    for _ in range(20):
        before = state.rng.get_state()
        if flip_coin(state.rng):
            state.rng.set_state(before)
            break
    fwd = generator_pass(state, a, b)
    assert fwd.flipped and fwd.idt_B is None
    layers = state.config.loss.nce_layers
    with torch.no_grad():
        torch.testing.assert_close(fwd.fake_B, state.G(mirror(a, centre)))  # G ran on the mirrored x
        for key, ref in zip(fwd.keys, state.G.encode(a, layers)):
            torch.testing.assert_close(key, ref)  # keys come from the unmirrored x
    out = train_step(state, a, b)  # a whole step on the mirrored input
    assert torch.isfinite(out["NCE"]) and torch.isfinite(out["G"])


def test_the_pixel_centred_mirror_keeps_the_downsampling_grid():
    """Mirroring about column W/2 commutes with G's stride-2 blur-downsampling (away
    from column 0, which has no partner); the flip between the middle columns does not:
    it shifts the grid by a column, which no G can undo."""
    from cut_core.antialias import BlurDownsample
    from cut_core.training import mirror

    x = torch.randn(1, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    down = BlurDownsample(2)
    x_px = mirror(x, "pixel")
    assert torch.equal(x_px[..., 1:], torch.flip(x, [3])[..., :-1])  # column j holds x's column W - j
    assert torch.equal(mirror(x_px, "pixel")[..., 1:], x[..., 1:])  # its own inverse, but for column 0
    for centre, commutes in (("pixel", True), ("edge", False)):
        a, b = down(mirror(x, centre))[..., 2:-1], mirror(down(x), centre)[..., 2:-1]
        assert torch.allclose(a, b, atol=1e-6) == commutes, (centre, (a - b).abs().max())


def test_checkpoint_resume_continues_exactly(tmp_path, images) -> None:
    """Save after 2 steps, go on for 2 more; a fresh state loaded from the checkpoint
    must take the same 2 steps to the same weights (optimizer moments, step, epoch and
    patch RNG all restored)."""
    from cut_core.train_checkpoint import load_train_state, save_train_state

    a, b = images
    cfg = tiny("fastcut", seed=3, n_epochs=1, n_epochs_decay=4)  # flips and patch draws use the RNG
    state = build_train_state(cfg)
    set_epoch(state, 2)  # a decayed LR, so the epoch must come back too
    for _ in range(2):
        train_step(state, a, b)
    save_train_state(state, tmp_path / "ckpt")
    for _ in range(2):
        train_step(state, a, b)

    resumed = build_train_state(cfg)
    meta = load_train_state(resumed, tmp_path / "ckpt")
    assert (meta["step"], resumed.step, resumed.epoch) == (2, 2, 2)
    assert resumed.opt_G.param_groups[0]["lr"] == state.opt_G.param_groups[0]["lr"] < cfg.optim.lr
    for _ in range(2):
        train_step(resumed, a, b)
    for name, module in state.modules().items():
        for (k, v), w in zip(module.state_dict().items(), resumed.modules()[name].state_dict().values()):
            assert torch.equal(v, w), f"{name}.{k}"


def test_checkpoint_refuses_another_architecture(tmp_path) -> None:
    from cut_core.train_checkpoint import CheckpointError, load_train_state, save_train_state

    save_train_state(build_train_state(tiny("cut")), tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="different architecture"):
        load_train_state(build_train_state(tiny("cut", ngf=16)), tmp_path / "ckpt")


@pytest.mark.parametrize("kind", ["raycut", "official"])
def test_a_bench_round_times_one_unflipped_and_one_flipped_fastcut_step(images, kind):
    """FastCUT's coin changes a step's work, so each timed round of `raycut bench train`
    runs one step of each side (forced through the step's first draw, its coin), and the
    rows compare mean steps; a preset without the coin runs one step a round."""
    from cut_core.training import flip_coin
    from jobs.bench.reference_schedule import official_schedule_step, state_for, steps_of_a_round

    a, b = images
    for preset in ("fastcut", "cut"):
        state = state_for(kind, tiny(preset), "cpu")
        coins: list[bool] = []
        real_step = official_schedule_step if kind == "official" else train_step

        def step(state, a, b):
            before = state.rng.get_state()
            coins.append(flip_coin(state.rng))  # the coin this step is about to draw
            state.rng.set_state(before)
            return real_step(state, a, b)

        round_ = steps_of_a_round(step, state, a, b)
        round_()
        round_()
        if preset == "fastcut":
            assert coins == [False, True, False, True]
        else:  # CUT has no flip: one step a round
            assert len(coins) == 2 and not state.config.loss.flip_equivariance
