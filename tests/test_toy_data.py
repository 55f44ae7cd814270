import hashlib
import json

import numpy as np
from PIL import Image

from pipelines.toy_data import CLASSES, REAL_PALETTE, SIM_PALETTE, ToySpec, per_class_colour_error, write_toy_dataset
from pipelines.toy_eval import channel_cdfs, histogram_match


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def test_layout_counts_and_determinism(tmp_path):
    spec = ToySpec(size=32, n_train=6, n_test=3, seed=5)
    a = write_toy_dataset(tmp_path / "a", spec)
    b = write_toy_dataset(tmp_path / "b", spec)
    c = write_toy_dataset(tmp_path / "c", ToySpec(size=32, n_train=6, n_test=3, seed=6))
    for split, n in (("trainA", 6), ("trainB", 6), ("testA", 3), ("testB", 3), ("labels/testA", 3), ("labels/trainB", 6)):
        assert len(list((a / split).glob("*.png"))) == n, split
    assert _digest(a) == _digest(b) != _digest(c)
    meta = json.loads((a / "toy.json").read_text())
    assert meta["classes"] == list(CLASSES) and meta["seed"] == 5
    assert "paired truth" in (a / "README.md").read_text()


def test_domains_have_their_styles_and_train_layouts_are_unpaired(tmp_path):
    root = write_toy_dataset(tmp_path, ToySpec(size=48, n_train=4, n_test=2))
    lab = np.asarray(Image.open(root / "labels/testA/00000.png"))
    sim = np.asarray(Image.open(root / "testA/00000.png"))
    real = np.asarray(Image.open(root / "testB/00000.png"))
    assert lab.max() < len(CLASSES) and len(np.unique(lab)) >= 4
    # Sim is exactly the palette; real is near its palette on average per class.
    assert (sim == SIM_PALETTE[lab]).all()
    road = lab == 2
    assert np.abs(real[road].mean(0) - REAL_PALETTE[2]).max() < 25
    labels_a = [np.asarray(Image.open(p)) for p in sorted((root / "labels/trainA").glob("*.png"))]
    labels_b = [np.asarray(Image.open(p)) for p in sorted((root / "labels/trainB").glob("*.png"))]
    assert not any((la == lb).all() for la in labels_a for lb in labels_b)


def test_metric_and_baselines(tmp_path):
    root = write_toy_dataset(tmp_path, ToySpec(size=32, n_train=4, n_test=2))
    lab = np.asarray(Image.open(root / "labels/testA/00000.png"))
    sim = np.asarray(Image.open(root / "testA/00000.png"))
    real = np.asarray(Image.open(root / "testB/00000.png"))
    assert per_class_colour_error(real, real, lab) == 0.0
    assert per_class_colour_error(sim, real, lab) > 50
    matched = histogram_match(sim, channel_cdfs([real]))
    assert per_class_colour_error(matched, real, lab) < per_class_colour_error(sim, real, lab)


def test_the_val_pair_is_other_layouts_and_chooses_checkpoints_unless_told_testA(tmp_path):
    """valA/valB: paired like testA/testB, from layouts of their own; evaluation during
    training scores on it, so the test pair never picks the checkpoint it then scores."""
    from jobs.train.evaluation import plan_eval
    from pipelines.toy_eval import load_toy_test

    root = write_toy_dataset(tmp_path / "t", ToySpec(size=32, n_train=4, n_test=3, n_val=5))
    val, test = load_toy_test(root, split="val"), load_toy_test(root)
    assert len(val.a) == 5 and len(test.a) == 3 and len(list((root / "labels/valA").glob("*.png"))) == 5
    assert not any((v == t).all() for v in val.labels for t in test.labels)
    for a, truth, lab in zip(val.a, val.truth, val.labels):
        assert (a == SIM_PALETTE[lab]).all()  # A: the sim render of its label map
        cls = np.bincount(lab.ravel()).argmax()  # B: its real render (the largest class near its real colour)
        assert np.abs(truth[lab == cls].mean(0) - REAL_PALETTE[cls]).max() < 30, cls
    assert json.loads((root / "toy.json").read_text())["n_val"] == 5

    def chosen(**where):
        plan = plan_eval(10, f"cyclegan:{root}:trainA", eval_real=None, n_images=8, crop_size=32, **where)
        return plan.images["a"]

    assert np.array_equal(chosen(eval_data=None), val.a)
    assert np.array_equal(chosen(eval_data=f"cyclegan:{root}:valA"), val.a)
    assert np.array_equal(chosen(eval_data=str(root / "testA")), test.a)
    # A dataset without a val pair (written before it existed) still scores on testA.
    old = write_toy_dataset(tmp_path / "old", ToySpec(size=32, n_train=4, n_test=3))
    assert not (old / "valA").exists()
    plan = plan_eval(10, f"cyclegan:{old}:trainA", eval_data=None, eval_real=None, n_images=8, crop_size=32)
    assert np.array_equal(plan.images["a"], load_toy_test(old).a)
