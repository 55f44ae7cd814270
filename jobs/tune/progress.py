"""One progress line for a whole search, with its ETA.

Each trial is a Ray Train run; its own per-step lines would come from several workers
at once, and Ray's log de-duplication folds lines that differ only in their numbers
into "[repeated Nx across cluster]", so a user could not tell the trials apart nor see
when the search ends. The search line counts steps over every trial instead:

    [tune] 45/90  50% | 1.20 step/s | trials: 2 running, 0 waiting, 1 finished, 0 stopped |
        best eval_colour_err 32.6 (93646_00000) | elapsed 0:40 ETA 0:35

A trial that ASHA stops (or that fails for good) takes its steps that will never run
out of the total, so the ETA shrinks as the search prunes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Collection, Iterable, Mapping, TextIO

from jobs.progress import Progress


@dataclass(frozen=True)
class SearchCount:
    """Where a search stands, from its trials' states and last reports."""

    done: int  # steps trained over every trial
    total: int  # steps the search will train: stopped trials count what they trained
    running: int
    waiting: int  # not started yet (or paused)
    finished: int  # trained to their last step
    stopped: int  # ended before it (ASHA, or failed for good)
    best: float | None
    best_trial: str

    def notes(self, metric: str) -> list[str]:
        """``["trials: 2 running, 1 waiting, 1 finished, 1 stopped", "best eval_colour_err 32.6 (93646_00000)"]``"""
        out = [f"trials: {self.running} running, {self.waiting} waiting, {self.finished} finished, {self.stopped} stopped"]
        if self.best is not None:
            out.append(f"best {metric} {self.best:.4g} ({self.best_trial})")
        return out


def count_search(trials: Iterable[Any], *, expected: int, steps_per_trial: int, metric: str, mode: str,
                 latest: Mapping[str, dict] | None = None, ended: Collection[str] = (),
                 scores: Mapping[str, float] | None = None) -> SearchCount:
    """``trials``: Tune's Trial objects (``trial_id``, ``status``, ``last_result``); the
    ``expected - len(trials)`` not created yet count as whole trials still to run.

    Tune calls its callbacks before it updates the trial they are about: ``latest``
    (trial id -> its newest report) and ``ended`` (ids of trials that ended) say what
    the Trial objects do not show yet; ``scores`` (trial id -> its best ``metric`` seen
    by this process) what their last report alone does not, beside Tune's own record
    of a restored trial's scores. The search's best is the best trial's best score, as
    the results table ranks them."""
    latest, scores = latest or {}, scores or {}
    done = total = running = finished = stopped = seen = 0
    best, best_trial = None, ""
    for t in trials:
        seen += 1
        result = latest.get(t.trial_id) or t.last_result or {}
        step = int(result.get("step", 0) or 0)
        done += step
        is_over = t.trial_id in ended or t.status in ("TERMINATED", "ERROR")
        if is_over and step >= steps_per_trial:
            finished += 1
        elif is_over:
            stopped += 1
        elif t.status == "RUNNING":
            running += 1
        total += step if is_over else steps_per_trial
        # Its best so far: what this process saw, what Tune kept of it over a restore
        # (metric_analysis: min/max/last of each metric), and the report not yet in either.
        kept = (getattr(t, "metric_analysis", None) or {}).get(metric) or {}
        own = None
        for score in (scores.get(t.trial_id), kept.get(mode), result.get(metric)):
            if _better(score, own, mode):
                own = float(score)
        if _better(own, best, mode):
            best, best_trial = own, str(t.trial_id)
    total += max(0, expected - seen) * steps_per_trial
    waiting = max(0, max(expected, seen) - running - finished - stopped)
    return SearchCount(done, max(total, done), running, waiting, finished, stopped, best, best_trial)


def _better(score: Any, than: float | None, mode: str) -> bool:
    """A number, and better than ``than`` (or ``than`` is None) for ``mode`` min/max."""
    if not isinstance(score, (int, float)) or isinstance(score, bool):
        return False
    return than is None or (score < than if mode == "min" else score > than)


def search_progress_callback(*, expected: int, steps_per_trial: int, metric: str, mode: str,
                             stream: TextIO | None = None) -> Any:
    """A Ray Tune callback (it runs in the driver) that prints the search line after
    each trial's report and when a trial ends."""
    from ray.tune import Callback

    class SearchProgress(Callback):
        def __init__(self) -> None:
            self.bar: Progress | None = None
            self.shown: SearchCount | None = None
            self.latest: dict[str, dict] = {}
            self.ended: set[str] = set()
            self.scores: dict[str, float] = {}

        def _count(self, trials: list[Any]) -> SearchCount:
            return count_search(trials, expected=expected, steps_per_trial=steps_per_trial, metric=metric, mode=mode,
                                latest=self.latest, ended=self.ended, scores=self.scores)

        def _show(self, trials: list[Any]) -> None:
            count = self._count(trials)
            if self.bar is None:
                self.on_step_begin(0, trials)
            if count == self.shown:  # Tune calls back more often than anything changes
                return
            self.shown = count
            self.bar.total, self.bar.done = count.total, count.done
            self.bar.write_line(self.bar.line({}, count.notes(metric)), final=count.done >= count.total)

        def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
            if self.bar is not None:
                return
            # The clock starts with the search; a resumed one starts with its finished
            # trials done, and its rate (so its ETA) counts only what this process trains.
            count = self._count(trials)
            self.bar = Progress("tune", count.total, unit="step", stream=stream or sys.stdout,
                                initial=count.done, in_place=False)
            if count.done:
                self._show(trials)

        def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict, **info: Any) -> None:
            self.latest[trial.trial_id] = result
            if _better(score := result.get(metric), self.scores.get(trial.trial_id), mode):
                self.scores[trial.trial_id] = float(score)
            self._show(trials)

        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self.ended.add(trial.trial_id)
            self._show(trials)

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self.ended.add(trial.trial_id)  # for good: a trial Tune retries calls on_trial_recover
            self._show(trials)

        def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self.latest.pop(trial.trial_id, None)  # it restarts from its last checkpoint and reports anew

    return SearchProgress()
