"""Train mode: every trial is a real training run (``metallmix.training.train_run``) driven by Ray Tune.

The held-out dataset is loaded (a conf/dataset name, a MedMNIST ``.npz`` file, an image folder or a
registered MedMNIST name) and its meta-features computed; the search space is the grid of the
``space`` config group (``conf/space/*.yaml``). Zero-shot methods (the portfolio too) train their one pick, the HPO
methods search with the same Tune searchers and schedulers as replay mode, one trial at a time,
inside ``Tuner.fit``. The trainable reports validation accuracy after every epoch (so ASHA and BOHB
can stop or pause it) and the test accuracy with its last epoch. A trial BOHB pauses restarts from
scratch when resumed (the trainable keeps no checkpoint), and that training time is counted.
A training run that raises is a trial with accuracy 0, not a crash of the benchmark.
"""

from __future__ import annotations

import atexit
import os
import time
from collections.abc import Mapping
from typing import Any

import pandas as pd
from ray import tune

from metallmix.bench.replay import SearchBudget, SearchTracker
from metallmix.bench.search import METRIC, ORIGIN_KEY, build_list_search, build_search
from metallmix.bench.space import CANDIDATE_KEY, CandidateSpace
from metallmix.errors import ConfigError
from metallmix.metadataset.schema import CFG_PREFIX, row_config
from metallmix.sweep import expand_space_points, space_translation

FAILED_ACCURACY = 0.0


def held_out_dataset_config(held_out: Any) -> dict[str, Any]:
    """conf/dataset/<name>.yaml, or a MedMNIST file / image folder / registered name, or a dict as is."""
    from omegaconf import OmegaConf

    from metallmix.recommend import dataset_config
    from metallmix.sweep import REPO_ROOT

    if isinstance(held_out, Mapping):
        return dict(held_out)
    named = REPO_ROOT / "conf" / "dataset" / f"{held_out}.yaml"
    if named.is_file():
        return OmegaConf.to_container(OmegaConf.load(named), resolve=True)
    return dataset_config(str(held_out))


def grid_candidates(space: Mapping[str, Any], epochs: int | None) -> tuple[pd.DataFrame, dict[str, dict]]:
    """The space's grid as a frame of the configs its rows record (cfg_ columns, indexed by config id: what
    the meta-learner scores), and the training config each id runs. ``epochs`` overrides the training
    epochs (of a plain space's recorded configs too, which are its training configs)."""
    from metallmix.metalearner import config_id

    recorded, training = [], []
    for point in expand_space_points(space):
        trained = {**point.training, "epochs": int(epochs)} if epochs is not None else point.training
        recorded.append(trained if point.config == point.training else point.config)
        training.append(trained)
    by_id = {config_id(c): t for c, t in zip(recorded, training)}
    configs = {config_id(c): c for c in recorded}
    frame = pd.DataFrame([{CFG_PREFIX + k: v for k, v in configs[i].items()} for i in by_id], index=list(by_id))
    return frame, by_id


def applicable_candidates(space: Mapping[str, Any], epochs: int | None, meta_features: dict[str, float],
                          dataset: str) -> tuple[pd.DataFrame, dict[str, dict]]:
    """``grid_candidates`` without the configs the space's translation does not run on this dataset (a
    MedMNIST+ point above the dataset's image side: the benchmark never upsampled)."""
    candidates, configs = grid_candidates(space, epochs)
    translation = space_translation(space)
    reasons = {i: translation.skip_reason(row_config(candidates.loc[i]), meta_features) for i in candidates.index}
    kept = [i for i, reason in reasons.items() if reason is None]
    if not kept:
        raise ConfigError(f"no config of space {space.get('name', '?')!r} runs on {dataset!r}: "
                          f"{next(iter(reasons.values()))}; give a dataset the space applies to")
    return candidates.loc[kept], {i: configs[i] for i in kept}


def bench_trial(config: dict[str, Any], *, dataset: Any, configs: dict[str, dict], seed: int,
                allow_download: bool) -> None:
    """The Tune trainable: train the candidate, report each epoch; the last report carries the test accuracy."""
    from metallmix.training import train_run

    held_back: list[dict] = []

    def report(epoch: dict) -> None:  # hold each epoch back one step so the last can carry the test result
        if held_back:
            tune.report(held_back.pop())
        held_back.append(dict(epoch))

    try:
        result = train_run(configs[config[CANDIDATE_KEY]], dataset, seed=seed,
                           num_threads=int(os.environ.get("OMP_NUM_THREADS") or 1),
                           allow_download=allow_download, report=report)
    except Exception as exc:  # noqa: BLE001 - a failed training run is a bad trial, not a crashed benchmark
        tune.report({METRIC: FAILED_ACCURACY, "epoch_seconds": 0.0, "test_accuracy": FAILED_ACCURACY,
                     "error": f"{type(exc).__name__}: {exc}"})
        return
    last = held_back.pop() if held_back else {METRIC: result["test_accuracy"], "epoch_seconds": 0.0}
    tune.report({**last, "test_accuracy": result["test_accuracy"]})


def _ensure_ray(ray_cfg: Mapping[str, Any]) -> None:
    """Ray for the job's trials, started once per process (``metallmix.sweep.init_ray``: a local Ray, or the
    cluster at ``train.ray.address``, refused with what to fix when it cannot be joined)."""
    import ray

    from metallmix.sweep import init_ray

    if ray.is_initialized():
        return
    init_ray(ray_cfg)
    atexit.register(ray.shutdown)


def run_train(cfg: Mapping[str, Any], method: str, budget: SearchBudget) -> dict[str, Any]:
    from metallmix.bench.run import (ANCHOR_LISTS, META_LEARNED_METHODS, OFFLINE_FIT_METHODS, PORTFOLIO_METHODS,
                                      ZERO_SHOT_METHODS, anchor_ranking, budget_trials, first_candidates, list_limit,
                                      meta_dataset, portfolio_choice, search_document, searcher_of, skipped_document,
                                      zero_shot_ranking)
    from metallmix.data import compute_meta_features, dataset_id, load_dataset
    from metallmix.metadataset.schema import without_family
    from metallmix.metalearner import PORTFOLIO_NOT_APPLICABLE, portfolio_applicable
    from metallmix.training import check_weights_available

    train_cfg = dict(cfg.get("train") or {})
    seed = int(cfg.get("seed", 0))
    allow_download = bool(train_cfg.get("allow_download", False))
    dataset_cfg = held_out_dataset_config(cfg["held_out"])
    held_out_id = dataset_id(dataset_cfg)
    spec = str(cfg["meta_dataset"])
    unscored = {"normalized_regret": None, "reference": {"best_accuracy": None, "worst_accuracy": None}}
    if method in PORTFOLIO_METHODS and not portfolio_applicable(without_family(meta_dataset(spec), held_out_id)):
        return {"dataset": held_out_id, **skipped_document(f"{spec}: {PORTFOLIO_NOT_APPLICABLE}"), **unscored,
                "fit_seconds": None}
    dataset = load_dataset(dataset_cfg)
    started = time.perf_counter()
    meta_features = compute_meta_features(dataset)
    meta_features_seconds = time.perf_counter() - started

    candidates, configs = applicable_candidates(cfg["space"], train_cfg.get("epochs"), meta_features, held_out_id)
    for backbone, weights in sorted({(c["backbone"], c.get("weights", "none")) for c in configs.values()}):
        check_weights_available(backbone, weights, allow_download=allow_download)
    space = CandidateSpace(candidates)

    ranking: list[str] = []
    predict_seconds = 0.0
    fit_seconds: float | None = None
    extra: dict[str, Any] = {}
    if method in META_LEARNED_METHODS:
        if method == "zeroshot_llm":
            from metallmix.bench.llm import llm_pick

            pick, predict_seconds, fit_seconds, extra = llm_pick(cfg, held_out_id, meta_features, candidates)
            ranking = [pick]
        else:
            ranking, predict_seconds, fit_seconds = zero_shot_ranking(spec, held_out_id, meta_features, candidates,
                                                                      cfg.get("learner") or {})
    elif method == "portfolio":
        pick, predict_seconds = portfolio_choice(spec, held_out_id, meta_features, candidates)
        ranking = [pick]
    elif method == "nearest_dataset" or method in ANCHOR_LISTS:
        limit = 1 if method == "nearest_dataset" else list_limit(budget, candidates)
        ranking, predict_seconds, fit_seconds = anchor_ranking(cfg, method, held_out_id, meta_features, candidates, limit)
    max_epochs = max(int(c.get("epochs", 1)) for c in configs.values())  # k-NN configs train no epoch
    if method in ZERO_SHOT_METHODS:  # one trial: the pick
        searcher, scheduler = build_list_search(space, ranking[:1], "seed")
        n_trials = 1
    else:
        if method in ANCHOR_LISTS:
            searcher, scheduler = build_list_search(space, ranking, ANCHOR_LISTS[method])
        else:
            first, origin = first_candidates(cfg, method, space, ranking, str(cfg["space"].get("name", "")))
            searcher, scheduler = build_search(searcher_of(method), space, seed=seed, max_epochs=max_epochs, first=first,
                                               first_origin=origin, budget_trials=budget_trials(budget))
        n_trials = budget.trials if budget.trials is not None else -1

    _ensure_ray(train_cfg.get("ray") or {})
    resources = train_cfg.get("resources") or {}
    collector = EpochCollector()
    tuner = tune.Tuner(
        tune.with_resources(
            tune.with_parameters(bench_trial, dataset=dataset, configs=configs, seed=seed, allow_download=allow_download),
            {"cpu": float(resources.get("cpu", 1)), "gpu": float(resources.get("gpu", 0))},
        ),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                    num_samples=n_trials, max_concurrent_trials=1, reuse_actors=True,
                                    time_budget_s=budget.time_limit() if method not in ZERO_SHOT_METHODS else None),
        run_config=tune.RunConfig(name=f"metallmix-bench-{method}", storage_path=train_cfg.get("storage") or None,
                                  callbacks=[collector], verbose=0),
    )
    search_started = time.perf_counter()
    tuner.fit()
    search_seconds = time.perf_counter() - search_started
    outcome = collector.tracker.outcome()
    document = search_document(outcome, space)
    if method in ZERO_SHOT_METHODS:
        document.update(n_trials=0, model_based_trials=0, recommendation_seconds=meta_features_seconds + predict_seconds,
                        trials=[], time_to_within_1pct_seconds=outcome.training_seconds)
    else:
        ranked_first = method == "hybrid" or method in ANCHOR_LISTS  # they rank candidates before the search
        document["recommendation_seconds"] = search_seconds + (meta_features_seconds + predict_seconds
                                                              if ranked_first else 0.0)
    return {
        "dataset": held_out_id,
        **document,
        **unscored,
        "fit_seconds": fit_seconds if method in OFFLINE_FIT_METHODS else None,
        **extra,
    }


class EpochCollector(tune.Callback):
    """Feeds every reported epoch, in arrival order, to a ``SearchTracker``."""

    def __init__(self) -> None:
        self.tracker = SearchTracker()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if trial.trial_id not in self.tracker.records:
            self.tracker.add_trial(trial.trial_id, str(trial.config[CANDIDATE_KEY]), origin=trial.config.get(ORIGIN_KEY))
        final = result.get("test_accuracy")
        self.tracker.epoch(trial.trial_id, float(result[METRIC]), float(result.get("epoch_seconds") or 0.0),
                           completed=final is not None, final_accuracy=final)
