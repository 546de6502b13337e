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

Knowledge bases that published final results only (MedMNIST+: no learning curve, no training time)
replay too: a run without a curve is one step that reports its recorded accuracy, and where the
held-out dataset's runs record no seconds their cost is the compute estimate ``cost_flops_estimate``
(``RecordedOutcomes.unit`` is then ``FLOPS_ESTIMATE``, and the simulated clock counts estimated FLOP,
not seconds). Time budgets cannot be replayed there (``RecordedOutcomes.time_limit`` says so), and
schedulers that stop runs early have no epochs to stop (``RecordedOutcomes.has_curves``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from metallmix.bench import FLOPS_ESTIMATE, SECONDS, CostUnit
from metallmix.bench.search import METRIC, ORIGIN_KEY, TIME_ATTR
from metallmix.bench.space import CANDIDATE_KEY
from metallmix.errors import ConfigError, DataError
from metallmix.metadataset.schema import COST_ESTIMATE_COLUMN

EPOCH_SECONDS_KEYS = ("epoch_seconds", "seconds")  # metallmix sweeps, Quick-Tune imports


@dataclass
class RecordedRun:
    """One recorded run of the held-out dataset: its curve, each epoch's cost and its final accuracy."""

    val_accuracy: list[float]  # per epoch (one step at the recorded accuracy for a run without a curve)
    epoch_costs: list[float]  # per epoch, in ``unit``
    accuracy: float  # the recorded final accuracy (test accuracy of metallmix sweeps)
    unit: CostUnit = SECONDS

    @property
    def n_epochs(self) -> int:
        return len(self.val_accuracy)

    @property
    def cost(self) -> float:
        """The whole run's cost, in ``unit``."""
        return float(sum(self.epoch_costs))


class RecordedOutcomes:
    """The recorded runs of one dataset, keyed by run_id (the candidate ids of replay mode).

    ``unit``: seconds (``cost_seconds``) where any run of the dataset records them, else the compute
    estimate (``cost_flops_estimate``) where the knowledge base has one; a run without either costs 0.
    """

    def __init__(self, held_out: pd.DataFrame):
        if held_out.empty:
            raise DataError("the held-out dataset has no recorded runs to replay")
        self.dataset = str(held_out["dataset_id"].iloc[0])
        accuracy = held_out["accuracy"].astype(float)
        if accuracy.isna().all():
            raise DataError(f"dataset {self.dataset!r} has no run with an accuracy; nothing to replay")
        self.best = float(accuracy.max())
        self.worst = float(accuracy.min())
        estimated = COST_ESTIMATE_COLUMN in held_out and held_out[COST_ESTIMATE_COLUMN].notna().any()
        self.unit = FLOPS_ESTIMATE if held_out["cost_seconds"].isna().all() and estimated else SECONDS
        costs = held_out["cost_seconds" if self.unit is SECONDS else COST_ESTIMATE_COLUMN]
        self.runs: dict[str, RecordedRun] = {}
        self.has_curves = False  # any run recorded per-epoch results
        for row, cost in zip(held_out.itertuples(index=False), costs, strict=True):
            final = self.worst if pd.isna(row.accuracy) else float(row.accuracy)
            curve = json.loads(row.curve_json)
            self.has_curves |= bool(curve)
            self.runs[str(row.run_id)] = _recorded_run(curve, final, self.worst, cost, self.unit)

    @property
    def max_epochs(self) -> int:
        return max(run.n_epochs for run in self.runs.values())

    def median_cost(self) -> float:
        """The median run's cost, in ``unit``."""
        return float(np.median([run.cost for run in self.runs.values()]))

    def time_limit(self, budget: SearchBudget) -> float | None:
        """The budget's time limit in simulated seconds; refused where the runs record no seconds."""
        if self.unit is not SECONDS and (budget.time_s is not None or budget.time_runs is not None):
            raise ConfigError(f"the runs of {self.dataset!r} record no training time (only a compute estimate, "
                              f"{COST_ESTIMATE_COLUMN}), so a time budget cannot be replayed: set "
                              "budget.trials=N budget.time_s=null budget.time_runs=null")
        return budget.time_limit(self.median_cost())


def _recorded_run(curve: list[dict[str, Any]], final: float, worst: float, cost: Any, unit: CostUnit) -> RecordedRun:
    """The run's per-epoch values and costs.

    In seconds, the epochs' recorded seconds are scaled to sum to the recorded cost (a metallmix run's
    cost includes evaluation and set-up that its epoch timings leave out); a compute estimate has no
    per-epoch part and is spread evenly over the epochs. A run without a curve is one step at its
    recorded accuracy; a failed run (a curve without a value) one step at the dataset's worst.
    """
    values = [_finite_or_none(e.get("val_accuracy")) for e in curve]
    if unit is SECONDS:
        costs = [next((float(e[k]) for k in EPOCH_SECONDS_KEYS if _finite_or_none(e.get(k)) is not None), 0.0)
                 for e in curve]
    else:
        costs = [0.0] * len(curve)
    total = _finite_or_none(cost)
    if not curve:  # final results only; ``final`` is the worst accuracy for a run that failed
        return RecordedRun([final], [total if total is not None else 0.0], final, unit)
    if all(v is None for v in values):  # failed run: one epoch at the worst accuracy
        return RecordedRun([worst], [total if total is not None else sum(costs)], final, unit)
    if total is not None:
        recorded = sum(costs)
        costs = [c * total / recorded for c in costs] if recorded > 0 else [total / len(costs)] * len(costs)
    running = worst
    filled = []
    for v in values:  # an epoch without a value repeats the previous one
        running = running if v is None else v
        filled.append(running)
    return RecordedRun(filled, costs, final, unit)


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
    origin: str | None = None  # where the configuration came from (metallmix.bench.search.ORIGINS)
    epochs: int = 0
    cost: float = 0.0  # in the search's cost unit
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
    trajectory: list[dict[str, float]]  # incumbent accuracy each time it changed, at cumulative cost (unit.point)
    training_cost: float  # every trial's cost, in ``unit``
    incumbent: str | None  # config id of the best trial
    accuracy: float | None
    unit: CostUnit = SECONDS

    @property
    def training_seconds(self) -> float | None:
        """The search's training time; None where its cost is not counted in seconds."""
        return self.training_cost if self.unit is SECONDS else None


class SearchTracker:
    """Every epoch of every trial, in the order they happened: the incumbent (the trial with the best
    validation accuracy, earliest on ties) and its accuracy over the cumulative training cost (``unit``:
    seconds, or a compute estimate in replay of a knowledge base without times)."""

    def __init__(self, unit: CostUnit = SECONDS) -> None:
        self.unit = unit
        self.records: dict[str, TrialRecord] = {}
        self.clock = 0.0
        self.trajectory: list[dict[str, float]] = []

    def add_trial(self, trial_id: str, config_id: str, recorded_accuracy: float | None = None,
                  origin: str | None = None) -> TrialRecord:
        self.records[trial_id] = TrialRecord(config_id, recorded_accuracy, origin)
        return self.records[trial_id]

    def epoch(self, trial_id: str, val_accuracy: float, cost: float, *, completed: bool = False,
              final_accuracy: float | None = None) -> None:
        record = self.records[trial_id]
        self.clock += cost
        record.cost += cost
        record.epochs += 1
        record.best_val = max(record.best_val, val_accuracy)
        record.completed = completed
        if final_accuracy is not None:
            record.recorded_accuracy = final_accuracy
        accuracy = self.incumbent().accuracy
        if not self.trajectory or self.trajectory[-1]["accuracy"] != accuracy:
            self.trajectory.append({self.unit.point: self.clock, "accuracy": accuracy})

    def incumbent(self) -> TrialRecord:
        return max(self.records.values(), key=lambda r: r.best_val)  # max keeps the first of equals

    def outcome(self) -> SearchOutcome:
        best = self.incumbent() if self.records else None
        return SearchOutcome(trials=list(self.records.values()), trajectory=self.trajectory,
                             training_cost=self.clock, incumbent=best.config_id if best else None,
                             accuracy=best.accuracy if best else None, unit=self.unit)


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
    tracker = SearchTracker(outcomes.unit)
    search_finished = False
    time_limit = outcomes.time_limit(budget)

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
            tracker.add_trial(trial_id, config_id, outcomes.runs[config_id].accuracy, suggestion.get(ORIGIN_KEY))
            new = Trial("replay", config=suggestion, trial_id=trial_id, stub=True)
            controller.trials.append(new)
            scheduler.on_trial_add(controller, new)
            continue
        trial.set_status(Trial.RUNNING)
        record = tracker.records[trial.trial_id]
        run = outcomes.runs[record.config_id]
        while budget_left():
            value = run.val_accuracy[record.epochs]
            tracker.epoch(trial.trial_id, value, run.epoch_costs[record.epochs],
                          completed=record.epochs + 1 >= run.n_epochs)
            result = _result(record, trial, value, outcomes.unit)
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


def _result(record: TrialRecord, trial: Any, value: float, unit: CostUnit) -> dict[str, Any]:
    """The result Tune's searcher and scheduler see; ``time_total_s`` only where the cost is seconds."""
    time_total = {"time_total_s": record.cost} if unit is SECONDS else {}
    return {
        METRIC: value,
        TIME_ATTR: record.epochs,
        **time_total,
        "trial_id": trial.trial_id,
        "config": trial.config,
    }
