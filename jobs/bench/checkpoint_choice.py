"""`raycut bench checkpoint-choice`: which checkpoint a noisy val metric registers, and
what that choice costs, judged on the test pair.

`raycut train --eval-every` registers the checkpoint that scored best on the val set.
On a user's data that score is KID on a few dozen images, and KID's noise on so few
can pick an early checkpoint over a later, better one. This reads the checkpoint
studies of `raycut bench quality --kid-pool N` (every evaluated checkpoint's test
scores, and the KID features of its translations of N val images and of N held-out
reals) and replays the choice many times: each draw takes n of the N val images and n
of the reals, as one user's val set, scores every checkpoint on it, and applies each
rule as the run would, one evaluation at a time. Rows: per rule and n, the test colour
error of the chosen checkpoint (as a multiple of histogram matching's), its mIoU, and
the step it chose, median and worst decile over the draws.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cut_core.errors import RaycutError
from pipelines.kid_error import kid_difference, kid_with_se


@dataclass(frozen=True)
class Scored:
    """One val set's view of a run: per checkpoint, KID and its standard error, and
    the features the paired rule compares."""

    real: np.ndarray  # (n, d)
    fake: np.ndarray  # (checkpoints, n, d)
    kid: np.ndarray  # (checkpoints,)
    se: np.ndarray  # (checkpoints,)


def score(real: np.ndarray, fake: np.ndarray) -> Scored:
    got = [kid_with_se(real, f) for f in fake]
    return Scored(real, fake, np.array([k for k, _ in got]), np.array([s for _, s in got]))


def _replay_choice(s: Scored, k: float | None) -> int:
    """The checkpoint `raycut train` registers (jobs.train.evaluation.CheckpointChoice),
    fed one evaluation at a time: with ``k``, KID's errors too."""
    from jobs.train.evaluation import CheckpointChoice

    choice = CheckpointChoice("eval_kid", "min", within_se=k or 0.0)
    for t in range(len(s.kid)):
        choice.observe(t, {"eval_kid": float(s.kid[t]), **({"eval_kid_se": float(s.se[t])} if k else {})})
    return int(choice.chosen["step"])


def choose_lowest(s: Scored) -> int:
    """The rule before KID's error was read: the first checkpoint with the lowest KID."""
    return _replay_choice(s, None)


def choose_within_se(s: Scored, k: float = 1.0) -> int:
    """raycut train's rule: the latest checkpoint whose KID is within ``k`` of its own
    standard errors of the lowest KID so far."""
    return _replay_choice(s, k)


def choose_not_worse(s: Scored, k: float = 1.0) -> int:
    """The latest checkpoint not worse than the best so far by more than ``k`` standard
    errors of their paired difference (the same val images and reals in both)."""
    chosen = best = 0
    for t in range(1, len(s.kid)):
        diff, se = kid_difference(s.real, s.fake[t], s.fake[best])
        if diff <= k * se:
            chosen = t
        if s.kid[t] < s.kid[best]:
            best = t
    return chosen


RULES: dict[str, Callable[[Scored], int]] = {
    "last": lambda s: len(s.kid) - 1,
    "lowest KID": choose_lowest,
    "within 1 SE of the lowest": choose_within_se,
    "within 2 SE of the lowest": lambda s: choose_within_se(s, 2.0),
    "not worse by 1 paired SE": choose_not_worse,
    "not worse by 2 paired SE": lambda s: choose_not_worse(s, 2.0),
}


@dataclass(frozen=True)
class Study:
    """One run's checkpoint study, as `raycut bench quality --kid-pool` recorded it."""

    name: str
    steps: list[int]
    colour: np.ndarray  # test colour error per checkpoint, as a multiple of histogram matching's
    miou: np.ndarray
    val_colour_choice: int | None  # the checkpoint the toy's val colour error chose
    real: np.ndarray  # (N, d)
    fake: np.ndarray  # (checkpoints, N, d)


def reversed_study(study: Study) -> Study:
    """The same checkpoints in the reverse order: a run that got worse as it went on
    (as one that D took over does), to check that a rule still keeps an early checkpoint
    when the later ones are worse by more than the noise."""
    steps = study.steps
    return Study(name=study.name.replace(" (", " reversed (", 1), steps=steps, colour=study.colour[::-1].copy(),
                 miou=study.miou[::-1].copy(),
                 val_colour_choice=None if study.val_colour_choice is None else len(steps) - 1 - study.val_colour_choice,
                 real=study.real, fake=study.fake[::-1].copy())


def load_studies(runs_logs: Sequence[str | Path]) -> list[Study]:
    """Every run with a checkpoint study in these runs logs (``*.runs.jsonl``)."""
    out = []
    for log in map(Path, runs_logs):
        if not log.is_file():
            raise RaycutError(f"{log}: no such runs log; `raycut bench quality --kid-pool N --out X.json` writes X.runs.jsonl")
        for line in log.read_text().splitlines():
            run = json.loads(line)
            if "kid_pool_file" not in run:
                continue
            z = np.load(log.with_name(run["kid_pool_file"]))
            cps = run["checkpoints"]
            curve = {int(c["step"]): c.get("eval_colour_err") for c in run.get("val_curve", [])}
            val = [curve.get(int(c["step"])) for c in cps]
            out.append(Study(name=f"{run['scene']} seed {run['seed']} ({run['variant']})",
                             steps=[int(c["step"]) for c in cps],
                             colour=np.array([c["colour_err"] for c in cps]) / run["histogram"],
                             miou=np.array([c["mIoU"] for c in cps]),
                             val_colour_choice=int(np.argmin(val)) if None not in val else None,
                             real=z["real"], fake=z["fake"]))
    if not out:
        raise RaycutError("no checkpoint study in those runs logs: run `raycut bench quality` with --kid-pool N")
    return out


def replay(study: Study, sizes: Sequence[int], draws: int, seed: int = 0) -> list[dict[str, object]]:
    """Rows per (n, rule): the chosen checkpoints' test scores over ``draws`` val sets of
    n images each (n val images and n reals drawn without replacement, each draw its own)."""
    n_pool = min(len(study.real), study.fake.shape[1])
    rng = np.random.default_rng(seed)
    rows: list[dict[str, object]] = []
    for n in sizes:
        if n > n_pool:
            raise RaycutError(f"{study.name}: {n} val images asked, the study holds {n_pool}")
        picks: dict[str, list[int]] = {r: [] for r in RULES}
        for _ in range(draws if n < n_pool else 1):  # all N: one val set only
            v, r = rng.choice(n_pool, n, replace=False), rng.choice(n_pool, n, replace=False)
            scored = score(study.real[r], study.fake[:, v])
            for name, rule in RULES.items():
                picks[name].append(rule(scored))
        for name, chosen in picks.items():
            rows.append(_row(study, n, name, chosen))
    return rows


def _row(study: Study, n: int, rule: str, chosen: list[int]) -> dict[str, object]:
    colour = np.array([study.colour[c] for c in chosen])
    return {"name": f"{study.name}/{rule}" + (f"/n={n}" if n else ""), "metric": "test_colour_err_vs_histogram",
            "value": round(float(np.median(colour)), 4), "unit": "x",
            "run": study.name, "n": n, "rule": rule, "draws": len(chosen),
            "colour_median": round(float(np.median(colour)), 4), "colour_p90": round(float(np.quantile(colour, 0.9)), 4),
            "mIoU_median": round(float(np.median([study.miou[c] for c in chosen])), 4),
            "step_median": int(statistics.median(study.steps[c] for c in chosen)),
            "worse_than_last": round(float(np.mean(colour > study.colour[-1] * 1.1)), 3)}


def reference_rows(study: Study) -> list[dict[str, object]]:
    """What the replayed rules are read against: the last step, the checkpoint the
    toy's val colour error chose, and the best on the test pair (no rule can know it)."""
    picks = {"the val colour's choice": study.val_colour_choice, "best on test (oracle)": int(np.argmin(study.colour))}
    return [_row(study, 0, name, [c]) for name, c in picks.items() if c is not None]


def format_choice(rows: Sequence[dict[str, object]]) -> str:
    lines = [f"{'run':28s} {'n':>4s} {'rule':28s} {'colour/hist med':>15s} {'p90':>6s} {'mIoU':>6s} "
             f"{'step':>5s} {'>1.1x last':>10s}"]
    for r in rows:
        n = str(r["n"]) if r["n"] else "-"
        lines.append(f"{str(r['run']):28s} {n:>4s} {str(r['rule']):28s} {float(r['colour_median']):15.3f} "  # type: ignore[arg-type]
                     f"{float(r['colour_p90']):6.3f} {float(r['mIoU_median']):6.3f} {r['step_median']!s:>5s} "  # type: ignore[arg-type]
                     f"{float(r['worse_than_last']):10.2f}")  # type: ignore[arg-type]
    return "\n".join(lines)
