"""What keeps the GAN balanced and the generator smooth: D's input augmentation,
ADA's adaptive probability, the EMA of G, and how they ride through training,
checkpoints and registration."""

from __future__ import annotations

import math

import pytest
import torch

from cut_core import CUTConfig
from cut_core.errors import ConfigError
from cut_core.config import parse_policy
from cut_core.d_balance import AdaptiveP, WinWatch, augment, overfit_sign
from cut_core.ema import GeneratorEMA, ema_decay_at
from cut_core.ema_schedule import describe_ema, ramp_end
from cut_core.grad_guard import GradSpikeGuard
from cut_core.nce_watch import NCEWatch, nce_chance
from cut_core.train_checkpoint import load_train_state, save_train_state
from cut_core.training import build_train_state, train_step


def _images(b: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g) * 2 - 1


@pytest.mark.parametrize("op", ["color", "translation", "cutout"])
def test_each_op_changes_images_and_passes_gradients(op):
    x = _images().requires_grad_(True)
    y = augment(x, (op,), 1.0, torch.Generator().manual_seed(1))
    assert y.shape == x.shape and not torch.allclose(y, x)
    w = torch.randn_like(y)
    (y * w).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # The gradient is the transform's own Jacobian: for translation and cutout every
    # output pixel is an input pixel or zero, so the gradient is a moved copy of w.
    if op != "color":
        assert torch.isclose(x.grad.abs().sum(), (w * (y != 0)).abs().sum(), rtol=1e-4)


def test_translation_moves_content_by_whole_pixels():
    x = torch.zeros(1, 3, 16, 16)
    x[0, :, 8, 8] = 1.0
    y = augment(x, ("translation",), 1.0, torch.Generator().manual_seed(3))
    (yy, xx) = torch.nonzero(y[0, 0]).tolist()[0]
    assert abs(yy - 8) <= 2 and abs(xx - 8) <= 2  # 1/8 of 16 px
    assert y.sum() == x.sum()  # moved, not blurred


def test_cutout_zeroes_at_most_a_quarter_of_the_image():
    x = torch.ones(8, 3, 32, 32)
    y = augment(x, ("cutout",), 1.0, torch.Generator().manual_seed(0))
    zero_frac = (y[:, 0] == 0).float().flatten(1).mean(1)
    assert torch.all(zero_frac > 0.05) and torch.all(zero_frac <= 0.25 + 1e-6)


def test_reals_and_fakes_get_the_same_distribution_of_transforms():
    """D sees [fake; real] through one call: a constant image pair augmented together
    shows the same statistics in both halves (no side is favoured)."""
    fake, real = torch.full((256, 3, 16, 16), 0.3), torch.full((256, 3, 16, 16), 0.3)
    y = augment(torch.cat([fake, real]), ("color", "translation", "cutout"), 1.0, torch.Generator().manual_seed(0))
    a, b = y[:256], y[256:]
    assert abs(float(a.mean() - b.mean())) < 0.05 and abs(float(a.std() - b.std())) < 0.05
    # ... and each image its own draw
    assert not torch.allclose(a[0], a[1])


def test_probability_zero_is_identity_and_seeded_runs_repeat():
    x = _images()
    assert torch.equal(augment(x, ("color", "cutout"), 0.0, torch.Generator().manual_seed(0)), x)
    y1 = augment(x, ("color", "translation", "cutout"), 0.5, torch.Generator().manual_seed(5))
    y2 = augment(x, ("color", "translation", "cutout"), 0.5, torch.Generator().manual_seed(5))
    assert torch.equal(y1, y2)


def test_policy_parsing_names_bad_ops():
    assert parse_policy("color, translation") == ("color", "translation")
    assert parse_policy("") == ()
    with pytest.raises(ValueError, match="unknown D augmentation 'rotate'"):
        parse_policy("color,rotate")
    with pytest.raises(Exception, match="d_augment"):
        CUTConfig.tiny("fastcut", d_augment="blur")


def test_overfit_sign_and_adaptive_p_move_the_right_way():
    assert overfit_sign(torch.full((2, 1, 4, 4), 0.9), "lsgan") == 1.0
    assert overfit_sign(torch.full((2, 1, 4, 4), -2.0), "vanilla") == -1.0
    ada = AdaptiveP(target=0.6, interval=2, speed_images=100)
    for _ in range(4):
        ada.observe(torch.tensor(1.0), batch=5)  # D sure of every real: raise p
    assert math.isclose(ada.value, 2 * 5 * 2 / 100)
    for _ in range(20):
        ada.observe(torch.tensor(0.0), batch=5)  # D guessing: lower p, never below 0
    assert ada.value == 0.0


def test_ema_follows_the_formula():
    torch.manual_seed(0)
    G = torch.nn.Linear(3, 2)
    ema = GeneratorEMA(G, decay=0.99)
    expected = [p.detach().clone() for p in G.parameters()]
    for step in range(1, 30):
        with torch.no_grad():
            for p in G.parameters():
                p.add_(torch.randn_like(p))
        d = ema.update(G, step)
        assert d == ema_decay_at(0.99, step) == min(0.99, (1 + step) / (10 + step))
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, G.parameters())]
    for e, p in zip(expected, ema.average.parameters()):
        torch.testing.assert_close(p, e)
    assert not any(p.requires_grad for p in ema.average.parameters())
    with pytest.raises(ValueError, match="ema_decay"):
        GeneratorEMA(G, decay=1.0)


@pytest.mark.parametrize("decay", [0.5, 0.9, 0.99, 0.999, 0.9999])
def test_the_ema_line_says_what_the_ramp_leaves_of_the_decay(decay):
    """In a run shorter than the ramp the span is the ramp's, whatever the key says;
    past it, about 1 / (1 - decay) steps."""
    end = ramp_end(decay)
    assert ema_decay_at(decay, end) >= decay and (end == 1 or ema_decay_at(decay, end - 1) < decay)
    long = describe_ema(decay, 2 * end)
    assert f"from step {end} on" in long and f"about the last {round(1 / (1 - decay))} steps" in long
    short = describe_ema(decay, end // 2 + 1)
    if end // 2 + 1 < end:
        span = round(1 / (1 - ema_decay_at(decay, end // 2 + 1)))
        assert f"until step {end}" in short and (f"about the last {span} steps" in short or span == 1)
    # 1500 steps: 0.999 and 0.9999 are one average, about the last t/9 steps.
    assert describe_ema(0.999, 1500).split(": ")[-1] == describe_ema(0.9999, 1500).split(": ")[-1]
    assert "about the last 168 steps" in describe_ema(decay, 1500) or ramp_end(decay) <= 1500


def test_training_with_augmentation_ema_and_ada_resumes_exactly(tmp_path):
    """A step with every new option trains to finite losses, reports D's balance, and
    a checkpoint restores the EMA weights and ADA's p: the resumed run equals the
    uninterrupted one."""
    cfg = CUTConfig.tiny("fastcut", d_augment="color,translation,cutout", d_augment_target=0.6, ema_decay=0.9)
    a, b = _images(1, 32, 1), _images(1, 32, 2)
    run = build_train_state(cfg)
    for _ in range(3):
        out = train_step(run, a, b)
    assert {"D_rt", "D_aug_p"} <= set(out) and all(torch.isfinite(v) for v in out.values())
    assert run.G_ema is not None
    assert not torch.equal(next(run.G_ema.average.parameters()), next(run.G.parameters()))
    save_train_state(run, tmp_path / "ckpt")
    after = [train_step(run, a, b)["G"] for _ in range(2)]

    resumed = build_train_state(cfg)
    load_train_state(resumed, tmp_path / "ckpt")
    assert resumed.d_aug_p is not None and run.d_aug_p is not None
    again = [train_step(resumed, a, b)["G"] for _ in range(2)]
    torch.testing.assert_close(torch.stack(again), torch.stack(after))
    for p, q in zip(resumed.G_ema.average.parameters(), run.G_ema.average.parameters()):
        torch.testing.assert_close(p, q)


def test_ada_speed_is_a_config_key_that_sets_how_fast_p_moves():
    # A short run needs p to move within it: the speed is the images for 0 -> 1.
    sets = {"d_augment": "color", "d_augment_target": 0.6}
    fast, slow = (build_train_state(CUTConfig.tiny("fastcut", **sets, d_augment_speed=v)) for v in (40, 20_000))
    for state in (fast, slow):
        assert state.d_aug_p is not None
        for _ in range(4):  # one adjustment (interval 4): D sure of every real
            state.d_aug_p.observe(torch.tensor(1.0), batch=2)
    assert fast.d_aug_p.value == pytest.approx(4 * 2 / 40) and slow.d_aug_p.value == pytest.approx(4 * 2 / 20_000)
    with pytest.raises(ConfigError, match="d_augment_speed=0 must be >= 1"):
        CUTConfig.tiny("fastcut", **sets, d_augment_speed=0)


def test_ada_as_a_guard_leaves_a_balanced_d_alone_and_pulls_back_one_near_winning():
    """fastcut-small-data's ADA (target 0.9): while r_t stays under the target p stays 0,
    D sees plain images and the run is the plain run, step for step; a D that calls
    every real patch real moves p at the configured speed."""
    from jobs.config_file import resolve_config

    shipped = resolve_config(None, "fastcut-small-data", []).loss
    guard = {k: getattr(shipped, k) for k in ("d_augment", "d_augment_target", "d_augment_speed")}
    assert guard["d_augment_target"] == 0.9 and guard["d_augment"]
    plain, guarded = (build_train_state(CUTConfig.tiny("fastcut", lambda_NCE=1.0, **sets)) for sets in ({}, guard))
    a, b = _images(2, seed=1), _images(2, seed=2)
    for _ in range(4):  # an untrained D is far from sure of the reals: r_t < 0.9
        want, got = train_step(plain, a, b), train_step(guarded, a, b)
        assert guarded.d_aug_p is not None and guarded.d_aug_p.value == 0.0 and got["D_rt"] < 0.9
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)
    for _ in range(4):  # one adjustment (interval 4) with D sure of every real
        guarded.d_aug_p.observe(torch.tensor(1.0), batch=2)
    assert guarded.d_aug_p.value == pytest.approx(4 * 2 / 1000)


def test_the_d_won_warning_advises_what_the_run_has_not_tried():
    # One change at a time, in the order measured: FastCUT's NCE weight, D's depth at
    # the crop, D's inputs, CUT's recipe, the guard's target, D.
    fastcut = CUTConfig.from_preset("fastcut")
    first = WinWatch.for_config(fastcut).message(300)
    assert "try --set lambda_NCE=1 " in first and "d_augment" not in first and "--config fastcut-small-data" in first
    cut = WinWatch.for_config(CUTConfig.from_preset("cut")).message(300)
    # CUT carries ADA's guard at 0.95: the next step is the guard that acts sooner.
    assert "try --set d_augment_target=0.9 " in cut
    assert "lambda_NCE" not in cut and "n_layers_D" not in cut  # CUT's NCE weight is 1; D's depth is auto
    unguarded = CUTConfig.from_preset("cut").with_overrides({"d_augment": "", "d_augment_target": 0})
    advice = WinWatch.for_config(unguarded).message(300)
    assert "try ADA as a guard: --set d_augment=color" in advice and "d_augment_target=0.9" in advice
    assert "d_augment_speed=1000" in advice
    # The paper's 3 layers forced at 64 px crops: D sees the whole crop.
    deep = CUTConfig.from_preset("cut").with_overrides({"crop_size": 64, "load_size": 64, "n_layers_D": 3})
    assert "D's 3 layers see most of each 64 px crop: try --set n_layers_D=auto (1 at this crop" in (
        WinWatch.for_config(deep).message(300))
    assert "n_layers_D=auto" not in WinWatch.for_config(deep.with_overrides({"crop_size": 256, "load_size": 286})).message(300)
    augmented = fastcut.with_overrides({"d_augment": "color,cutout", "lambda_NCE": 1.0})
    assert "--preset cut" in WinWatch.for_config(augmented).message(300)  # FastCUT: CUT's identity term
    cut_augmented = CUTConfig.from_preset("cut").with_overrides({"d_augment": "color,cutout", "d_augment_target": 0})
    assert "narrower D" in WinWatch.for_config(cut_augmented).message(300)


def test_win_watch_warns_once_per_win():
    w = WinWatch("lsgan", steps=100)
    assert not w.observe(0.2, 50)
    assert not w.observe(0.001, 50) and not w.observe(0.001, 40)
    assert w.observe(0.001, 10) and w.run == 100  # the 100th step in a row
    assert not w.observe(0.001, 50)  # said once
    assert not w.observe(0.3, 10) and w.run == 0 and w.longest == 150
    assert not w.observe(0.001, 60) and w.observe(0.001, 60)  # a second win is said again
    assert "d_augment" in w.message(400)
    # D's loss a little above the bar, but r_t says D calls every real patch real: won.
    w = WinWatch("lsgan", steps=100)
    assert not w.observe(0.02, 60) and not w.observe(0.02, 60, r_t=0.5) and w.run == 0
    assert not w.observe(0.02, 60, r_t=1.0) and w.observe(0.02, 60, r_t=0.97)
    assert not w.observe(0.2, 10, r_t=1.0) and w.run == 0  # r_t alone is not a win: D may call everything real


def _with_grad(net: torch.nn.Module, norm: float) -> None:
    """Give ``net`` (one parameter) a gradient of exactly this norm (nan allowed)."""
    (p,) = net.parameters()
    p.grad = torch.full_like(p, norm / math.sqrt(p.numel()))


def test_the_gradient_guard_clips_a_spike_at_its_multiple_of_the_running_median():
    net = torch.nn.Linear(4, 1, bias=False)
    guard = GradSpikeGuard(5.0, window=8, warmup=5)
    for n in (1.0, 2.0, 30.0, 4.0, 5.0):  # the warm-up: never clipped, not even 30
        _with_grad(net, n)
        seen, clipped = guard.clip_(net)
        assert seen.item() == pytest.approx(n) and clipped.item() == 0.0
        assert net.weight.grad.norm().item() == pytest.approx(n)
    _with_grad(net, 100.0)  # history 1, 2, 30, 4, 5: median 4, limit 20
    seen, clipped = guard.clip_(net)
    assert seen.item() == pytest.approx(100.0) and clipped.item() == 1.0
    assert net.weight.grad.norm().item() == pytest.approx(20.0, rel=1e-5)
    _with_grad(net, 6.0)  # history now holds the raw 100 too: median 5, limit 25
    assert guard.clip_(net)[1].item() == 0.0 and net.weight.grad.norm().item() == pytest.approx(6.0)
    _with_grad(net, float("nan"))  # a broken step enters the history as its median (5)
    guard.clip_(net)
    assert guard.norms.tolist() == pytest.approx([1, 2, 30, 4, 5, 100, 6, 5])
    # A checkpoint keeps the history and the count: a restored guard clips the same
    # (the window is full: 1, 2, 4, 5, 5, 6, 30, 100, whose lower median is 5).
    again = GradSpikeGuard(5.0, window=8, warmup=5)
    again.load_state_dict(guard.state_dict())
    assert int(again.seen) == 8
    for g in (guard, again):
        _with_grad(net, 1000.0)
        assert g.clip_(net)[1].item() == 1.0 and net.weight.grad.norm().item() == pytest.approx(25.0, rel=1e-5)
    with pytest.raises(ValueError, match="must be > 1"):
        GradSpikeGuard(1.0)
    with pytest.raises(ConfigError, match="grad_clip_median"):
        CUTConfig.tiny("cut", grad_clip_median=0.5)


def test_a_loose_trigger_leaves_large_steps_alone_and_cuts_a_spike_to_its_target():
    """grad_clip_median=10, grad_clip_to=2: what is over 10x the median is cut to 2x it;
    a step at 8x, which a plain 5x clip would cut, passes whole."""
    net = torch.nn.Linear(4, 1, bias=False)
    guard, plain = GradSpikeGuard(10.0, target=2.0, window=8, warmup=4), GradSpikeGuard(5.0, window=8, warmup=4)
    for n in (3.0, 4.0, 5.0, 6.0):
        for g in (guard, plain):
            _with_grad(net, n)
            g.clip_(net)
    median = 4.0  # torch's median of an even count is the lower of the middle two
    for g, want_clipped, want_norm in ((guard, 0.0, 8 * median), (plain, 1.0, 5 * median)):
        _with_grad(net, 8 * median)
        assert g.clip_(net)[1].item() == want_clipped
        assert net.weight.grad.norm().item() == pytest.approx(want_norm, rel=1e-5)
    _with_grad(net, 100.0)  # the history holds the raw 8x step: median 5 now
    assert guard.clip_(net)[1].item() == 1.0
    assert net.weight.grad.norm().item() == pytest.approx(2 * 5.0, rel=1e-5)
    with pytest.raises(ValueError, match="clip target"):
        GradSpikeGuard(5.0, target=6.0)
    with pytest.raises(ConfigError, match="grad_clip_to"):
        CUTConfig.tiny("cut", grad_clip_to=2.0)  # a target without a trigger
    cfg = CUTConfig.tiny("cut", grad_clip_median=10.0, grad_clip_to=2.0)
    built = build_train_state(cfg).grad_guards
    assert {(g.factor, g.target) for g in built.values()} == {(10.0, 2.0)}
    plain_built = build_train_state(CUTConfig.tiny("cut", grad_clip_median=5.0)).grad_guards
    assert {g.target for g in plain_built.values()} == {5.0}


def test_training_with_the_gradient_guard_reports_it_and_resumes_exactly(tmp_path):
    cfg = CUTConfig.tiny("cut", grad_clip_median=3.0)
    a, b = _images(1, 32, 1), _images(1, 32, 2)
    run = build_train_state(cfg)
    for _ in range(3):
        out = train_step(run, a, b)
    assert {"G_clipped", "F_clipped", "G_grad_norm", "F_grad_norm"} <= set(out)
    assert set(run.grad_guards) == {"G", "F"} and int(run.grad_guards["G"].seen) == 3
    save_train_state(run, tmp_path / "ckpt")
    after = [train_step(run, a, b)["G"] for _ in range(2)]
    resumed = build_train_state(cfg)
    load_train_state(resumed, tmp_path / "ckpt")
    assert int(resumed.grad_guards["F"].seen) == 3
    torch.testing.assert_close(resumed.grad_guards["G"].norms, torch.cat([run.grad_guards["G"].norms[:3],
                                                                          torch.zeros(197)]))
    again = [train_step(resumed, a, b)["G"] for _ in range(2)]
    torch.testing.assert_close(torch.stack(again), torch.stack(after))


def test_the_patchnce_watch_warns_once_when_the_loss_climbs_back_to_chance():
    """Street seed 2's logged ten-step means (CUT, 64 px; docs/quality.md): under half of
    chance (ln 256) by step 590, near it from step 600; the watch fires after 50 steps
    of that, once, and again only after a recovery."""
    cfg = CUTConfig.from_preset("cut")
    assert nce_chance(cfg) == pytest.approx(math.log(256))
    assert nce_chance(cfg.with_overrides({"lambda_NCE": 10})) == pytest.approx(10 * math.log(256))
    assert nce_chance(cfg.with_overrides({"nce_bank_size": 4095})) == pytest.approx(math.log(4096))
    watch = NCEWatch.for_config(cfg)
    early = [5.2, 4.7, 4.9, 4.5]  # near chance before it ever fell: a run's start, not a collapse
    assert not any(watch.observe(v, 10) for v in early) and watch.run == 0
    fired = [watch.observe(v, 10) for v in [1.75, 6.70, 4.89, 4.64, 4.63, 4.43, 4.34, 4.23]]
    assert fired == [False, False, False, False, False, True, False, False]  # step 640: 50 steps near chance
    assert "for 70 steps (to step 660)" in watch.message(660)
    assert "grad_clip_median=10 --set grad_clip_to=2" in watch.message(660)
    assert not watch.observe(1.5, 10) and watch.run == 0  # recovered
    assert not any(watch.observe(5.0, 10) for _ in range(4)) and watch.observe(5.0, 10)  # a second collapse
    guarded = NCEWatch.for_config(cfg.with_overrides({"grad_clip_median": 5}))
    assert "guard is on (grad_clip_median=5, cut to 5x)" in guarded.message(1)
    deep = NCEWatch.for_config(cfg.with_overrides({"grad_clip_median": 10, "grad_clip_to": 2}))
    assert "guard is on (grad_clip_median=10, cut to 2x)" in deep.message(1)
