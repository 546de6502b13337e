"""The HPO baselines as Tune searchers and schedulers over a ``CandidateSpace``.

=========  ==================================================  ===========================================
method     searcher                                            scheduler
=========  ==================================================  ===========================================
random     ``RandomSearcher`` (uniform over the space)          FIFO
tpe        ``CandidateTPE``: Optuna's TPE (Tune's OptunaSearch)  FIFO
asha       ``RandomSearcher``                                   ``ASHAScheduler`` (grace 1 epoch, eta 3)
bohb       ``CandidateBOHB``: Tune's TuneBOHB (hpbandster)      ``HyperBandForBOHB`` (eta 3)
hybrid     ``CandidateTPE`` seeded with the zero-shot top-k    FIFO
=========  ==================================================  ===========================================

Each searcher is wrapped in ``CandidateSearcher``, which evaluates given candidates first (the default
configuration of the ``+default`` variants, the hybrid's zero-shot seeds, the ranked lists of the
k-trial zero-shot anchors), then maps each proposal to the closest untried candidate (see
``metallmix.bench.space``) and tells the searcher that candidate's coordinates (``ran``): a searcher
learns the outcome of the configuration that actually ran, never of the point it proposed.

Every trial records where its configuration came from (``ORIGINS``, the trial config's ``origin``):

- ``default``: the search space's default configuration, evaluated first by ``METHOD+default``;
- ``seed``: a zero-shot pick evaluated first by the hybrid;
- ``portfolio``, ``nearest_dataset``: an entry of a zero-shot anchor's ranked list (``portfolio_k``,
  ``nearest_dataset_k`` in ``metallmix.bench.run``);
- ``startup``: a random draw of a model-based searcher (TPE, BOHB) before it has results enough to model;
- ``model``: proposed by the searcher's model (TPE's Parzen estimators, BOHB's kernel densities);
- ``random``: a uniform random draw by design (random search, ASHA, and BOHB's random fraction once it
  models, which keeps HyperBand's guarantees).

Model-based searchers model within the budget (``startup_trials``): the libraries' defaults assume
budgets far above ours (Optuna's TPE waits for 10 finished trials; hpbandster's BOHB for d+1 = 33
results on one budget of the 32-dimensional Quick-Tune space, and twice that for its two densities), so
with 10 or 30 trials they would be random search.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import ConfigSpace
import numpy as np
import optuna
from hpbandster.core.base_config_generator import base_config_generator
from hpbandster.optimizers.config_generators.bohb import BOHB
from ray.tune.search import Searcher
from ray.tune.search.bohb import TuneBOHB
from ray.tune.search.optuna import OptunaSearch

from metallmix.bench.space import CANDIDATE_KEY, CandidateSpace
from metallmix.errors import ConfigError

METRIC = "val_accuracy"
MODE = "max"
TIME_ATTR = "training_iteration"  # one iteration = one epoch
REDUCTION_FACTOR = 3
HPO_METHODS = ("random", "tpe", "asha", "bohb", "hybrid")
CURVE_METHODS = ("asha", "bohb")  # their schedulers stop or pause trials between epochs: they need learning curves
DEFAULT_VARIANT = "+default"  # METHOD+default: the search space's default configuration first
DEFAULT_FIRST_METHODS = tuple(m + DEFAULT_VARIANT for m in ("random", "tpe", "asha", "bohb"))
ORIGIN_KEY = "origin"  # of a trial config: where the configuration came from (module docstring)
ORIGINS = ("default", "seed", "portfolio", "nearest_dataset", "startup", "model", "random")
MODEL_ORIGIN = "model"

MIN_STARTUP_TRIALS = 2  # TPE splits finished trials into a good and a bad group: one of each at least
MAX_STARTUP_TRIALS = 10  # Optuna's default n_startup_trials, reached at budgets of 30 trials
MIN_KDE_POINTS = 2  # a density's bandwidth is its points' spread: one point alone makes a spike


def startup_trials(budget_trials: float | None) -> int:
    """Results a model-based searcher waits for before its model proposes: a third of the budget in
    trials, at least ``MIN_STARTUP_TRIALS``, at most ``MAX_STARTUP_TRIALS`` (Optuna's default).

    Optuna's TPESampler samples at random "until the given number of trials finish in the same study"
    (n_startup_trials, default 10): with a budget of 10 trials it never models. A third of the budget
    leaves two thirds of every budget to the model, as BOHB's random fraction of 1/3 does. Seeded
    trials (the hybrid's, the default of ``+default``) are finished trials and count. ``None`` (a
    budget not in trials, e.g. a time budget in train mode): the library default.
    """
    if budget_trials is None:
        return MAX_STARTUP_TRIALS
    return int(max(MIN_STARTUP_TRIALS, min(MAX_STARTUP_TRIALS, budget_trials // 3)))


def bohb_min_points(budget_trials: float | None) -> int:
    """BOHB's min_points_in_model: ``startup_trials``, and at least two points for each of its densities.

    hpbandster's default is d+1 (the BOHB paper's N_min) and it refuses less, with a good and a bad
    density of more than d points each: on a 32-dimensional space 66 results on one budget. HyperBand
    gives one result per trial on its lowest budget, so a budget of 10 or 30 trials never reaches it.
    """
    return max(2 * MIN_KDE_POINTS, startup_trials(budget_trials))


class RandomSearcher(Searcher):
    """Uniform random search over Tune domains, seeded; it learns nothing (``ran`` ignores the candidate)."""

    def __init__(self, *, seed: int):
        super().__init__(metric=METRIC, mode=MODE)
        self._rng = np.random.default_rng(seed)
        self._space: dict[str, Any] | None = None
        self.origin = "random"

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        self._space = dict(config)
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self._space is None:
            raise ConfigError("RandomSearcher has no search space; Tune passes it through set_search_properties")
        return {name: domain.sample(random_state=self._rng) for name, domain in self._space.items()}

    def ran(self, trial_id: str, point: dict[str, Any]) -> None:
        pass

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass


class ListEnd(Searcher):
    """The searcher of a ranked list (``build_list_search``): it proposes nothing, so the search ends
    when the list does."""

    def __init__(self) -> None:
        super().__init__(metric=METRIC, mode=MODE)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True

    def suggest(self, trial_id: str) -> str:
        return Searcher.FINISHED

    def ran(self, trial_id: str, point: dict[str, Any]) -> None:
        pass

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass


class CandidateTPE(OptunaSearch):
    """Tune's OptunaSearch with a TPESampler that models after ``n_startup_trials`` finished trials,
    told the outcome of the candidate that ran.

    Optuna fixes a trial's parameters when they are sampled, so the proposal's own Optuna trial ends
    as failed (TPE learns from complete and pruned trials only) and the candidate that ran is added
    to the study with its result (``add_evaluated_point``, as OptunaSearch does for evaluated
    rewards). ``origin``: of the last proposal, "model" once ``n_startup_trials`` candidates have
    finished (Optuna's rule), else "startup".
    """

    def __init__(self, *, seed: int, n_startup_trials: int):
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        super().__init__(sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials))
        self.n_startup_trials = n_startup_trials
        self.finished = 0  # candidates told complete or pruned
        self.proposed: set[str] = set()  # trials with an Optuna trial of their own (the proposal)
        self.running: dict[str, dict[str, Any]] = {}  # trial id -> the candidate's point
        self.origin = "startup"

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        self.origin = MODEL_ORIGIN if self.finished >= self.n_startup_trials else "startup"
        proposal = super().suggest(trial_id)
        self.proposed.add(trial_id)
        return proposal

    def ran(self, trial_id: str, point: dict[str, Any]) -> None:
        self.running[trial_id] = dict(point)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Nothing: TPE learns from final values (there is no pruner), told at completion."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.proposed:
            self.proposed.discard(trial_id)
            super().on_trial_complete(trial_id, result=None, error=True)
        value = (result or {}).get(METRIC)
        self.add_evaluated_point(self.running.pop(trial_id), value, error=value is None and error,
                                 pruned=value is None and not error)
        self.finished += value is not None or not error


class ProductKernelDensity:
    """The density of BOHB's models, over ConfigSpace's vectors (continuous coordinates in [0, 1],
    categorical ones as choice indices): the mean over ``data`` of a product of Gaussian kernels
    (continuous) and Aitchison-Aitken kernels (categorical: 1 - h on the point's own choice, h / (c-1)
    on each of the c-1 others), with
    Scott's normal-reference bandwidths clipped at ``min_bandwidth``, and a categorical bandwidth at
    most (c-1)/c (then the kernel is uniform over the c choices).

    That is the estimator hpbandster fits (statsmodels' KDEMultivariate with bw="normal_reference"),
    which refuses fewer points than variables; a product of kernels needs no more than one point per
    density. ``data``, ``bw`` and ``pdf`` are what hpbandster's ``get_config`` reads.
    """

    def __init__(self, data: np.ndarray, choices: np.ndarray, min_bandwidth: float):
        self.data = np.asarray(data, dtype=float)
        self.choices = np.asarray(choices)  # per coordinate: its number of choices, 0 when continuous
        n, d = self.data.shape
        bandwidth = np.clip(1.06 * self.data.std(axis=0) * n ** (-1.0 / (4 + d)), min_bandwidth, None)
        categorical = self.choices > 0
        bandwidth[categorical] = np.minimum(bandwidth[categorical], (self.choices[categorical] - 1) / self.choices[categorical])
        self.bw = bandwidth

    def pdf(self, x: Any) -> float:
        x = np.asarray(x, dtype=float)
        continuous = self.choices == 0
        h = self.bw[continuous]
        gaussian = np.exp(-0.5 * ((self.data[:, continuous] - x[continuous]) / h) ** 2) / (np.sqrt(2 * np.pi) * h)
        lam, levels = self.bw[~continuous], self.choices[~continuous]
        aitchison_aitken = np.where(self.data[:, ~continuous] == x[~continuous], 1 - lam, lam / (levels - 1))
        return float((gaussian.prod(axis=1) * aitchison_aitken.prod(axis=1)).mean())


class BudgetBOHB(BOHB):
    """hpbandster's BOHB config generator that models from ``min_points_in_model`` results on one
    budget, with its own seeded random state.

    hpbandster raises min_points_in_model to d+1 and fits its densities only when each holds more
    than d points (statsmodels' estimator requires it). Here a budget's densities are fitted once it
    has ``min_points_in_model`` results: the best max(2, top_n_percent % of them) make the good
    density, the others (2 at least) the bad one, each a ``ProductKernelDensity`` (hpbandster's
    estimator without the d-point floor), and proposals are drawn by hpbandster's own ``get_config``
    from the largest budget with a model. Its other settings are hpbandster's (top_n_percent 15,
    num_samples 64, random_fraction 1/3, bandwidth_factor 3, min_bandwidth 1e-3): none needs more
    results than a small budget gives. hpbandster draws from NumPy's global random state; its calls
    run on this generator's own state, seeded, so a search is reproducible.
    """

    def __init__(self, configspace: Any, *, min_points_in_model: int, seed: int):
        super().__init__(configspace)
        self.min_points_in_model = min_points_in_model
        self.random_state = np.random.RandomState(seed).get_state()
        self.origin = "startup"  # of the last configuration drawn

    @contextmanager
    def own_random_state(self) -> Iterator[None]:
        outside = np.random.get_state()
        np.random.set_state(self.random_state)
        try:
            yield
        finally:
            self.random_state = np.random.get_state()
            np.random.set_state(outside)

    def get_config(self, budget: Any) -> tuple[dict, dict]:
        with self.own_random_state():
            config, info = super().get_config(budget)
        self.origin = MODEL_ORIGIN if info.get("model_based_pick") else "random" if self.kde_models else "startup"
        return config, info

    def new_result(self, job: Any, update_model: bool = True) -> None:
        base_config_generator.new_result(self, job)
        budget = job.kwargs["budget"]
        if self.kde_models and max(self.kde_models) > budget:
            return  # proposals come from the largest budget with a model: this one no longer counts
        loss = job.result["loss"] if job.result is not None and np.isfinite(job.result["loss"]) else np.inf
        self.configs.setdefault(budget, []).append(
            ConfigSpace.Configuration(self.configspace, job.kwargs["config"]).get_array())
        self.losses.setdefault(budget, []).append(loss)
        n = len(self.losses[budget])
        n_good = max(MIN_KDE_POINTS, math.ceil(self.top_n_percent * n / 100))
        if not update_model or n < self.min_points_in_model or n - n_good < MIN_KDE_POINTS:
            return
        order = np.argsort(self.losses[budget], kind="stable")
        with self.own_random_state():
            data = self.impute_conditional_data(np.asarray(self.configs[budget])[order])
        self.kde_models[budget] = {"good": self._density(data[:n_good]), "bad": self._density(data[n_good:])}

    def _density(self, data: np.ndarray) -> ProductKernelDensity:
        return ProductKernelDensity(data, self.vartypes, self.min_bandwidth)


class CandidateBOHB(TuneBOHB):
    """Tune's TuneBOHB on a ``BudgetBOHB`` config generator, told the candidate that ran: the results
    HyperBand reports on each budget are recorded for the candidate's coordinates. ``origin``: of the
    last proposal (``BudgetBOHB.origin``)."""

    def __init__(self, *, seed: int, min_points_in_model: int):
        super().__init__(seed=seed)
        self.min_points_in_model = min_points_in_model
        self.generator_seed = seed
        self.origin = "startup"
        self.recorded_step: dict[str, int] = {}  # trial id -> the step of its last result recorded on a budget

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        if not super().set_search_properties(metric, mode, config, **spec):
            return False
        self.bohber = BudgetBOHB(self.bohber.configspace, min_points_in_model=self.min_points_in_model,
                                 seed=self.generator_seed)
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        proposal = super().suggest(trial_id)
        self.origin = self.bohber.origin
        return proposal

    def ran(self, trial_id: str, point: dict[str, Any]) -> None:
        self.trial_to_params[trial_id] = dict(point)
        self.running.add(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        super().on_trial_result(trial_id, result)
        if "budget" in result.get("hyperband_info", {}):
            self.recorded_step[trial_id] = result[TIME_ATTR]

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """A trial's last result is recorded even when HyperBand reported it on no budget: a run that
        ended before its next budget (a failed or truncated run) keeps that result on every larger
        budget, so it is recorded on the largest budget with results, the one BOHB models from
        (hpbandster records a crashed run as a bad configuration of its budget; Tune's TuneBOHB drops
        it, and BOHB would then learn from two thirds of the Quick-Tune runs it meets)."""
        step = self.recorded_step.pop(trial_id, None)
        if result is not None and result.get(METRIC) is not None and step != result.get(TIME_ATTR):
            budget = result.get("hyperband_info", {}).get("budget") or max(self.bohber.losses, default=result[TIME_ATTR])
            self.bohber.new_result(self.to_wrapper(trial_id, {**result, "hyperband_info": {"budget": budget}}))
        super().on_trial_complete(trial_id, result=result, error=error)


class CandidateSearcher(Searcher):
    """Evaluates the ``first`` candidates, then each proposal of ``searcher`` becomes the closest untried
    candidate of ``space``.

    The wrapped searcher is given the space here and told the coordinates of every candidate that runs
    (``ran(trial_id, space.point_of(candidate))``), the ``first`` ones included; results go to it keyed
    by trial id. The suggested config holds the candidate's hyperparameters, its id under
    ``candidate_id`` and where it came from under ``origin`` (``first_origin`` for the ``first``
    candidates, the wrapped searcher's ``origin`` after its proposals). When every candidate has been
    tried the search is finished.
    """

    def __init__(self, searcher: Any, space: CandidateSpace, *, first: Sequence[str] = (), first_origin: str = "default"):
        super().__init__(metric=METRIC, mode=MODE)
        if first_origin not in ORIGINS:
            raise ConfigError(f"unknown trial origin {first_origin!r}; choose one of {list(ORIGINS)}")
        self.searcher = searcher
        self.space = space
        self.first = [str(c) for c in first]
        self.first_origin = first_origin
        self.tried: set[str] = set()
        searcher.set_search_properties(METRIC, MODE, space.param_space())

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        """The space is the candidates' (set at construction); Tune's call only confirms metric and mode."""
        if metric not in (None, METRIC) or mode not in (None, MODE):
            raise ConfigError(f"the benchmark searches {METRIC} ({MODE}); got metric={metric!r}, mode={mode!r}")
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        while self.first and self.first[0] in self.tried:
            self.first.pop(0)
        if len(self.tried) >= len(self.space):
            return self.FINISHED
        if self.first:
            candidate, origin = self.first.pop(0), self.first_origin
        else:
            proposal = self.searcher.suggest(trial_id)
            if proposal is None or proposal == self.FINISHED:
                return proposal
            candidate, origin = self.space.nearest(proposal, exclude=self.tried), self.searcher.origin
        self.tried.add(candidate)
        self.searcher.ran(trial_id, self.space.point_of(candidate))
        return {**self.space.config_of(candidate), CANDIDATE_KEY: candidate, ORIGIN_KEY: origin}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def get_state(self) -> dict[str, Any]:
        """For Tune's experiment checkpoints: the wrapped searcher (pickled whole), the candidates still
        to evaluate first and the tried ones."""
        return {"searcher": self.searcher, "first": list(self.first), "tried": sorted(self.tried)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.searcher = state["searcher"]
        self.first = list(state["first"])
        self.tried = set(state["tried"])

    # HyperBandForBOHB tells the searcher (TuneBOHB) when it pauses and resumes a trial
    def on_pause(self, trial_id: str) -> None:
        if hasattr(self.searcher, "on_pause"):
            self.searcher.on_pause(trial_id)

    def on_unpause(self, trial_id: str) -> None:
        if hasattr(self.searcher, "on_unpause"):
            self.searcher.on_unpause(trial_id)


def build_search(method: str, space: CandidateSpace, *, seed: int, max_epochs: int, first: Sequence[str] = (),
                 first_origin: str = "default", budget_trials: float | None = None) -> tuple[CandidateSearcher, Any]:
    """(searcher, scheduler) of an HPO method of ``HPO_METHODS`` (module docstring). ``first``: candidate
    ids evaluated first, recorded with ``first_origin``. ``budget_trials``: the budget in trials (None:
    unknown), which sets when TPE and BOHB start modelling (``startup_trials``, ``bohb_min_points``)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandForBOHB

    scheduler: Any = FIFOScheduler()
    if method in ("random", "asha"):
        inner: Any = RandomSearcher(seed=seed)
        if method == "asha":
            scheduler = ASHAScheduler(time_attr=TIME_ATTR, max_t=max_epochs, grace_period=1,
                                      reduction_factor=REDUCTION_FACTOR)
    elif method in ("tpe", "hybrid"):
        inner = CandidateTPE(seed=seed, n_startup_trials=startup_trials(budget_trials))
    elif method == "bohb":
        inner = CandidateBOHB(seed=seed, min_points_in_model=bohb_min_points(budget_trials))
        scheduler = HyperBandForBOHB(time_attr=TIME_ATTR, max_t=max_epochs, reduction_factor=REDUCTION_FACTOR)
    else:
        raise ConfigError(f"unknown HPO method {method!r}; choose one of {list(HPO_METHODS)}")
    scheduler.set_search_properties(METRIC, MODE)
    return CandidateSearcher(inner, space, first=first, first_origin=first_origin), scheduler


def build_list_search(space: CandidateSpace, ranked: Sequence[str], origin: str) -> tuple[CandidateSearcher, Any]:
    """(searcher, scheduler) that evaluates the ``ranked`` candidates in order, each to its end, then stops:
    a zero-shot method's pick (one candidate) or ranked list (``portfolio_k``, ``nearest_dataset_k``)."""
    from ray.tune.schedulers import FIFOScheduler

    scheduler = FIFOScheduler()
    scheduler.set_search_properties(METRIC, MODE)
    return CandidateSearcher(ListEnd(), space, first=ranked, first_origin=origin), scheduler
