"""Replay mode: a trial's outcome is looked up from recorded runs, its recorded cost is simulated time.

As in tabular HPO benchmarks (HPO-B, YAHPO Gym's lookup mode), the held-out dataset's recorded runs
are the whole world: a trial "trains" a recorded configuration by replaying its learning curve, epoch
by epoch (``val_accuracy`` and the epoch's recorded seconds), so Tune's schedulers can stop or pause
it early. ``simulate_search`` plays the part of Tune's trial controller for one sequential worker:
it asks the scheduler which trial to run, asks the searcher for new trials, feeds every epoch's
result to both, and advances a simulated clock by the recorded epoch seconds. The searchers and
schedulers are Tune's own objects, called through their public interface
(``Searcher.suggest/on_trial_result/on_trial_complete``, ``TrialScheduler.on_trial_add/
on_trial_result/on_trial_complete/choose_trial_to_run``).

A run recorded as failed (no finite accuracy) replays as one epoch at the dataset's worst accuracy.
A replayed run that runs to its end costs exactly its recorded ``cost_seconds``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from metallmix.bench.search import METRIC, TIME_ATTR
from metallmix.bench.space import CANDIDATE_KEY
from metallmix.errors import ConfigError, DataError

EPOCH_SECONDS_KEYS = ("epoch_seconds", "seconds")  # metallmix sweeps, Quick-Tune imports


@dataclass
class RecordedRun:
    """One recorded run of the held-out dataset: its curve and final accuracy."""

    val_accuracy: list[float]  # per epoch
    epoch_seconds: list[float]  # per epoch
    accuracy: float  # the recorded final accuracy (test accuracy of metallmix sweeps)

    @property
    def n_epochs(self) -> int:
        return len(self.val_accuracy)

    @property
    def cost_seconds(self) -> float:
        return float(sum(self.epoch_seconds))


class RecordedOutcomes:
    """The recorded runs of one dataset, keyed by run_id (the candidate ids of replay mode)."""

    def __init__(self, held_out: pd.DataFrame):
        if held_out.empty:
            raise DataError("the held-out dataset has no recorded runs to replay")
        accuracy = held_out["accuracy"].astype(float)
        if accuracy.isna().all():
            raise DataError(f"dataset {held_out['dataset_id'].iloc[0]!r} has no run with an accuracy; nothing to replay")
        self.best = float(accuracy.max())
        self.worst = float(accuracy.min())
        self.runs: dict[str, RecordedRun] = {}
        for row in held_out.itertuples(index=False):
            final = self.worst if pd.isna(row.accuracy) else float(row.accuracy)
            self.runs[str(row.run_id)] = _recorded_run(json.loads(row.curve_json), final, self.worst,
                                                       row.cost_seconds)

    @property
    def max_epochs(self) -> int:
        return max(run.n_epochs for run in self.runs.values())

    def median_cost(self) -> float:
        return float(np.median([run.cost_seconds for run in self.runs.values()]))


def _recorded_run(curve: list[dict[str, Any]], final: float, worst: float, cost_seconds: Any) -> RecordedRun:
    """The run's per-epoch values and seconds; the epochs' seconds are scaled to sum to the recorded
    cost (a metallmix run's cost includes evaluation and set-up that its epoch timings leave out)."""
    values = [_finite_or_none(e.get("val_accuracy")) for e in curve]
    seconds = [next((float(e[k]) for k in EPOCH_SECONDS_KEYS if _finite_or_none(e.get(k)) is not None), 0.0)
               for e in curve]
    cost = _finite_or_none(cost_seconds)
    if not curve or all(v is None for v in values):  # failed run: one epoch at the worst accuracy
        return RecordedRun([worst], [cost if cost is not None else sum(seconds)], final)
    if cost is not None:
        total = sum(seconds)
        seconds = [s * cost / total for s in seconds] if total > 0 else [cost / len(seconds)] * len(seconds)
    running = worst
    filled = []
    for v in values:  # an epoch without a value repeats the previous one
        running = running if v is None else v
        filled.append(running)
    return RecordedRun(filled, seconds, final)


def _finite_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# --------------------------------------------------------------------------------------------------
# the simulated controller


@dataclass
class SearchBudget:
    """Stop starting trials after ``trials`` configurations or ``time_s`` training seconds (simulated
    in replay), whichever comes first; ``time_runs``: a time budget of that many times the held-out
    dataset's median recorded run cost (replay only), for comparisons across datasets whose runs
    take minutes or days. None: no limit on that axis; at least one must be set."""

    trials: int | None = None
    time_s: float | None = None
    time_runs: float | None = None

    def __post_init__(self) -> None:
        if self.trials is None and self.time_s is None and self.time_runs is None:
            raise ConfigError("set a budget: budget.trials (configurations), budget.time_s (training seconds) "
                              "or budget.time_runs (median run costs), or several")
        for name in ("trials", "time_s", "time_runs"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"budget.{name} must be > 0 or null, got {value!r}")

    def time_limit(self, median_run_seconds: float | None = None) -> float | None:
        """The time budget in seconds (the smaller of time_s and time_runs x the median run cost)."""
        limits = [self.time_s] if self.time_s is not None else []
        if self.time_runs is not None:
            if median_run_seconds is None:
                raise ConfigError("budget.time_runs needs recorded runs of the held-out dataset (replay mode); "
                                  "use budget.time_s in train mode")
            limits.append(self.time_runs * median_run_seconds)
        return min(limits) if limits else None


@dataclass
class TrialRecord:
    config_id: str
    recorded_accuracy: float | None = None  # of the run, once it ran to its end
    epochs: int = 0
    seconds: float = 0.0
    best_val: float = -math.inf
    completed: bool = False  # ran to its end

    @property
    def accuracy(self) -> float:
        """What the trial achieved: its final (recorded or test) accuracy when it ran to its end, else
        its best validation accuracy so far."""
        return self.recorded_accuracy if self.completed and self.recorded_accuracy is not None else self.best_val


@dataclass
class SearchOutcome:
    trials: list[TrialRecord]
    trajectory: list[dict[str, float]]  # incumbent accuracy each time it changed, at cumulative training time
    training_seconds: float
    incumbent: str | None  # config id of the best trial
    accuracy: float | None


class SearchTracker:
    """Every epoch of every trial, in the order they happened: the incumbent (the trial with the best
    validation accuracy, earliest on ties) and its accuracy over cumulative training time."""

    def __init__(self) -> None:
        self.records: dict[str, TrialRecord] = {}
        self.clock = 0.0
        self.trajectory: list[dict[str, float]] = []

    def add_trial(self, trial_id: str, config_id: str, recorded_accuracy: float | None = None) -> TrialRecord:
        self.records[trial_id] = TrialRecord(config_id, recorded_accuracy)
        return self.records[trial_id]

    def epoch(self, trial_id: str, val_accuracy: float, seconds: float, *, completed: bool = False,
              final_accuracy: float | None = None) -> None:
        record = self.records[trial_id]
        self.clock += seconds
        record.seconds += seconds
        record.epochs += 1
        record.best_val = max(record.best_val, val_accuracy)
        record.completed = completed
        if final_accuracy is not None:
            record.recorded_accuracy = final_accuracy
        accuracy = self.incumbent().accuracy
        if not self.trajectory or self.trajectory[-1]["accuracy"] != accuracy:
            self.trajectory.append({"time_seconds": self.clock, "accuracy": accuracy})

    def incumbent(self) -> TrialRecord:
        return max(self.records.values(), key=lambda r: r.best_val)  # max keeps the first of equals

    def outcome(self) -> SearchOutcome:
        best = self.incumbent() if self.records else None
        return SearchOutcome(trials=list(self.records.values()), trajectory=self.trajectory,
                             training_seconds=self.clock, incumbent=best.config_id if best else None,
                             accuracy=best.accuracy if best else None)


class _Controller:
    """What Tune's schedulers call on the trial controller, for the simulated sequential run."""

    def __init__(self, searcher: Any):
        from types import SimpleNamespace

        self.search_alg = SimpleNamespace(searcher=searcher)
        self.trials: list[Any] = []
        self.stopped: list[Any] = []

    def get_trials(self) -> list[Any]:
        return self.trials

    def stop_trial(self, trial: Any) -> None:
        """A scheduler stops a paused or pending trial (HyperBand's successive halving)."""
        self.stopped.append(trial)


def simulate_search(searcher: Any, scheduler: Any, outcomes: RecordedOutcomes, budget: SearchBudget) -> SearchOutcome:
    """Run a Tune searcher + scheduler over recorded runs with one simulated sequential worker."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler
    from ray.tune.search import Searcher

    controller = _Controller(searcher)
    tracker = SearchTracker()
    search_finished = False
    time_limit = budget.time_limit(outcomes.median_cost())

    def budget_left() -> bool:
        return time_limit is None or tracker.clock < time_limit

    def process_stops() -> None:  # as TuneController.stop_trial does for paused and pending trials
        while controller.stopped:
            trial = controller.stopped.pop()
            if trial.status in (Trial.PAUSED, Trial.PENDING):
                trial.set_status(Trial.TERMINATED)
                scheduler.on_trial_remove(controller, trial)
                searcher.on_trial_complete(trial.trial_id)

    while budget_left():
        trial = scheduler.choose_trial_to_run(controller)
        process_stops()
        if trial is None:
            if search_finished or (budget.trials is not None and len(tracker.records) >= budget.trials):
                break
            trial_id = f"{len(tracker.records):05d}"
            suggestion = searcher.suggest(trial_id)
            if suggestion is None or suggestion == Searcher.FINISHED:
                search_finished = True
                if not any(t.status == Trial.PAUSED for t in controller.trials):
                    break
                continue
            config_id = str(suggestion[CANDIDATE_KEY])
            if config_id not in outcomes.runs:
                raise DataError(f"searcher proposed candidate {config_id!r}, which has no recorded run")
            tracker.add_trial(trial_id, config_id, outcomes.runs[config_id].accuracy)
            new = Trial("replay", config=suggestion, trial_id=trial_id, stub=True)
            controller.trials.append(new)
            scheduler.on_trial_add(controller, new)
            continue
        trial.set_status(Trial.RUNNING)
        record = tracker.records[trial.trial_id]
        run = outcomes.runs[record.config_id]
        while budget_left():
            value = run.val_accuracy[record.epochs]
            tracker.epoch(trial.trial_id, value, run.epoch_seconds[record.epochs],
                          completed=record.epochs + 1 >= run.n_epochs)
            result = _result(record, trial, value)
            decision = scheduler.on_trial_result(controller, trial, result)
            if decision != TrialScheduler.STOP:  # Tune's order: scheduler first, searcher unless stopped
                searcher.on_trial_result(trial.trial_id, result)
            process_stops()
            if record.completed or decision == TrialScheduler.STOP:
                break
            if decision == TrialScheduler.PAUSE:
                trial.set_status(Trial.PAUSED)
                break
        if trial.status == Trial.RUNNING:  # ran to its end, stopped, or the time budget ran out mid-trial
            trial.set_status(Trial.TERMINATED)  # Tune completes a trial with its last result
            scheduler.on_trial_complete(controller, trial, result)
            searcher.on_trial_complete(trial.trial_id, result=result)
    return tracker.outcome()


def _result(record: TrialRecord, trial: Any, value: float) -> dict[str, Any]:
    return {
        METRIC: value,
        TIME_ATTR: record.epochs,
        "time_total_s": record.seconds,
        "trial_id": trial.trial_id,
        "config": trial.config,
    }
