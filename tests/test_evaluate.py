"""Evaluation: FID/KID through the Ray Data feature job and torchmetrics, label
preservation, the toy benchmark, and the errors a user meets first."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cut_core.errors import RaycutError
from jobs.cli import main
from jobs.evaluate import EvaluateOptions, label_preservation, run_evaluate
from pipelines.feature_extractors import (
    INCEPTION_FILE,
    ExtractorSpec,
    FIDInceptionPool3,
    features_of_images,
    load_extractor,
    torchscript_spec,
)
from pipelines.fid import fid_kid
from pipelines.local_images import load_folder
from pipelines.segmentation_metrics import confusion_matrix, scores, to_train_ids
from pipelines.toy_data import ToySpec, write_toy_dataset
from pipelines.toy_eval import HISTOGRAM, IDENTITY, TRUTH, evaluate_toy


class SmallFeatures(torch.nn.Module):
    """A random conv net standing in for Inception: (N, 3, 64, 64) in [0, 1] -> (N, 32)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = torch.nn.Conv2d(3, 16, 3, stride=2)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(torch.relu(self.conv2(torch.relu(self.conv1(x * 2 - 1)))), 1).flatten(1)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), ToySpec(size=32, n_train=48, n_test=24, seed=3))


@pytest.fixture(scope="module")
def extractor(tmp_path_factory):
    path = tmp_path_factory.mktemp("fx") / "small.pt"
    torch.jit.save(torch.jit.script(SmallFeatures()), str(path))
    return path


def _features(extractor_path, images) -> np.ndarray:
    net = load_extractor(torchscript_spec(str(extractor_path), 64))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        return net(F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)).numpy()


def test_fid_of_a_set_against_itself_is_zero(toy, extractor):
    real = _features(extractor, load_folder(toy / "trainB"))
    got = fid_kid(real, real)
    assert abs(got["fid"]) < 1e-3 and abs(got["kid"]) < 1e-3, got


def test_fid_and_kid_rank_a_shifted_set_worse(toy, extractor):
    real = _features(extractor, load_folder(toy / "trainB"))
    same_style = fid_kid(real, _features(extractor, load_folder(toy / "testB")))  # other layouts, same style
    shifted = fid_kid(real, _features(extractor, load_folder(toy / "testA")))  # the sim style
    assert same_style["fid"] < shifted["fid"] / 3, (same_style, shifted)
    assert same_style["kid"] < shifted["kid"], (same_style, shifted)


@pytest.mark.cost(30)
def test_ray_data_job_matches_torchmetrics_on_the_images(toy, extractor, tmp_path, local_ray):
    """The whole path (files -> Ray Data actors -> features -> statistics) gives what
    torchmetrics computes when it runs the same extractor on the images itself."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    report = run_evaluate(EvaluateOptions(real=str(toy / "trainB"), fake=str(toy / "testA"), feature_extractor=str(extractor),
                                          feature_size=64, batch_size=5, out=str(tmp_path / "r.json")))
    row = report["rows"]["model"]
    net = load_extractor(torchscript_spec(str(extractor), 64))  # the user's module, with its num_features

    def images(folder):
        x = torch.from_numpy(np.stack(load_folder(folder))).permute(0, 3, 1, 2).float() / 255
        return F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)

    real, fake = images(toy / "trainB"), images(toy / "testA")
    fid = FrechetInceptionDistance(feature=net)
    kid = KernelInceptionDistance(feature=net, subsets=1, subset_size=len(fake))  # one subset of all: no randomness
    for metric in (fid, kid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    assert row["fid"] == pytest.approx(float(fid.compute()), rel=1e-4)
    # KID with subsets of the whole smaller set: the same for any draw of the larger.
    small = run_evaluate(EvaluateOptions(real=str(toy / "testB"), fake=str(toy / "testA"), feature_extractor=str(extractor),
                                         feature_size=64, kid_subsets=3, out=str(tmp_path / "k.json")))
    kid_same = KernelInceptionDistance(feature=net, subsets=1, subset_size=len(fake))
    kid_same.update(images(toy / "testB"), real=True)
    kid_same.update(fake, real=False)
    assert small["rows"]["model"]["kid"] == pytest.approx(float(kid_same.compute()[0]), rel=1e-4)
    assert "TorchScript: small.pt sha256:" in report["extractor"]
    assert json.loads((tmp_path / "r.json").read_text())["rows"]["model"]["fid"] == row["fid"]


def test_segmentation_metrics_match_a_hand_computed_confusion_matrix():
    target = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 0, 2]])
    cm = confusion_matrix(pred, target, 3)
    # (true, predicted): (0,0) (0,1) (1,1) (1,1) (2,0); the 255 pixel is ignored.
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    got = scores(cm)
    assert got["mIoU"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert got["pixel_acc"] == pytest.approx(3 / 5)
    assert got["class_acc"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    # Cityscapes label ids -> train ids: road 7 -> 0, car 26 -> 13, unlabeled 0 -> ignored.
    assert to_train_ids(np.array([[7, 26, 0]]), "cityscapes-ids").tolist() == [[0, 13, 255]]
    assert to_train_ids(np.array([[3, 18, 19]]), "train-ids").tolist() == [[3, 18, 255]]


class ColourSegmenter(torch.nn.Module):
    """Class = the strongest RGB channel (train ids 0, 1, 2); the other 16 classes never win."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, torch.full_like(x[:, :1], -100.0).expand(-1, 16, -1, -1)], 1)


def test_label_preservation_on_a_cityscapes_layout(tmp_path):
    seg = tmp_path / "seg.pt"
    torch.jit.save(torch.jit.script(ColourSegmenter()), str(seg))
    ids = np.zeros((64, 128), np.uint8)
    ids[:, :40], ids[:, 40:90], ids[:, 90:] = 7, 8, 11  # road, sidewalk, building: train ids 0, 1, 2
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    for name, img in (("good", colours[to_train_ids(ids, "cityscapes-ids")]),
                      ("bad", colours[(to_train_ids(ids, "cityscapes-ids") + 1) % 3])):
        fake = tmp_path / name / "aachen"
        fake.mkdir(parents=True)
        Image.fromarray(img).save(fake / "aachen_000000_000019_leftImg8bit.png")
    labels = tmp_path / "gtFine" / "aachen"
    labels.mkdir(parents=True)
    Image.fromarray(ids).save(labels / "aachen_000000_000019_gtFine_labelIds.png")
    Image.fromarray(np.zeros((64, 128, 3), np.uint8)).save(labels / "aachen_000000_000019_gtFine_color.png")  # a decoy
    got = {}
    for name in ("good", "bad"):
        opts = EvaluateOptions(fake=str(tmp_path / name), labels=str(tmp_path / "gtFine"), seg_model=str(seg))
        got[name] = label_preservation(opts, [str(p) for p in (tmp_path / name).rglob("*.png")])
    assert got["good"]["mIoU"] > 0.95 and got["good"]["pixel_acc"] > 0.97, got
    assert got["bad"]["mIoU"] < 0.05, got
    assert got["good"]["size_hw"] == [128, 256]


def test_toy_metrics_rank_truth_then_histogram_then_identity(toy):
    rows = evaluate_toy(toy, {})
    truth, hist, ident = rows[TRUTH], rows[HISTOGRAM], rows[IDENTITY]
    for metric in ("colour_err", "L1"):
        assert truth[metric] < hist[metric] < ident[metric], (metric, rows)
    for metric in ("PSNR", "SSIM"):
        assert truth[metric] > hist[metric] > ident[metric], (metric, rows)
    # The segmenter, trained on real-style images only, reads the truth best.
    assert truth["mIoU"] > 0.5 and truth["mIoU"] > max(hist["mIoU"], ident["mIoU"]) + 0.2, rows


def test_ssim_is_torchmetrics_ssim_on_real_and_random_images(toy):
    """raycut's own SSIM (pipelines.ssim, kept out of torchmetrics for its import cost)
    is torchmetrics' with its defaults: on the toy truth against histogram matching,
    on noise, on an image against itself (1), and per image."""
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    from pipelines.ssim import ssim, ssim_per_image
    from pipelines.toy_eval import baselines, load_toy_test

    test = load_toy_test(toy, limit=6)
    as_unit = lambda x: torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).double() / 255.0  # noqa: E731
    truth, hist = as_unit(test.truth), as_unit(baselines(toy, test)[HISTOGRAM])
    g = torch.Generator().manual_seed(0)
    noise_a, noise_b = (torch.rand(3, 3, 37, 29, generator=g, dtype=torch.float64) for _ in range(2))
    for p, t in ((hist, truth), (noise_a, noise_b), (noise_a, (noise_a + 0.1 * noise_b).clamp(0, 1)), (truth, truth)):
        want = tm_ssim(p, t, data_range=1.0)
        assert ssim(p, t).item() == pytest.approx(want.item(), abs=1e-9)
        per = tm_ssim(p, t, data_range=1.0, reduction="none")
        torch.testing.assert_close(ssim_per_image(p, t), per, rtol=0, atol=1e-9)
    assert ssim(truth, truth).item() == pytest.approx(1.0)
    with pytest.raises(RaycutError, match="at least 6x6"):
        ssim(truth[..., :5, :8], truth[..., :5, :8])


def test_toy_command_scores_a_translation_folder_and_logs_to_mlflow(toy, tmp_path, monkeypatch, capsys):
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())).info.run_id
    fake = tmp_path / "translated" / "testA"
    shutil.copytree(toy / "testB", fake)  # a perfect "translation": the paired truth
    assert main(["evaluate", "--toy", str(toy), "--fake", str(tmp_path / "translated"), "--run-id", run_id]) == 0
    out = capsys.readouterr().out
    assert "baseline/identity" in out and "baseline/histogram" in out and "model" in out
    report = json.loads((tmp_path / "translated" / "evaluation.json").read_text())
    assert report["rows"]["model"]["colour_err"] == pytest.approx(0.0)
    logged = client.get_run(run_id).data.metrics
    assert logged["eval/colour_err"] == pytest.approx(0.0)
    assert logged["eval/baseline/identity/colour_err"] == pytest.approx(report["rows"][IDENTITY]["colour_err"])
    assert "evaluation" in {a.path for a in client.list_artifacts(run_id)}
    mlflow.set_tracking_uri(None)
    # A second format's translation beside the first: which to score is not guessed.
    first = sorted(fake.iterdir())[0]
    Image.open(first).save(first.with_suffix(".jpg"))
    assert main(["evaluate", "--toy", str(toy), "--fake", str(tmp_path / "translated")]) == 2
    err = capsys.readouterr().err
    assert f"holds two translations of testA/{first.stem} ({first.stem}.jpg, {first.name})" in err
    assert err.count("\n") == 1, err


def test_missing_inception_weights_say_what_to_fetch(tmp_path, monkeypatch, capsys, toy):
    monkeypatch.setenv("RAYCUT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert main(["evaluate", "--real", str(toy / "trainB"), "--fake", str(toy / "testA")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "pytorch-fid/releases/download/fid_weights/" + INCEPTION_FILE in err
    assert str(tmp_path / "cache" / INCEPTION_FILE) in err


def test_weights_that_are_not_pytorch_fids_are_refused(tmp_path, capsys, toy):
    """The Inception architecture is pytorch-fid's own (a state dict in its key names
    loads), but a file that is not the published one would give FIDs nobody can
    compare with the paper's: refused with a clear line."""
    wrong = tmp_path / INCEPTION_FILE
    torch.save(FIDInceptionPool3().inception.state_dict(), wrong)  # random weights, pytorch-fid's keys
    reloaded = load_extractor(ExtractorSpec(path=str(wrong), kind="inception"))
    with torch.no_grad():
        assert reloaded(torch.rand(1, 3, 299, 299)).shape == (1, 2048)
    assert main(["evaluate", "--real", str(toy / "trainB"), "--fake", str(toy / "testA"),
                 "--inception-weights", str(wrong)]) == 2
    assert "is not pytorch-fid's Inception file" in capsys.readouterr().err


@pytest.mark.parametrize("args, words", [
    (["--toy", "T", "--real", "R"], "--real SRC --fake SRC"),
    (["--real", "R"], "--real needs --fake"),
])
def test_bad_options_are_one_line(args, words, capsys):
    assert main(["evaluate", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err


def test_user_networks_load_from_torch_export_too_and_garbage_is_one_line(tmp_path, toy, extractor, capsys):
    from torch.export import Dim

    exported = tmp_path / "small.pt2"
    program = torch.export.export(SmallFeatures(), (torch.rand(2, 3, 64, 64),), dynamic_shapes={"x": {0: Dim.DYNAMIC}})
    torch.export.save(program, str(exported))
    images = load_folder(toy / "testA")[:4]
    np.testing.assert_allclose(_features(exported, images), _features(extractor, images), rtol=1e-4, atol=1e-5)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a network")
    assert main(["evaluate", "--real", str(toy / "trainB"), "--fake", str(toy / "testA"),
                 "--feature-extractor", str(garbage)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a loadable TorchScript or torch.export file" in err


def test_training_time_kid_on_held_out_images(toy, extractor, tmp_path):
    """Off the toy data, --eval-every scores KID between G's translations of held-out A
    images and held-out B images; a G that outputs the B images exactly would score ~0."""
    from cut_core.networks import build_generator
    from jobs.train.evaluation import Evaluator, plan_eval
    from tests.conftest import tiny

    plain = tmp_path / "plainA"
    shutil.copytree(toy / "testA", plain)  # not a toy root: no toy.json beside it
    with pytest.raises(Exception, match="--eval-data"):
        plan_eval(5, str(plain), eval_data=None, eval_real=None, n_images=8, crop_size=32)
    plan = plan_eval(5, str(plain), eval_data=str(plain), eval_real=str(toy / "testB"), n_images=8, crop_size=32,
                     feature_extractor=str(extractor))
    assert plan.key == "eval_kid" and plan.order == "min" and plan.images["a"].shape == (8, 32, 32, 3)
    G = build_generator(tiny("cut").model)
    got = Evaluator(plan)(G, torch.device("cpu"))
    assert set(got) == {"eval_kid", "eval_kid_se", "eval_fid"} and np.isfinite(got["eval_kid"]) and got["eval_fid"] > 0
    # KID's error on these 8 images, which choosing a checkpoint has to know.
    assert 0 < got["eval_kid_se"] < abs(got["eval_kid"]) + 1


@pytest.mark.cost(15)
def test_toy_kid_features_put_real_renders_nearest_and_load_as_a_users_extractor(tmp_path):
    """The toy data's own KID feature space (the segmenter's, standardised on trainB and
    squashed): it loads as ``--feature-extractor`` does, its features are bounded, and
    KID ranks another set of real renders nearer to trainB than histogram matching or the
    sim renders; it is rewritten only when the segmenter is newer."""
    import os

    from pipelines.toy_eval import baselines, load_toy_test
    from pipelines.toy_segmenter import toy_feature_extractor

    root = write_toy_dataset(tmp_path / "toy", ToySpec(size=32, n_train=32, n_test=16, seed=1))
    path = toy_feature_extractor(root)
    net = load_extractor(torchscript_spec(str(path), 32))
    assert net.num_features == 48  # mean and spread of the segmenter's 24 hidden channels

    def kid(images) -> float:
        feats = features_of_images(net, images)
        assert feats.shape == (len(images), 48) and np.abs(feats).max() <= 1
        return fid_kid(reference, feats)["kid"]

    reference = features_of_images(net, load_folder(root / "trainB")[:16])
    test = load_toy_test(root)
    reals, histogram, sims = kid(list(test.truth)), kid(list(baselines(root, test)[HISTOGRAM])), kid(list(test.a))
    assert reals < histogram / 3 and reals < sims / 3, (reals, histogram, sims)
    # Kept while the segmenter is unchanged; written again once the segmenter is newer.
    stamp = path.stat().st_mtime_ns
    assert toy_feature_extractor(root) == path and path.stat().st_mtime_ns == stamp
    seg = root / ".raycut-toy-segmenter" / "segmenter.safetensors"
    os.utime(seg, ns=(stamp + 10**9, stamp + 10**9))
    toy_feature_extractor(root)
    assert path.stat().st_mtime_ns > stamp
