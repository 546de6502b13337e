"""The HPO baselines as Tune searchers and schedulers over a ``CandidateSpace``.

=========  ==================================================  ===========================================
method     searcher                                            scheduler
=========  ==================================================  ===========================================
random     ``RandomSearcher`` (uniform over the space)          FIFO
tpe        Optuna's TPE through Tune's ``OptunaSearch``         FIFO
asha       ``RandomSearcher``                                   ``ASHAScheduler`` (grace 1 epoch, eta 3)
bohb       ``TuneBOHB``                                         ``HyperBandForBOHB`` (eta 3)
hybrid     ``OptunaSearch`` seeded with the zero-shot top-k     FIFO
=========  ==================================================  ===========================================

Every baseline evaluates the default configuration first (``first_points``); the hybrid evaluates
the meta-learner's top picks first instead. Each searcher is wrapped in ``CandidateSearcher``, which
maps proposals to untried candidates (see ``metallmix.bench.space``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from ray.tune.search import Searcher

from metallmix.bench.space import CANDIDATE_KEY, CandidateSpace
from metallmix.errors import ConfigError

METRIC = "val_accuracy"
MODE = "max"
TIME_ATTR = "training_iteration"  # one iteration = one epoch
REDUCTION_FACTOR = 3
HPO_METHODS = ("random", "tpe", "asha", "bohb", "hybrid")
CURVE_METHODS = ("asha", "bohb")  # their schedulers stop or pause trials between epochs: they need learning curves


class RandomSearcher(Searcher):
    """Uniform random search over Tune domains, seeded, with points to evaluate first."""

    def __init__(self, *, seed: int, points_to_evaluate: Sequence[dict[str, Any]] = ()):
        super().__init__(metric=METRIC, mode=MODE)
        self._rng = np.random.default_rng(seed)
        self._points = [dict(p) for p in points_to_evaluate]
        self._space: dict[str, Any] | None = None

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        self._space = dict(config)
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self._points:
            return self._points.pop(0)
        if self._space is None:
            raise ConfigError("RandomSearcher has no search space; Tune passes it through set_search_properties")
        return {name: domain.sample(random_state=self._rng) for name, domain in self._space.items()}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass


class CandidateSearcher(Searcher):
    """Wraps a Tune searcher: each proposal becomes the closest untried candidate of ``space``.

    The wrapped searcher is given the space here. The suggested config holds the candidate's
    hyperparameters and its id under ``candidate_id``; results go back to the wrapped searcher, keyed
    by trial id, for the point it proposed. When every candidate has been tried the search is finished.
    """

    def __init__(self, searcher: Any, space: CandidateSpace):
        super().__init__(metric=METRIC, mode=MODE)
        self.searcher = searcher
        self.space = space
        self.tried: set[str] = set()
        searcher.set_search_properties(METRIC, MODE, space.param_space())

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        """The space is the candidates' (set at construction); Tune's call only confirms metric and mode."""
        if metric not in (None, METRIC) or mode not in (None, MODE):
            raise ConfigError(f"the benchmark searches {METRIC} ({MODE}); got metric={metric!r}, mode={mode!r}")
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if len(self.tried) >= len(self.space):
            return self.FINISHED
        proposal = self.searcher.suggest(trial_id)
        if proposal is None or proposal == self.FINISHED:
            return proposal
        candidate = self.space.nearest(proposal, exclude=self.tried)
        self.tried.add(candidate)
        return {**self.space.config_of(candidate), CANDIDATE_KEY: candidate}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def get_state(self) -> dict[str, Any]:
        """For Tune's experiment checkpoints: the wrapped searcher (pickled whole) and the tried candidates."""
        return {"searcher": self.searcher, "tried": sorted(self.tried)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.searcher = state["searcher"]
        self.tried = set(state["tried"])

    # HyperBandForBOHB tells the searcher (TuneBOHB) when it pauses and resumes a trial
    def on_pause(self, trial_id: str) -> None:
        if hasattr(self.searcher, "on_pause"):
            self.searcher.on_pause(trial_id)

    def on_unpause(self, trial_id: str) -> None:
        if hasattr(self.searcher, "on_unpause"):
            self.searcher.on_unpause(trial_id)


def build_search(method: str, space: CandidateSpace, *, seed: int, first_points: Sequence[dict[str, Any]],
                 max_epochs: int) -> tuple[CandidateSearcher, Any]:
    """(searcher, scheduler) of an HPO method (module docstring). ``first_points`` are candidate points
    (``CandidateSpace.point_of``) evaluated first."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandForBOHB

    points = [dict(p) for p in first_points]
    scheduler: Any = FIFOScheduler()
    if method in ("random", "asha"):
        inner: Any = RandomSearcher(seed=seed, points_to_evaluate=points)
        if method == "asha":
            scheduler = ASHAScheduler(time_attr=TIME_ATTR, max_t=max_epochs, grace_period=1,
                                      reduction_factor=REDUCTION_FACTOR)
    elif method in ("tpe", "hybrid"):
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        inner = OptunaSearch(points_to_evaluate=points or None, sampler=optuna.samplers.TPESampler(seed=seed))
    elif method == "bohb":
        from ray.tune.search.bohb import TuneBOHB

        inner = TuneBOHB(points_to_evaluate=points or None, seed=seed)
        scheduler = HyperBandForBOHB(time_attr=TIME_ATTR, max_t=max_epochs, reduction_factor=REDUCTION_FACTOR)
    else:
        raise ConfigError(f"unknown HPO method {method!r}; choose one of {list(HPO_METHODS)}")
    scheduler.set_search_properties(METRIC, MODE)
    return CandidateSearcher(inner, space), scheduler
