import hashlib
import json

import numpy as np
import pytest
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


def test_the_held_out_coast_pair_is_another_task_with_the_same_layout_and_metrics(tmp_path):
    """`raycut toy-data --scene coast`: the pair held out from raycut's tests (none trains
    on it). Its sim render is a cartoon whose outlines sit exactly on the class
    boundaries; its real render has no outlines and a light that changes with height;
    the truth, histogram and identity rows rank as on the street pair."""
    from jobs.cli import main
    from pipelines.toy_data import COAST_CLASSES, COAST_SIM_PALETTE, OUTLINE, SCENES
    from pipelines.toy_eval import evaluate_toy

    assert {len(s.classes) for s in SCENES.values()} == {len(CLASSES)}  # the toy segmenter's outputs fit every scene
    with pytest.raises(ValueError, match="unknown toy scene 'beach'; choose from street, coast, aerial"):
        write_toy_dataset(tmp_path / "x", ToySpec(scene="beach"))
    assert main(["toy-data", "--out", str(tmp_path / "c"), "--size", "48", "--n", "4", "--n-test", "6", "--n-val", "0",
                 "--scene", "coast"]) == 0
    root = tmp_path / "c"
    meta = json.loads((root / "toy.json").read_text())
    assert meta["scene"] == "coast" and meta["classes"] == list(COAST_CLASSES) and "held-out" in (root / "README.md").read_text()
    street = write_toy_dataset(tmp_path / "s", ToySpec(size=48, n_train=4, n_test=6))
    assert _digest(street / "testA") != _digest(root / "testA")
    for name in (f"{i:05d}.png" for i in range(6)):
        lab = np.asarray(Image.open(root / "labels/testA" / name))
        sim = np.asarray(Image.open(root / "testA" / name)).astype(np.float32)
        real = np.asarray(Image.open(root / "testB" / name)).astype(np.float32)
        assert lab.max() < len(COAST_CLASSES) and {0, 1, 3} <= set(np.unique(lab))  # sky, sea, a cliff
        edge = np.zeros(lab.shape, bool)
        edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
        edge[:-1, :] |= lab[:-1, :] != lab[1:, :]
        assert (sim[edge] == OUTLINE).all() and (sim[~edge] == COAST_SIM_PALETTE[lab[~edge]]).all()
        assert real[edge].mean() > 3 * OUTLINE  # no outlines in the photo
        sky = lab == 0  # dusk: the sky is redder than blue at its top rows, the sea bluer than red
        assert real[sky].mean(0)[0] > real[sky].mean(0)[2] and real[lab == 1].mean(0)[2] > real[lab == 1].mean(0)[0]
    rows = evaluate_toy(root, {}, label_preservation=False)
    err = {k: v["colour_err"] for k, v in rows.items()}
    assert err["truth (paired real)"] == 0 and err["baseline/histogram"] < err["baseline/identity"], err


def test_the_aerial_pair_is_a_map_against_a_hazy_satellite_photo(tmp_path):
    """The second held-out pair: the sim render is the map's flat palette, and the real
    render is lifted by a haze (no channel of any class as dark as its palette allows)
    with a shadow that varies within a class; the baselines rank as on the other pairs."""
    from pipelines.toy_data import AERIAL_CLASSES, AERIAL_SIM_PALETTE
    from pipelines.toy_eval import evaluate_toy

    root = write_toy_dataset(tmp_path / "a", ToySpec(size=48, n_train=4, n_test=6, scene="aerial"))
    assert json.loads((root / "toy.json").read_text())["classes"] == list(AERIAL_CLASSES)
    for name in (f"{i:05d}.png" for i in range(6)):
        lab = np.asarray(Image.open(root / "labels/testA" / name))
        sim = np.asarray(Image.open(root / "testA" / name))
        real = np.asarray(Image.open(root / "testB" / name)).astype(np.float32)
        assert {0, 3, 4} <= set(np.unique(lab))  # meadow, a road, a river
        assert (sim == AERIAL_SIM_PALETTE[lab]).all()
        assert real[lab == 4].mean() > 40  # haze lifts the dark water (45, 70, 80) ...
        assert real[lab == 0].mean(0)[2] > 70  # ... and blues the meadow (blue 70 in the palette)
    rows = evaluate_toy(root, {}, label_preservation=False)
    err = {k: v["colour_err"] for k, v in rows.items()}
    assert err["truth (paired real)"] == 0 and err["baseline/histogram"] < err["baseline/identity"], err


def test_writing_again_replaces_the_toy_and_refuses_a_folder_of_other_files(tmp_path, capsys):
    """A toy dataset written again with fewer images keeps none of the old extra ones; a
    folder that holds other files (no toy.json) is refused in one line, untouched; what
    the user added beside a toy's own folders stays."""
    from jobs.cli import main

    root = write_toy_dataset(tmp_path / "toy", ToySpec(size=32, n_train=6, n_test=3, n_val=2))
    (root / "translated").mkdir()
    (root / "translated" / "mine.png").write_bytes(b"the user's")
    write_toy_dataset(root, ToySpec(size=32, n_train=2, n_test=1, n_val=0))
    assert sorted(p.name for p in (root / "trainA").iterdir()) == ["00000.png", "00001.png"]
    assert len(list((root / "labels").rglob("*.png"))) == 2 + 2 + 1 and not (root / "valA").exists()
    assert json.loads((root / "toy.json").read_text())["n_train"] == 2
    assert (root / "translated" / "mine.png").read_bytes() == b"the user's"

    theirs = tmp_path / "photos"
    (theirs / "trainA").mkdir(parents=True)
    (theirs / "trainA" / "00000.png").write_bytes(b"a photo")
    assert main(["toy-data", "--out", str(theirs), "--size", "32", "--n", "2"]) == 2
    err = capsys.readouterr().err
    assert "is not empty and holds no toy dataset (no toy.json): pass a new or empty folder" in err
    assert err.count("\n") == 1 and (theirs / "trainA" / "00000.png").read_bytes() == b"a photo"
    assert sorted(p.name for p in theirs.rglob("*")) == ["00000.png", "trainA"]
