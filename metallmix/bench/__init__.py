"""Benchmarks: zero-shot picks against Ray Tune HPO baselines (``python -m metallmix.bench``).

See ``metallmix.bench.run`` for the methods, modes and result fields, ``metallmix.bench.report`` for
the comparison table and plots, and docs/benchmarks.md for the latest numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

RESULT_FILE = "bench_result.json"  # one per benchmark job, in its Hydra job folder
FORMAT_VERSION = 1  # of that file


@dataclass(frozen=True)
class CostUnit:
    """What a job's training cost is counted in, and the names it is recorded under.

    Train mode, and replay of a knowledge base that records training times, count seconds. A knowledge
    base that records none (MedMNIST+: ``cost_seconds`` empty) gives each run a compute estimate
    (``cost_flops_estimate``, FLOP, metallmix.compute_cost), and replay counts that instead. The two
    never share a field: a result holds its cost in the fields of its unit and null in the other's,
    so no estimate is ever read as a time.
    """

    name: str
    total: str  # result field: the job's whole training cost
    within: str  # result field: the cost until the incumbent came within 1 point of its final accuracy
    point: str  # key of a trajectory point: the cumulative cost at which the incumbent changed
    trial: str  # key of a trial's own cost in the result's trials


SECONDS = CostUnit("seconds", total="training_seconds", within="time_to_within_1pct_seconds",
                   point="time_seconds", trial="seconds")
FLOPS_ESTIMATE = CostUnit("flops_estimate", total="training_compute_flops_estimate",
                          within="compute_to_within_1pct_flops_estimate", point="compute_flops_estimate",
                          trial="compute_flops_estimate")
COST_UNITS = (SECONDS, FLOPS_ESTIMATE)
