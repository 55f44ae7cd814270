"""SinCUT: the StyleGAN2-style networks, the R1 penalty, the single-image samplers, a
short run on the real Monet -> Etretat pair, and the `raycut train` / `raycut
translate` path with one image per domain."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cut_core import losses
from cut_core.config import CUTConfig, DataConfig
from cut_core.errors import ConfigError, RaycutError
from cut_core.images import to_model_input, to_uint8_images
from cut_core.model_dir import load_generator, read_model_config, save_generator
from cut_core.networks import build_discriminator, build_generator
from cut_core.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator
from cut_core.training import build_train_state, train_step
from cut_core.translate import translate
from pipelines.single_image import load_single_image, preview, sample_minibatch
from tests.conftest import tiny

# The real pair: ../shared/data beside the checkout when it is there, else the 256 px
# copies kept in tests/data (so a checkout alone runs these tests; they work at 32 px
# crops of a 192 px preview either way).
_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "monet2etretat"
PAIR = _SHARED if (_SHARED / "trainA" / "monet.jpg").is_file() else Path(__file__).parent / "data" / "monet2etretat"
PAINTING, PHOTO = PAIR / "trainA" / "monet.jpg", PAIR / "trainB" / "etretat-normandy-france.jpg"




# ---- networks -----------------------------------------------------------------------


def test_official_preset_values_and_widths():
    cfg = CUTConfig.from_preset("sincut")
    assert (cfg.model.netG, cfg.model.netD, cfg.model.ngf, cfg.model.ndf) == ("stylegan2", "stylegan2", 10, 8)
    assert cfg.loss.nce_layers == (0, 2, 4) and cfg.loss.num_patches == 1 and cfg.loss.lambda_NCE == 4
    assert cfg.loss.nce_includes_all_negatives_from_minibatch and cfg.loss.gan_mode == "nonsaturating"
    assert (cfg.loss.lambda_R1, cfg.loss.lambda_identity) == (1, 1)
    assert (cfg.optim.lr, cfg.optim.beta1, cfg.optim.beta2, cfg.optim.batch_size) == (0.002, 0.0, 0.99, 16)
    assert (cfg.data.preprocess, cfg.data.load_size, cfg.data.crop_size) == ("zoom_and_patch", 1024, 64)
    G, D = build_generator(cfg.model), build_discriminator(cfg)
    # The official widths at ngf 10 / ndf 8 and crop 64: G 80 -> 160 channels; D 32 ... 384.
    assert G.feature_channels((0, 1, 2, 4)) == [3, 80, 160, 160]
    assert [c.conv2[-2].weight.shape[0] for c in D.convs[1:]] == [64, 128, 256, 384]
    paper = CUTConfig.from_preset("sincut-paper")
    assert (paper.data.crop_size, paper.d_tile_size, paper.data.random_width_min, paper.data.load_size) == (128, 64, 384, 1024)


def test_generator_and_discriminator_shapes():
    G = StyleGAN2Generator(ngf=4, n_blocks=6, n_down=1).eval()
    x = torch.rand(2, 3, 36, 52) * 2 - 1  # any even size: one downsampling
    y, feats = G.forward_and_encode(x, (0, 2, 4))
    assert y.shape == x.shape
    assert [tuple(f.shape) for f in feats] == [(2, 3, 36, 52), (2, 64, 18, 26), (2, 64, 18, 26)]
    assert [f.shape[1] for f in feats] == G.feature_channels((0, 2, 4))
    assert torch.equal(feats[0], x)  # layer 0 is the image itself, as the official encoder
    with torch.no_grad():
        assert torch.equal(G(x), G(x))  # no noise at eval time: a translation is a function
    with pytest.raises(ValueError, match="multiples of 2"):
        G(torch.rand(1, 3, 33, 52))

    D = StyleGAN2Discriminator(ndf=8, size=32)
    assert D(torch.rand(3, 3, 32, 32)).shape == (3, 1, 1, 1)
    big = torch.rand(2, 3, 64, 96)
    scores = D(big)
    assert scores.shape == (2, 1, 2, 3)  # one score per 32x32 tile
    assert torch.allclose(scores[1, 0, 1, 2], D(big[1:, :, 32:64, 64:96]).flatten()[0], atol=1e-5)
    with pytest.raises(ValueError, match="not a multiple of 32"):
        D(torch.rand(1, 3, 48, 64))
    with pytest.raises(ConfigError, match="power of two"):
        CUTConfig.from_preset("sincut").with_overrides({"crop_size": 48})


def test_cut_resnet_generator_is_an_option():
    cfg = tiny("sincut", netG="resnet", n_blocks=2, nce_layers="0,4,8")
    state = build_train_state(cfg)
    assert type(state.G).__name__ == "ResnetGenerator" and type(state.D).__name__ == "StyleGAN2Discriminator"
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = train_step(state, x, x.flip(0))
    assert all(torch.isfinite(v) for v in out.values())


def test_r1_penalty_matches_autograd_on_a_small_discriminator():
    torch.manual_seed(0)
    D = StyleGAN2Discriminator(ndf=4, size=8).double()
    real = torch.rand(3, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    r1 = losses.r1_penalty(D(real), real)  # (B,)
    # Reference: the full Jacobian of D's scores w.r.t. each image, squared and summed.
    jac = torch.autograd.functional.jacobian(lambda x: D(x).flatten(), real.detach())  # (B, B, 3, 8, 8)
    expected = torch.stack([jac[i, i].pow(2).sum() for i in range(3)])
    assert torch.allclose(r1, expected, rtol=1e-9)
    assert torch.all(jac[0, 1] == 0)  # images do not see each other
    # The penalty trains D: its gradient w.r.t. a weight matches a finite difference.
    w = D.final_linear[1].weight
    (g,) = torch.autograd.grad(r1.sum(), w)
    direction = torch.randn_like(w)
    eps = 1e-6
    with torch.no_grad():
        w += eps * direction
    plus = losses.r1_penalty(D(real), real).sum()
    with torch.no_grad():
        w -= 2 * eps * direction
    minus = losses.r1_penalty(D(real), real).sum()
    assert float((plus - minus).detach() / (2 * eps)) == pytest.approx(float((g * direction).sum()), rel=1e-5)


def test_model_directory_records_the_architecture(tmp_path):
    cfg = tiny("sincut")
    G = build_generator(cfg.model)
    save_generator(G, tmp_path / "m", model_config=cfg.model, training_config=cfg)
    assert read_model_config(tmp_path / "m")["architecture"] == "stylegan2_generator"
    back = load_generator(tmp_path / "m")
    x = torch.rand(1, 3, 40, 60) * 2 - 1
    with torch.no_grad():
        assert torch.equal(back(x), G.eval()(x))


# ---- samplers -----------------------------------------------------------------------


def _image(h: int = 300, w: int = 400) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_zoom_and_patch_sizes_scale_range_and_distinct_crops():
    img = _image()
    data = DataConfig(preprocess="zoom_and_patch", crop_size=32, load_size=1024)
    rng = np.random.default_rng(1)
    scales, gridded = [], 0
    for _ in range(200):
        mb = sample_minibatch(img, data, 16, rng)
        assert mb.images.shape == (16, 32, 32, 3) and mb.images.dtype == np.uint8
        sy, sx = mb.scale
        scales += [sy, sx]
        assert mb.scaled_size == (round(300 * sy), round(400 * sx))
        ys, xs = mb.corners[:, 0], mb.corners[:, 1]
        assert len(set(zip(ys.tolist(), xs.tolist()))) == 16  # distinct places in every batch
        if (mb.scaled_size[0] // 32) * (mb.scaled_size[1] // 32) >= 16:
            # Room for 16 grid cells: no two crops overlap, so none is another's false negative.
            apart = (np.abs(ys[:, None] - ys[None]) >= 32) | (np.abs(xs[:, None] - xs[None]) >= 32)
            assert apart[~np.eye(16, dtype=bool)].all()
            gridded += 1
        assert all(0 <= y <= mb.scaled_size[0] - 32 and 0 <= x <= mb.scaled_size[1] - 32 for y, x in mb.corners)
    assert min(scales) >= 1 / 3 - 1e-3 and max(scales) <= 1 + 1e-9
    assert min(scales) < 0.4 and max(scales) > 0.95  # the whole range is used
    assert 0 < gridded < 200  # both the grid and the small-image fallback were drawn
    # A crop is the scaled image at its corner (flipped back when it was flipped).
    mb = sample_minibatch(img, data, 4, np.random.default_rng(2))
    scaled = np.asarray(Image.fromarray(img).resize(mb.scaled_size[::-1], Image.BILINEAR))
    y, x = mb.corners[0]
    crop = mb.images[0][:, ::-1] if mb.flipped[0] else mb.images[0]
    assert np.array_equal(crop, scaled[y : y + 32, x : x + 32])


def test_random_width_recipe_and_the_small_image_fallback():
    img = _image(600, 800)
    data = CUTConfig.from_preset("sincut-paper").data
    rng = np.random.default_rng(3)
    widths = []
    for _ in range(100):
        mb = sample_minibatch(img, data, 16, rng)
        assert mb.images.shape == (16, 128, 128, 3)
        widths.append(mb.scaled_size[1])
        assert mb.scaled_size[0] == round(600 * mb.scaled_size[1] / 800)  # aspect kept
        assert len({(int(y), int(x)) for y, x in mb.corners}) == 16  # distinct places
    assert 384 <= min(widths) < 450 and 950 < max(widths) <= 1024
    # A 384 x 288 image holds 6 grid cells: crops then sit at distinct corners.
    small = sample_minibatch(_image(90, 120), DataConfig(preprocess="zoom_and_patch", crop_size=32,
                                                          random_scale_max=1.0), 16, rng)
    assert len({(int(y), int(x)) for y, x in small.corners}) == 16
    with pytest.raises(RaycutError, match="lower batch_size or crop_size"):
        sample_minibatch(_image(33, 33), DataConfig(preprocess="zoom_and_patch", crop_size=32, random_scale_max=1.0),
                         16, rng)


# ---- the real pair ------------------------------------------------------------------


def _edges(img: np.ndarray) -> np.ndarray:
    """Gradient magnitude of the layout: the image averaged over 4x4 blocks first (so
    texture and the short run's speckle do not count), a 2-block border dropped."""
    h, w = img.shape[0] // 4 * 4, img.shape[1] // 4 * 4
    g = img[:h, :w].astype(np.float64).mean(axis=2).reshape(h // 4, 4, w // 4, 4).mean(axis=(1, 3))
    gx, gy = np.zeros_like(g), np.zeros_like(g)
    gx[:, 1:-1] = g[:, 2:] - g[:, :-2]
    gy[1:-1] = g[2:] - g[:-2]
    return np.hypot(gx, gy)[2:-2, 2:-2]


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.cost(35)
def test_short_run_on_the_real_pair_learns_and_keeps_the_painting_layout():
    painting = preview(load_single_image(str(PAINTING)), width=192)[0]  # small resolution for the CPU
    photo = preview(load_single_image(str(PHOTO)), width=192)[0]
    # ndf 1: StyleGAN2's D widens as it downsamples (256 * ndf / resolution channels), so
    # at ndf 4 its 64-256-channel layers were most of the step; what is tested is G and
    # F. The bars below hold at ndf 1 as at 4 (2026-12-04, the family-23 EPYC, seeds 0-2:
    # NCE 0.91-0.94x, identity 0.58-0.67x, painting 0.51-0.89 against photo 0.15-0.17;
    # ndf 4: 0.89-0.93x, 0.66-0.73x, 0.60-0.82 against 0.09-0.20), in 55 s instead of 88.
    cfg = tiny("sincut", netF_nc=32, batch_size=8, seed=0, ndf=1)
    state = build_train_state(cfg)
    rng = np.random.default_rng(0)
    history = []
    for _ in range(80):
        a = sample_minibatch(painting, cfg.data, 8, rng).images
        b = sample_minibatch(photo, cfg.data, 8, rng).images
        out = train_step(state, to_model_input(a), to_model_input(b))
        history.append({k: float(v) for k, v in out.items()})
    assert all(np.isfinite(v) for h in history for v in h.values())
    first = {k: np.mean([h[k] for h in history[:10]]) for k in ("NCE", "idt")}
    last = {k: np.mean([h[k] for h in history[-20:]]) for k in ("NCE", "idt")}
    # Measured over seeds and thread counts: NCE -5 to -20 %, identity L1 -17 to -35 %.
    assert last["NCE"] < 0.98 * first["NCE"], (first, last)
    assert last["idt"] < 0.9 * first["idt"], (first, last)

    # At test time G takes the whole painting; its edges are the painting's, not the photo's.
    state.G.eval()
    with torch.no_grad():
        out = to_uint8_images(state.G(to_model_input(painting[None])))[0]
    assert out.shape == painting.shape
    photo_same = np.asarray(Image.fromarray(photo).resize(painting.shape[1::-1], Image.BICUBIC))
    e = _edges(out)
    with_painting, with_photo = _corr(e, _edges(painting)), _corr(e, _edges(photo_same))
    # The failure this guards against is G painting the photo's layout: the photo itself
    # as the output reads 0.14 with the painting. Measured over seeds and thread counts:
    # 0.52-0.79 with the painting and 0.14-0.20 with the photo on the Xeon with AMX; on
    # an AVX-512 bf16 EPYC 0.40-0.88 and 0.08-0.20 (12 runs), and 0.38 against 0.19 once
    # in `make test` (an untrained G reads 0.33-0.63 and 0.03-0.18: the layout is kept,
    # not learnt, so the bar asks for it to stay well above the photo's).
    assert with_painting > 0.3 and with_painting > with_photo + 0.1, (with_painting, with_photo)


@pytest.mark.cost(50)
@pytest.mark.slow
def test_raycut_train_with_one_image_per_domain_and_its_model_on_the_whole_painting(local_ray, tmp_path, monkeypatch,
                                                                                       capsys):
    """The same path as CUT: `raycut train --preset sincut --data-a IMAGE --data-b IMAGE`
    on Ray Train with crops from Ray Data, then its model on the whole painting."""
    from jobs.train.driver import run_train
    from jobs.train.spec import Schedule, TrainOptions

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    sets = ("ngf=4", "ndf=1", "netF_nc=32", "crop_size=32", "batch_size=4")  # ndf 1: the preset's D is 384 wide here
    result = run_train(TrainOptions(preset="sincut", data_a=str(PAINTING), data_b=str(PHOTO), sets=sets, steps=6,
                                    schedule=Schedule(checkpoint_every=6), name="monet",
                                    storage_path=str(tmp_path / "raycut-runs")))
    assert result.metrics["step"] == 6
    run = tmp_path / "raycut-runs" / "monet"
    spec = json.loads((run / "run.json").read_text())
    assert spec["config"]["model"]["netG"] == "stylegan2" and spec["steps_per_epoch"] == 100_000 // 4
    model = next(run.rglob("model/config.json")).parent
    assert json.loads((model / "config.json").read_text())["architecture"] == "stylegan2_generator"

    # At test time G takes the whole painting (`raycut translate` of one image file is
    # tested in test_translate; here the trained model directory itself).
    G = load_generator(model)
    painting = load_single_image(str(PAINTING))
    with torch.no_grad():
        made = to_uint8_images(translate(G, to_model_input(painting[None])))[0]
    assert made.shape == painting.shape

    # Two images in a domain: one clear line, before anything starts (the CLI's own
    # entry point, in this process: the check runs before Ray or MLflow).
    from jobs.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(["train", "--preset", "sincut", "--data-a", str(PAIR), "--data-b", str(PHOTO), "--steps", "1"])
    err = capsys.readouterr().err
    assert code != 0 and "one image per domain" in err and len(err.strip().splitlines()) == 1
