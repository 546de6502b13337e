"""One benchmark job: a method picks or searches a configuration for one held-out dataset.

``python -m metallmix.bench`` (Hydra, ``conf/bench.yaml``) runs one job; ``-m`` runs the product of
the values given, e.g. ``-m method=zeroshot,random,tpe held_out=APL,BRD seed=0,1``. Each job writes
``bench_result.json`` into its Hydra job folder; ``python -m metallmix.bench.report FOLDER`` turns a
multirun folder into the comparison table and plots.

Methods:

- ``zeroshot``: the meta-learner's top-scored candidate, trained once; no search.
- ``zeroshot_llm``: the configured LLM's pick from the meta-learner's shortlist (``llm_engine=...``).
- ``portfolio``: the configuration best on average over the training datasets
  (``metallmix.evaluate.portfolio_pick``: accuracy min-max normalised within each dataset), trained
  once; no search, and nothing learnt from meta-features. Where no configuration was run on two
  training datasets (Quick-Tune) there is no portfolio: the job writes a ``skipped`` result.
- ``nearest_dataset``: the best configuration of the training dataset nearest in meta-features
  (``metallmix.retrieval``, as ``metallmix.evaluate.nearest_dataset_pick``), trained once.
- ``portfolio_k``, ``nearest_dataset_k``: their ranked lists, tried in order under the search budget
  (k = ``budget.trials``; a time budget stops the list as it stops a search): the portfolio's configs
  best first (``metalearner.portfolio_scores``), and the best configuration of each training dataset,
  nearest first, then their second best in the same order (the warm start of Feurer et al., 2015:
  the best configurations of the most similar datasets; one per dataset before any second, so that
  one misleading neighbour does not fill the list). Each config becomes its own candidate, else the
  closest one not tried yet (``ranked_candidates``).
- ``random``, ``tpe``, ``asha``, ``bohb``: Tune HPO baselines (``metallmix.bench.search``) from their
  first trial; TPE and BOHB model within the budget (``search.startup_trials``).
- ``random+default``, ``tpe+default``, ``asha+default``, ``bohb+default``: the same, the default
  configuration of the search space (``default_configs``) evaluated first.
- ``hybrid``: TPE seeded with the zero-shot top ``hybrid.seed_points`` candidates.

Each trial of a result records where its configuration came from (``origin``: default, seed,
portfolio, nearest_dataset, startup, model, random; ``metallmix.bench.search``), and the result the
number of model-based trials (``model_based_trials``).

The held-out dataset, and every dataset derived from it, is removed from the meta-dataset before
anything is fitted. Modes: ``replay`` (outcomes looked up from the held-out dataset's recorded runs,
recorded seconds as simulated time, ``metallmix.bench.replay``) and ``train`` (every trial is a real
training run through Ray Tune, ``metallmix.bench.train``).

Result fields (one JSON document per job): accuracy (the incumbent's: recorded/test accuracy of a
run that ran to its end, else its best validation accuracy), normalized_regret (replay: against the
best and worst run recorded for the dataset), recommendation_seconds (time until the method answers:
meta-features + prediction for zero-shot, plus the LLM's latency for zeroshot_llm, the search's
training time for HPO), training_seconds (every trial's training time; the pick's one run for
zero-shot), time_to_within_1pct_seconds (training time until the incumbent came within 0.01 of its
final accuracy), n_trials, the incumbent trajectory and every trial.

A knowledge base that records no training time (MedMNIST+) is replayed on its compute estimates
(``metallmix.bench.CostUnit``): its results hold training_compute_flops_estimate and
compute_to_within_1pct_flops_estimate (estimated FLOP), trajectory points and trials carry
``compute_flops_estimate`` instead of seconds, and training_seconds, time_to_within_1pct_seconds and a
search's recommendation_seconds (its training time) are null. Every result has all four cost fields,
those of the other unit null. Where the held-out dataset's runs have no learning curves, ASHA and
BOHB have no epochs to stop or pause: their jobs write a result whose ``skipped`` says so (accuracy
null, no trials) instead of failing, and the report lists them as not applicable.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from metallmix.bench import COST_UNITS, FORMAT_VERSION, RESULT_FILE, SECONDS, CostUnit
from metallmix.bench.replay import RecordedOutcomes, SearchBudget, SearchOutcome, simulate_search
from metallmix.bench.search import (CURVE_METHODS, DEFAULT_FIRST_METHODS, DEFAULT_VARIANT, HPO_METHODS,
                                    MODEL_ORIGIN, build_list_search, build_search)
from metallmix.bench.space import CandidateSpace
from metallmix.errors import ConfigError, DataError, MetallmixError
from metallmix.evaluate import closest_candidate, normalized_regret, portfolio_pick
from metallmix.formatting import format_duration, format_flops
from metallmix.metadataset import load_meta_dataset, row_meta_features
from metallmix.metadataset.schema import config_columns, row_config, without_family
from metallmix.metalearner import (PORTFOLIO_NOT_APPLICABLE, MetaLearner, config_id, default_params,
                                   portfolio_applicable, portfolio_scores)
from metallmix.metadataset.store import atomic_write
from metallmix.retrieval import RetrievalIndex

ZERO_SHOT_METHODS = ("zeroshot", "zeroshot_llm", "portfolio", "nearest_dataset")  # no trial before the answer; one trained model
ANCHOR_LISTS = {"portfolio_k": "portfolio", "nearest_dataset_k": "nearest_dataset"}  # ranked zero-shot lists, tried in order
SEARCH_METHODS = HPO_METHODS + DEFAULT_FIRST_METHODS
METHODS = ZERO_SHOT_METHODS + tuple(ANCHOR_LISTS) + SEARCH_METHODS
META_LEARNED_METHODS = ("zeroshot", "zeroshot_llm", "hybrid")  # fit the meta-learner first
RETRIEVAL_METHODS = ("nearest_dataset", "nearest_dataset_k")  # fit the retrieval index first
PORTFOLIO_METHODS = ("portfolio", "portfolio_k")
OFFLINE_FIT_METHODS = META_LEARNED_METHODS + RETRIEVAL_METHODS  # their results report the fit apart (fit_seconds)
MODES = ("replay", "train")
WITHIN = 0.01  # "within 1% of the final best": 0.01 accuracy


def run_benchmark(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Run one job (module docstring) and return its result document."""
    mode, method = cfg.get("mode"), cfg.get("method")
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r}: choose one of {list(MODES)}")
    if method not in METHODS:
        raise ConfigError(f"method={method!r}: choose one of {list(METHODS)}")
    if cfg.get("held_out") in (None, ""):
        raise ConfigError("set the held-out dataset: held_out=NAME (replay: a dataset of the meta-dataset; "
                          "train: a conf/dataset name, a MedMNIST .npz file or an image folder)")
    budget_cfg = dict(cfg.get("budget") or {})
    unknown = sorted(set(budget_cfg) - {"trials", "time_s", "time_runs"})
    if unknown:
        raise ConfigError(f"unknown budget keys {unknown}; a budget has trials, time_s and time_runs")
    budget = SearchBudget(**budget_cfg)
    started = time.perf_counter()
    if mode == "replay":
        document = _run_replay(cfg, method, budget)
    else:
        from metallmix.bench.train import run_train

        document = run_train(cfg, method, budget)
    return {
        "format_version": FORMAT_VERSION,
        "mode": mode,
        "method": method,
        "seed": int(cfg.get("seed", 0)),
        "meta_dataset": str(cfg.get("meta_dataset")),
        "budget": {"trials": budget.trials, "time_s": budget.time_s, "time_runs": budget.time_runs},
        **document,
        "wall_seconds": time.perf_counter() - started,
    }


# --------------------------------------------------------------------------------------------------
# shared by both modes


@lru_cache(maxsize=4)
def meta_dataset(spec: str) -> pd.DataFrame:
    """The meta-dataset of a spec string, loaded once per process (shared: do not modify it)."""
    return load_meta_dataset(spec)


_FITTED: dict[tuple, tuple[Any, float]] = {}


def fitted_without(kind: str, build: Callable[[], Any], spec: str, held_out: str,
                   params: Mapping[str, Any]) -> tuple[Any, float]:
    """``build().fit(...)`` on the meta-dataset ``spec`` without ``held_out``'s family (its parent,
    derived datasets and other sizes: ``metadataset.schema.without_family``), and the fit's seconds. Fitted once per process for each (kind, spec, held_out, params):
    the jobs of a multirun that hold out the same dataset share the fit (``meta_dataset`` loads a spec
    once per process, so these name the training data)."""
    key = (kind, spec, held_out, json.dumps(dict(params), sort_keys=True, default=str))
    if key not in _FITTED:
        train_df = without_family(meta_dataset(spec), held_out)
        started = time.perf_counter()
        model = build().fit(train_df)
        _FITTED[key] = (model, time.perf_counter() - started)
    return _FITTED[key]


def portfolio_choice(spec: str, held_out: str, meta_features: dict[str, float],
                     candidates: pd.DataFrame) -> tuple[str, float]:
    """The portfolio's candidate (``evaluate.portfolio_pick`` on the meta-dataset without ``held_out``'s
    family) and the seconds it took to rank the training configurations and pick."""
    train_df = without_family(meta_dataset(spec), held_out)
    started = time.perf_counter()
    pick = portfolio_pick(train_df, meta_features, candidates)
    return str(pick), time.perf_counter() - started


def ranked_candidates(configs: Iterable[Mapping[str, Any]], candidates: pd.DataFrame, limit: int) -> list[str]:
    """The candidates of ranked configs (keys without prefix), in order, each taken once, at most
    ``limit``: the candidate with the same config where there is one not taken yet, else the closest
    one not taken (``evaluate.closest_candidate``), as ``evaluate.portfolio_pick`` maps its one config."""
    ids: dict[str, str] = {}
    for index, row in zip(candidates.index, candidates.to_dict("records"), strict=True):
        ids.setdefault(config_id(row_config(row)), str(index))
    picked: list[str] = []
    for config in configs:
        if len(picked) >= min(limit, len(candidates)):
            break
        same = ids.get(config_id(dict(config)))
        picked.append(same if same is not None and same not in picked
                      else str(closest_candidate(dict(config), candidates.drop(index=picked))))
    return picked


def portfolio_ranking(spec: str, held_out: str, candidates: pd.DataFrame, limit: int) -> tuple[list[str], float]:
    """``portfolio_k``'s list: the configs of ``metalearner.portfolio_scores`` on the meta-dataset without
    ``held_out``'s family, best first, as candidates (``ranked_candidates``); and the seconds it took."""
    train_df = without_family(meta_dataset(spec), held_out)
    started = time.perf_counter()
    ranked = ranked_candidates(portfolio_scores(train_df)["config"], candidates, limit)
    return ranked, time.perf_counter() - started


def nearest_dataset_ranking(spec: str, held_out: str, meta_features: dict[str, float], candidates: pd.DataFrame,
                            limit: int) -> tuple[list[str], float, float]:
    """``nearest_dataset(_k)``'s list: the best config of each training dataset, nearest in meta-features
    first (``retrieval.RetrievalIndex`` fitted without ``held_out``'s family), then their second best in
    the same order, and so on, as candidates (``ranked_candidates``); the seconds of the query and
    mapping; the (offline) index fit's seconds. Its first entry is ``evaluate.nearest_dataset_pick``'s."""
    params = {"n_top_configs": limit}
    index, fit_seconds = fitted_without("retrieval", lambda: RetrievalIndex(**params), spec, held_out, params)
    started = time.perf_counter()
    neighbours = index.query(meta_features, k=len(index))
    configs = [n["top_configs"][rank]["config"] for rank in range(limit) for n in neighbours
               if rank < len(n["top_configs"])]
    ranked = ranked_candidates(configs, candidates, limit)
    return ranked, time.perf_counter() - started, fit_seconds


def anchor_ranking(cfg: Mapping[str, Any], method: str, held_out: str, meta_features: dict[str, float],
                   candidates: pd.DataFrame, limit: int) -> tuple[list[str], float, float | None]:
    """The ranked candidates of a portfolio or nearest-dataset method (``limit`` of them), the seconds it
    took to rank them, and the offline fit's seconds (None: nothing fitted offline)."""
    spec = str(cfg["meta_dataset"])
    if method in PORTFOLIO_METHODS:
        return (*portfolio_ranking(spec, held_out, candidates, limit), None)
    return nearest_dataset_ranking(spec, held_out, meta_features, candidates, limit)


def list_limit(budget: SearchBudget, candidates: pd.DataFrame) -> int:
    """How long a ranked list of a k-trial method is: the trial budget (k), or every candidate when the
    budget is in time only (it stops the list as it stops a search)."""
    return min(int(budget.trials), len(candidates)) if budget.trials is not None else len(candidates)


def learner_params(spec: str, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The meta-learner settings of a job: those the recommender uses for this knowledge base
    (``metalearner.default_params``), updated by the job's ``learner`` overrides."""
    return {**default_params(meta_dataset(spec)), **dict(overrides or {})}


def zero_shot_ranking(spec: str, held_out: str, meta_features: dict[str, float], candidates: pd.DataFrame,
                      overrides: Mapping[str, Any] | None) -> tuple[list[str], float, float]:
    """Candidate ids, best score first; prediction seconds; the (offline) fit's seconds."""
    params = learner_params(spec, overrides)
    learner, fit_seconds = fitted_without("metalearner", lambda: MetaLearner(**dict(params)), spec, held_out, params)
    started = time.perf_counter()
    scores = learner.predict(meta_features, candidates)["score"].set_axis(candidates.index)
    order = scores.sort_values(ascending=False, kind="stable").index
    return [str(c) for c in order], time.perf_counter() - started, fit_seconds


def searcher_of(method: str) -> str:
    """The HPO method a search method runs: ``tpe`` for ``tpe`` and ``tpe+default``."""
    return method.removesuffix(DEFAULT_VARIANT)


def first_candidates(cfg: Mapping[str, Any], method: str, space: CandidateSpace, ranking: list[str],
                     space_name: str) -> tuple[list[str], str]:
    """Candidates a search evaluates first, and their origin: the zero-shot top ``hybrid.seed_points``
    for the hybrid ("seed"), the closest candidate to the search space's default configuration
    (``default_configs``) for ``METHOD+default`` ("default"), none for the others."""
    if method == "hybrid":
        k = int((cfg.get("hybrid") or {}).get("seed_points", 1))
        return ranking[:k], "seed"
    if method.endswith(DEFAULT_VARIANT):
        default = (cfg.get("default_configs") or {}).get(space_name)
        if not default:
            raise ConfigError(f"method={method} evaluates the default configuration of search space {space_name!r} "
                              f"first, but default_configs has none for it: add default_configs.{space_name}: "
                              f"{{...}} (conf/bench.yaml), or use method={searcher_of(method)}")
        return [space.nearest(dict(default))], "default"
    return [], "default"


def budget_trials(budget: SearchBudget, median_cost: float | None = None) -> float | None:
    """The budget in trials, which sets when TPE and BOHB start modelling (``search.startup_trials``):
    ``budget.trials``, or the number of median-cost runs a time budget pays for (replay: ``median_cost``
    known), the smaller of the two; None where neither is known (a time budget in train mode)."""
    limits = [float(budget.trials)] if budget.trials is not None else []
    if median_cost:
        time_limit = budget.time_limit(median_cost)
        if time_limit is not None:
            limits.append(time_limit / median_cost)
    return min(limits) if limits else None


def within_cost(trajectory: list[dict[str, float]], final: float | None, unit: CostUnit = SECONDS) -> float | None:
    """Training cost (``unit``) at which the incumbent first came within ``WITHIN`` of its final accuracy."""
    if final is None:
        return None
    return next((p[unit.point] for p in trajectory if p["accuracy"] >= final - WITHIN), None)


def cost_fields(unit: CostUnit, total: float | None, within: float | None) -> dict[str, float | None]:
    """Every unit's total and within-1-point fields: ``unit``'s hold the costs, the others are null."""
    fields = {name: None for other in COST_UNITS for name in (other.total, other.within)}
    return {**fields, unit.total: total, unit.within: within}


def search_document(outcome: SearchOutcome, space: CandidateSpace) -> dict[str, Any]:
    unit = outcome.unit
    return {
        "accuracy": outcome.accuracy,
        "best_config": space.config_of(outcome.incumbent) if outcome.incumbent is not None else None,
        **cost_fields(unit, outcome.training_cost, within_cost(outcome.trajectory, outcome.accuracy, unit)),
        "n_trials": len(outcome.trials),
        "model_based_trials": sum(t.origin == MODEL_ORIGIN for t in outcome.trials),
        "trajectory": outcome.trajectory,
        "trials": [{"config_id": t.config_id, "origin": t.origin, "accuracy": t.accuracy, "epochs": t.epochs,
                    unit.trial: t.cost} for t in outcome.trials],
    }


def skipped_document(reason: str) -> dict[str, Any]:
    """The result of a job whose method does not apply: every field present, nothing measured."""
    return {"skipped": reason, "accuracy": None, "best_config": None, **cost_fields(SECONDS, None, None),
            "n_trials": 0, "model_based_trials": 0, "trajectory": [], "trials": [], "recommendation_seconds": None}


# --------------------------------------------------------------------------------------------------
# replay mode


def _run_replay(cfg: Mapping[str, Any], method: str, budget: SearchBudget) -> dict[str, Any]:
    spec = str(cfg.get("meta_dataset"))
    df = meta_dataset(spec)
    dataset = str(cfg["held_out"])
    datasets = sorted(df["dataset_id"].unique())
    if dataset not in datasets:
        raise DataError(f"dataset {dataset!r} has no recorded runs in {spec}; replay needs one of {datasets}")
    held_out = df[df["dataset_id"] == dataset]
    if without_family(df, dataset).empty:
        raise DataError(f"{spec} holds no dataset besides {dataset!r}: nothing to learn from")
    outcomes = RecordedOutcomes(held_out)
    outcomes.time_limit(budget)  # a time budget on runs without recorded times is refused before any work
    reference = {"best_accuracy": outcomes.best, "worst_accuracy": outcomes.worst}
    if searcher_of(method) in CURVE_METHODS and not outcomes.has_curves:
        reason = f"no learning curves in {spec}: ASHA and BOHB need per-epoch results to stop or pause a run"
        return {"dataset": dataset, **skipped_document(reason), "normalized_regret": None, "reference": reference,
                "fit_seconds": None}
    if method in PORTFOLIO_METHODS and not portfolio_applicable(without_family(df, dataset)):
        return {"dataset": dataset, **skipped_document(f"{spec}: {PORTFOLIO_NOT_APPLICABLE}"), "normalized_regret": None,
                "reference": reference, "fit_seconds": None}
    candidates = held_out.set_index("run_id")[config_columns(held_out)]
    space = CandidateSpace(candidates)
    meta_features = {k: v for k, v in row_meta_features(held_out.iloc[0]).items() if v == v}
    seed = int(cfg.get("seed", 0))

    ranking: list[str] = []
    predict_seconds = 0.0
    fit_seconds: float | None = None
    if method in ("zeroshot", "hybrid"):
        ranking, predict_seconds, fit_seconds = zero_shot_ranking(spec, dataset, meta_features, candidates,
                                                                  cfg.get("learner") or {})
    elif method == "nearest_dataset" or method in ANCHOR_LISTS:
        limit = 1 if method == "nearest_dataset" else list_limit(budget, candidates)
        ranking, predict_seconds, fit_seconds = anchor_ranking(cfg, method, dataset, meta_features, candidates, limit)
    document: dict[str, Any]
    if method in ZERO_SHOT_METHODS:
        extra: dict[str, Any] = {}
        if method == "zeroshot_llm":
            from metallmix.bench.llm import llm_pick

            pick, predict_seconds, fit_seconds, extra = llm_pick(cfg, dataset, meta_features, candidates)
        elif method == "portfolio":
            pick, predict_seconds = portfolio_choice(spec, dataset, meta_features, candidates)
        else:
            pick = ranking[0]
        run = outcomes.runs[pick]
        document = {
            "accuracy": run.accuracy,
            "best_config": space.config_of(pick),
            **cost_fields(outcomes.unit, run.cost, run.cost),
            "n_trials": 0,
            "model_based_trials": 0,
            "trajectory": [{outcomes.unit.point: run.cost, "accuracy": run.accuracy}],
            "trials": [],
            "recommendation_seconds": predict_seconds,
            **extra,
        }
    else:
        if method in ANCHOR_LISTS:
            searcher, scheduler = build_list_search(space, ranking, ANCHOR_LISTS[method])
        else:
            first, origin = first_candidates(cfg, method, space, ranking, str(held_out["search_space"].iloc[0]))
            searcher, scheduler = build_search(searcher_of(method), space, seed=seed, max_epochs=outcomes.max_epochs,
                                               first=first, first_origin=origin,
                                               budget_trials=budget_trials(budget, outcomes.median_cost()))
        outcome = simulate_search(searcher, scheduler, outcomes, budget)
        training = outcome.training_seconds  # a search answers after its training; unknown without recorded times
        document = {**search_document(outcome, space),
                    "recommendation_seconds": predict_seconds + training if training is not None else None}
    return {
        "dataset": dataset,
        **document,
        "normalized_regret": _regret(document["accuracy"], outcomes.best, outcomes.worst),
        "reference": reference,
        "fit_seconds": fit_seconds if method in OFFLINE_FIT_METHODS else None,
    }


def _regret(accuracy: float | None, best: float, worst: float) -> float | None:
    return None if accuracy is None else normalized_regret(accuracy, best, worst)


# --------------------------------------------------------------------------------------------------
# the Hydra app


def summary_line(document: dict[str, Any]) -> str:
    """What a job printed: accuracy, regret, training cost (seconds or the estimate, labelled) and trials."""
    if document.get("skipped"):
        return f"skipped: {document['skipped']}"
    regret = document.get("normalized_regret")
    if document.get("training_compute_flops_estimate") is not None:
        training = f"training compute {format_flops(document['training_compute_flops_estimate'])}"
    else:
        training = f"training {format_duration(document['training_seconds'])}"
    return (f"accuracy {document['accuracy']:.4f}" + (f", regret {regret:.3f}" if regret is not None else "")
            + f", {training}, {document['n_trials']} trials")


def write_result(document: dict[str, Any], folder: str) -> str:
    """Write the result atomically into ``folder``; returns its path."""
    path = Path(folder) / RESULT_FILE
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(document, indent=1, default=str)))
    return str(path)


def main() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from metallmix.sweep import REPO_ROOT

    @hydra.main(version_base="1.3", config_path=str(REPO_ROOT / "conf"), config_name="bench")
    def _app(cfg) -> None:
        try:
            document = run_benchmark(OmegaConf.to_container(cfg, resolve=True))
        except MetallmixError as exc:  # bad settings or data: the message says what to fix, no traceback
            print(f"metallmix bench: error: {exc}", file=sys.stderr)
            sys.exit(2)
        path = write_result(document, HydraConfig.get().runtime.output_dir)
        print(f"{document['mode']} {document['method']:>12} {document['dataset']} seed {document['seed']}: "
              f"{summary_line(document)} -> {path}", flush=True)

    _app()
