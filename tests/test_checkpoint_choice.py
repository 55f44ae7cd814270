"""The checkpoint study's arithmetic (jobs.bench.checkpoint_choice): KID as torchmetrics
computes it, standard errors that match the spread over independent val sets, the
rules' choices, and `raycut bench checkpoint-choice` on a recorded study."""

import json

import numpy as np
import pytest

from cut_core.errors import RaycutError
from jobs.bench.checkpoint_choice import (Scored, choose_lowest, choose_not_worse, choose_within_se, load_studies,
                                          replay)
from pipelines.kid_error import kid_difference, kid_with_se
from tests.test_cli import raycut


def kid(real, fake) -> float:
    return kid_with_se(real, fake)[0]


def test_kid_is_torchmetrics_kid_on_all_the_images():
    from pipelines.fid import fid_kid

    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(20, 8)), rng.normal(0.5, 1.2, size=(20, 8))
    assert kid(real, fake) == pytest.approx(fid_kid(real, fake)["kid"], rel=1e-4)


def test_the_standard_errors_match_the_spread_over_independent_val_sets():
    """What the rules rely on: a val set's jackknife error is the spread its KID (and the
    difference of two checkpoints' KID on it) would have over other val sets."""
    rng = np.random.default_rng(1)
    n, d, draws = 32, 16, 300
    kids, ses, diffs, diff_ses = [], [], [], []
    for _ in range(draws):
        real, val = rng.normal(size=(n, d)), rng.normal(size=(n, d))
        # Two checkpoints' translations of the same val images: one a little further off.
        a = val * 0.8 + 0.3
        b = a + 0.1 + rng.normal(0, 0.2, size=(n, d))
        k, s = kid_with_se(real, a)
        kids.append(k)
        ses.append(s)
        dk, ds = kid_difference(real, b, a)
        diffs.append(dk)
        diff_ses.append(ds)
        assert dk == pytest.approx(kid(real, b) - kid(real, a), abs=1e-9)
    assert 0.75 < np.median(ses) / np.std(kids) < 1.33, (np.median(ses), np.std(kids))
    assert 0.75 < np.median(diff_ses) / np.std(diffs) < 1.33, (np.median(diff_ses), np.std(diffs))
    # Pairing is the point: the difference is known far better than either KID.
    assert np.median(diff_ses) < 0.5 * np.median(ses)


def _scored(values, se=0.1):
    k = np.asarray(values, float)
    return Scored(real=np.zeros((2, 1)), fake=np.zeros((len(k), 2, 1)), kid=k, se=np.full(len(k), se))


def test_the_rules_choose_as_a_run_would_online():
    # A run that settles: KID within its noise after step 2; the lowest is step 3.
    settles = _scored([3.0, 1.0, 1.2, 0.9, 0.98])
    assert choose_lowest(settles) == 3
    assert choose_within_se(settles) == 4  # 0.98 is within 0.1 of 0.9
    # A run that is lost late: the rise is past the noise, the choice stays before it.
    lost = _scored([2.0, 0.5, 0.55, 2.0, 2.5])
    assert choose_within_se(lost) == 2 and choose_lowest(lost) == 1
    # The paired rule on features: checkpoint 2 is checkpoint 1 again, up to noise
    # (not worse); 3 is far off (worse); so 2 is the last it keeps.
    rng = np.random.default_rng(2)
    real, val = rng.normal(size=(40, 8)), rng.normal(size=(40, 8))
    fake = np.stack([val + 2.0, val, val + rng.normal(0, 0.01, size=val.shape), val + 3.0])
    scored = Scored(real, fake, np.array([kid(real, f) for f in fake]), np.zeros(4))
    assert choose_not_worse(scored) == 2


def test_bench_checkpoint_choice_replays_a_recorded_study(tmp_path):
    """A study as `raycut bench quality --kid-pool` writes it: three checkpoints, the
    second and third equally good in the features and the second best on the test pair."""
    rng = np.random.default_rng(3)
    n = 24
    real, val = rng.normal(size=(n, 8)), rng.normal(size=(n, 8))
    fake = np.stack([val + 1.5, val * 0.9, val * 0.9 + rng.normal(0, 0.05, size=val.shape)]).astype(np.float32)
    np.savez_compressed(tmp_path / "q_kidpool_v_seed1.npz", real=real.astype(np.float32), fake=fake)
    run = {"scene": "coast", "seed": 1, "variant": "v", "histogram": 50.0, "kid_pool_file": "q_kidpool_v_seed1.npz",
           "checkpoints": [{"step": s, "colour_err": c, "mIoU": m} for s, c, m in
                           ((100, 80.0, 0.3), (200, 20.0, 0.6), (300, 25.0, 0.55))],
           "val_curve": [{"step": 100, "eval_colour_err": 70.0}, {"step": 200, "eval_colour_err": 30.0},
                         {"step": 300, "eval_colour_err": 31.0}]}
    runs = tmp_path / "q.runs.jsonl"
    runs.write_text(json.dumps({"scene": "street", "seed": 0, "variant": "v"}) + "\n" + json.dumps(run) + "\n")
    out = tmp_path / "choice.json"
    r = raycut("bench", "checkpoint-choice", "--runs", str(runs), "--sizes", "8", "24", "--draws", "20",
               "--reversed", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {row["name"]: row for row in json.loads(out.read_text())["results"]}
    oracle, colour = rows["coast seed 1 (v)/best on test (oracle)"], rows["coast seed 1 (v)/the val colour's choice"]
    assert oracle["value"] == colour["value"] == 0.4 and oracle["step_median"] == 200
    last = rows["coast seed 1 (v)/last/n=8"]
    assert (last["value"], last["mIoU_median"], last["draws"]) == (0.5, 0.55, 20)
    assert rows["coast seed 1 (v)/last/n=24"]["draws"] == 1  # all the pool: one val set
    # Step 100 is far off in the features: no rule, on any val set, chooses it.
    assert all(row["colour_median"] <= 0.5 and row["colour_p90"] <= 0.5 for name, row in rows.items()
               if "reversed" not in name)
    assert "not worse by 1 paired SE" in r.stdout
    # --reversed: the same checkpoints as a run that got worse (steps 300, 200, 100 of it).
    back = rows["coast seed 1 reversed (v)/last/n=8"]
    assert (back["value"], back["mIoU_median"]) == (1.6, 0.3)
    assert rows["coast seed 1 reversed (v)/best on test (oracle)"]["value"] == 0.4
    (study,) = load_studies([runs])
    with pytest.raises(RaycutError, match=r"^coast seed 1 \(v\): 32 val images asked, the study holds 24$"):
        replay(study, (32,), draws=5)


def test_a_run_registers_the_best_score_or_with_kids_error_the_latest_near_it():
    """jobs.train.evaluation.CheckpointChoice, as the training loop feeds it one
    evaluation at a time; what a checkpoint keeps of it resumes the same choice."""
    from jobs.train.evaluation import CheckpointChoice, EvalPlan

    # A score without an error (the toy's colour error): strictly the best so far.
    colour = CheckpointChoice("eval_colour_err", "min")
    assert [colour.observe(s, {"eval_colour_err": v}) for s, v in ((5, 5.0), (10, 3.0), (15, 4.0), (20, 2.5))] == [
        True, True, False, True]
    assert colour.chosen == {"step": 20, "metric": "eval_colour_err", "value": 2.5}
    # KID with its error: the latest within one error of the best so far; one further
    # off than that (step 20) or past a tight error (step 25) does not replace it.
    kid = CheckpointChoice("eval_kid", "min")
    evals = ((5, 1.0, 0.1), (10, 0.5, 0.1), (15, 0.55, 0.1), (20, 0.9, 0.1), (25, 0.52, 0.01))
    assert [kid.observe(s, {"eval_kid": v, "eval_kid_se": e}) for s, v, e in evals] == [True, True, True, False, False]
    assert (kid.chosen["step"], kid.best) == (15, {"step": 10, "value": 0.5})
    # A score that grows with quality, the same way round.
    up = CheckpointChoice("eval_mIoU", "max")
    assert [up.observe(s, {"eval_mIoU": v, "eval_mIoU_se": 0.05}) for s, v in ((5, 0.5), (10, 0.7), (15, 0.66),
                                                                              (20, 0.6))] == [True, True, True, False]
    # The checkpoint's best.json resumes the choice (and one written before it, its best only).
    plan = EvalPlan(every=5, metric="kid", images={})
    resumed = CheckpointChoice.from_json(plan, json.loads(json.dumps(kid.to_json())))
    assert (resumed.chosen, resumed.best) == (kid.chosen, kid.best)
    assert resumed.observe(30, {"eval_kid": 0.58, "eval_kid_se": 0.1}) and resumed.chosen["step"] == 30
    old = CheckpointChoice.from_json(plan, {"step": 10, "metric": "eval_kid", "value": 0.5})
    assert old.best == {"step": 10, "value": 0.5} and not old.observe(15, {"eval_kid": 0.7, "eval_kid_se": 0.1})
    assert CheckpointChoice.from_json(plan, None).observe(5, {"eval_kid": 3.0})


def test_the_driver_registers_the_latest_chosen_checkpoint_or_for_older_ones_the_best(tmp_path):
    """jobs.train.evaluation.checkpoint_to_register, on what Ray Train keeps: each
    checkpoint with the metrics its worker reported (choice_score = its step when the
    choice took it, else -1). Checkpoints written before the choice was reported (a run
    resumed across that upgrade) carry their score only: the best of them."""
    from jobs.train.evaluation import CHOICE_SCORE, CheckpointChoice, checkpoint_to_register

    choice, kept = CheckpointChoice("eval_kid", "min"), []
    for step, value in ((5, 1.0), (10, 0.5), (15, 0.55), (20, 0.9)):
        metrics = {"step": step, "eval_kid": value, "eval_kid_se": 0.1}
        metrics[CHOICE_SCORE] = float(step if choice.observe(step, metrics) else -1)
        (folder := tmp_path / f"checkpoint_{step}").mkdir()
        kept.append((folder, metrics))
    folder, metrics = checkpoint_to_register(kept, "eval_kid")
    assert folder.name == "checkpoint_15" and metrics["step"] == choice.chosen["step"] == 15
    # Older checkpoints: the lowest error, or the highest of a score that grows with quality.
    old = [(tmp_path / f"old_{s}", {"step": s, "eval_kid": v, "eval_mIoU": 1 - v})
           for s, v in ((5, 0.7), (10, 0.4), (15, 0.6))]
    assert checkpoint_to_register(old, "eval_kid")[1]["step"] == 10
    assert checkpoint_to_register(old, "eval_mIoU")[1]["step"] == 10
    # One chosen checkpoint among old ones decides; none evaluated gives None (the driver's error).
    assert checkpoint_to_register([*old, kept[2]], "eval_kid")[1]["step"] == 15
    assert checkpoint_to_register([(tmp_path, {"step": 5})], "eval_kid") is None
