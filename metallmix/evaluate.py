"""Leave-one-dataset-out (LODO) evaluation of zero-shot picks, replayed on a recorded meta-dataset.

For every dataset d of the meta-dataset: a pick function sees the runs of the *other* datasets (without
d's family: its parent, its derived datasets, its other sizes; ``metadataset.schema.without_family``), d's
meta-features and d's evaluated configurations (cfg_ columns only: no accuracy, status or cost),
and names one of them; the pick is scored by its recorded accuracy as the normalised regret

    (best accuracy of d - accuracy of the pick) / (best accuracy of d - worst accuracy of d)

over every run recorded for d (failed runs included with the accuracy they recorded; a run with no
accuracy counts as d's worst). "Accuracy" is the knowledge base's ``accuracy`` column: the best epoch's
validation accuracy for Quick-Tune imports, the published test accuracy for MedMNIST+, the test
accuracy for metallmix's own sweeps. Where runs also record their last epoch's accuracy (Quick-Tune),
every pick also reports ``final_accuracy`` and ``final_epoch_regret`` (the same regret over the last
epochs), and the summaries ``mean_final_epoch_regret``. Baselines on the same table:

- ``random_<k>``: the exact expected regret of the best of k configurations of d drawn uniformly
  without replacement;
- ``plain_surrogate``: the paper's plain regressor (one XGBoost model on raw accuracy of ok runs)
  picking its argmax (``MetaLearner(objective="plain", n_ensemble=1)``);
- ``nearest_dataset``: the best ok config of the most similar training dataset (metallmix.retrieval:
  standardised meta-features, exact nearest neighbour), replayed as d's evaluated configuration
  closest to it (see ``closest_candidate``);
- ``portfolio``: the config best on average over the training datasets (accuracy min-max normalised
  within each dataset, averaged over the datasets that ran it), replayed as d's closest configuration.
  It needs configs that repeat across datasets (the MedMNIST+ grid runs all 120 on every dataset);
- ``cost_aware``: the meta-learner's best pick among d's configurations whose cost is at most
  ``COST_FRACTION`` of the portfolio pick's cost on d: the estimated compute where the knowledge base
  holds estimates (``cost_flops_estimate``, computed from d's dataset sizes, known before training),
  else the meta-learner's predicted training time. Its entry also gives the best regret any
  configuration within that budget reaches (``oracle_regret``).

Where the meta-learner is fitted (the default pick, or any pick with baselines), each entry also
reports how its 80% interval (of a run that completes) did on the held-out dataset's completed runs
(``interval``: coverage, the share of them whose recorded accuracy lies inside, and the median width),
and the summary pools them.

Every entry names its pick by ``picked_config_id`` (the run's id in the knowledge base) and
``picked_config`` (the config with the knowledge base's own names and values).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Hashable, Iterable
from math import comb
from typing import Any

import numpy as np
import pandas as pd

from metallmix.errors import ConfigError, DataError
from metallmix.compute_cost import training_flops_estimates
from metallmix.metadataset.schema import (
    CFG_PREFIX,
    COST_ESTIMATE_COLUMN,
    STATUS_OK,
    config_columns,
    row_config,
    row_meta_features,
    validate_rows,
    without_family,
)
from metallmix.metalearner import (
    INTERVAL_COVERAGE,
    PORTFOLIO_NOT_APPLICABLE,
    MetaLearner,
    config_id,
    portfolio_applicable,
    portfolio_scores,
)

PickFn = Callable[[pd.DataFrame, dict[str, float], pd.DataFrame], Hashable]
"""pick(train_df, meta_features, candidates) -> the index label of the chosen row of candidates.
train_df: runs of every other dataset; meta_features: the held-out dataset's, without prefix;
candidates: one row per evaluated configuration of the held-out dataset, cfg_ columns only,
indexed by run_id."""

DEFAULT_RANDOM_KS = (1, 3, 10, 30)
REGRET_THRESHOLD = 0.25
BACKBONE_COLUMNS = ("model", "backbone")  # the backbone's config name: Quick-Tune's, metallmix's own
MAIN_METHOD = "metalearner"
COST_FRACTION = 0.1


def metalearner_pick(**params: Any) -> PickFn:
    """A pick function that fits ``MetaLearner(**params)`` on the training runs and takes the top score."""

    def pick(train_df: pd.DataFrame, meta_features: dict[str, float], candidates: pd.DataFrame) -> Hashable:
        scores = MetaLearner(**params).fit(train_df).predict(meta_features, candidates)["score"]
        return scores.idxmax()

    return pick


LEARNER_GRID: tuple[dict[str, Any], ...] = (
    {"objective": "regression"},
    {"objective": "rank_pairwise"},
    {"objective": "regression", "portfolio_weight": 0.5},
    {"objective": "rank_pairwise", "portfolio_weight": 0.5},
    {"portfolio_weight": 1.0},
)
"""The meta-learner settings a nested evaluation chooses among: the default regression and a pairwise
ranking objective, each alone and blended half-and-half with the portfolio, and the portfolio alone."""


def select_learner(train_df: pd.DataFrame, grid: Iterable[dict[str, Any]] = LEARNER_GRID,
                   base_params: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The settings of ``grid`` with the lowest mean leave-one-dataset-out regret on ``train_df`` alone
    (ties: the earlier entry), and every entry's inner figures."""
    trials = []
    portfolio_ok = portfolio_applicable(train_df)
    for params in grid:
        merged = {**(base_params or {}), **params}
        if merged.get("portfolio_weight", 0) > 0 and not portfolio_ok:
            trials.append({"params": params, "mean_regret": None, "max_regret": None, "skipped": PORTFOLIO_NOT_APPLICABLE})
            continue
        summary = evaluate_lodo(train_df, learner_params=merged, baselines=False, intervals=False)["summary"][MAIN_METHOD]
        trials.append({"params": params, "mean_regret": summary["mean_regret"], "max_regret": summary["max_regret"]})
    best = min((i for i, t in enumerate(trials) if t["mean_regret"] is not None), key=lambda i: (trials[i]["mean_regret"], i))
    return {**(base_params or {}), **trials[best]["params"]}, trials


def nested_pick(grid: Iterable[dict[str, Any]] = LEARNER_GRID, base_params: dict[str, Any] | None = None,
                log: list[dict[str, Any]] | None = None) -> PickFn:
    """A pick function that chooses the meta-learner's settings by an inner leave-one-dataset-out on the
    training datasets only (``select_learner``), then fits them there and takes the top score: the
    held-out dataset never informs the choice. Each choice is appended to ``log``."""
    grid = list(grid)

    def pick(train_df: pd.DataFrame, meta_features: dict[str, float], candidates: pd.DataFrame) -> Hashable:
        params, trials = select_learner(train_df, grid, base_params)
        if log is not None:
            log.append({"training_datasets": sorted(train_df["dataset_id"].unique()), "chosen": params, "inner": trials})
        return MetaLearner(**params).fit(train_df).predict(meta_features, candidates)["score"].idxmax()

    return pick


def nearest_dataset_pick(train_df: pd.DataFrame, meta_features: dict[str, float], candidates: pd.DataFrame) -> Hashable:
    """The candidate closest to the best ok config of the training dataset nearest in meta-features."""
    from metallmix.retrieval import RetrievalIndex

    neighbour = RetrievalIndex(n_top_configs=1).fit(train_df).query(meta_features, k=1)[0]
    return closest_candidate(neighbour["top_configs"][0]["config"], candidates)


def portfolio_pick(train_df: pd.DataFrame, meta_features: dict[str, float], candidates: pd.DataFrame) -> Hashable:
    """The candidate with the portfolio's best config (or the one closest to it)."""
    best = portfolio_scores(train_df).iloc[0]
    ids = [config_id(row_config(row)) for row in candidates.to_dict("records")]
    if best["candidate_id"] in ids:
        return candidates.index[ids.index(best["candidate_id"])]
    return closest_candidate(best["config"], candidates)


def closest_candidate(
    config: dict[str, Any], candidates: pd.DataFrame, key_columns: tuple[str, ...] = BACKBONE_COLUMNS
) -> Hashable:
    """The candidate most like ``config`` (keys without prefix), compared lexicographically:

    1. the number of ``key_columns`` (the backbone) that differ;
    2. then the number of other categorical values that differ (a missing value differs), plus the
       mean over numeric columns of the absolute gap in percentile rank among the candidates and the
       config (a number in [0, 1], so it only breaks ties between equal categorical counts).

    The first candidate wins exact ties.
    """
    if len(candidates) == 0:
        raise DataError("no candidates to choose from")
    key_mismatch = np.zeros(len(candidates))
    other = np.zeros(len(candidates))
    numeric_gaps = []
    for column in config_columns(candidates):
        name = column[len(CFG_PREFIX):]
        values = candidates[column]
        target = config.get(name)
        if pd.api.types.is_numeric_dtype(values):
            both = pd.concat([values.astype(float), pd.Series([np.nan if target is None else float(target)])],
                             ignore_index=True)
            ranks = both.rank(pct=True).to_numpy()
            gap = np.abs(ranks[:-1] - ranks[-1])
            numeric_gaps.append(np.where(np.isnan(gap), 1.0, gap))
            continue
        differs = (values.astype(object).map(str).to_numpy() != str(target)) | values.isna().to_numpy()
        if name in key_columns:
            key_mismatch += differs
        else:
            other += differs
    if numeric_gaps:
        other += np.mean(numeric_gaps, axis=0)
    order = np.lexsort((other, key_mismatch))
    return candidates.index[int(order[0])]


def normalized_regret(accuracy: float, best: float, worst: float) -> float:
    """(best - accuracy) / (best - worst); 0 when every run of the dataset scored the same."""
    if best == worst:
        return 0.0
    return float((best - accuracy) / (best - worst))


def expected_random_regret(accuracies: Iterable[float], k: int) -> float:
    """Exact expected normalised regret of the best of k runs drawn uniformly without replacement.

    With accuracies sorted high to low, the i-th (0-based) is the best of the draw with probability
    C(n-1-i, k-1) / C(n, k). k >= n gives 0.
    """
    values = np.sort(np.asarray(list(accuracies), dtype=np.float64))[::-1]
    n = len(values)
    if n == 0:
        raise DataError("no accuracies to draw from")
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    best, worst = values[0], values[-1]
    if best == worst:
        return 0.0
    total_draws = comb(n, k) if k <= n else 1
    expected = 0.0
    for i, value in enumerate(values):
        if k <= n:
            expected += comb(n - 1 - i, k - 1) / total_draws * (best - value)
    return float(expected / (best - worst))


def evaluate_lodo(
    df: pd.DataFrame,
    *,
    pick: PickFn | None = None,
    method: str = MAIN_METHOD,
    baselines: bool = True,
    random_ks: Iterable[int] = DEFAULT_RANDOM_KS,
    datasets: Iterable[str] | None = None,
    learner_params: dict[str, Any] | None = None,
    intervals: bool = True,
) -> dict[str, Any]:
    """Leave each dataset out in turn, pick a config for it, and score the pick (module docstring).

    Args:
        df: the meta-dataset (at least two datasets).
        pick: the zero-shot picker under test (``PickFn``); default the meta-learner
            (``MetaLearner(**learner_params)``) taking its top score.
        method: its name in the result.
        baselines: also score random-k, the plain surrogate, the nearest-dataset pick, the portfolio
            and the cost-aware pick.
        random_ks: the k of the random-search baselines.
        datasets: evaluate only these held-out datasets (all by default); training always uses every
            other dataset of ``df``.
        learner_params: MetaLearner settings of the default pick, of the cost-aware pick and of the
            plain surrogate (its ``objective`` is replaced by "plain" there).
        intervals: also report the meta-learner's interval coverage; False fits only what ranks
            (``MetaLearner(ranking_only=True)``), the fast form for model-selection loops.

    Returns a JSON-serialisable {"methods", "datasets": [per-dataset entries], "summary": {method: stats}}.
    """
    validate_rows(df, source="meta-dataset given to evaluate_lodo")
    all_datasets = sorted(df["dataset_id"].unique()) if len(df) else []
    if len(all_datasets) < 2:
        raise DataError(
            f"leave-one-dataset-out needs runs of at least 2 datasets; got {len(all_datasets)} "
            f"({all_datasets}); add runs of another dataset"
        )
    targets = list(all_datasets) if datasets is None else list(datasets)
    unknown = sorted(set(targets) - set(all_datasets))
    if unknown:
        raise DataError(f"datasets {unknown} have no rows in the meta-dataset; it holds {all_datasets}")
    params = dict(learner_params or {})
    others: dict[str, PickFn] = {}
    if baselines:
        others = {"portfolio": portfolio_pick, "nearest_dataset": nearest_dataset_pick,
                  "plain_surrogate": metalearner_pick(**{**params, "objective": "plain", "fail_penalty": 0.0, "n_ensemble": 1})}
    ks = sorted({int(k) for k in random_ks}) if baselines else []

    entries = []
    for dataset in targets:
        held_out = df[df["dataset_id"] == dataset]
        train_df = without_family(df, dataset)
        runs = held_out.set_index("run_id")
        accuracy = _replay_accuracy(held_out, dataset)
        best, worst = float(accuracy.max()), float(accuracy.min())
        final = _final_accuracy(runs)
        meta_features = row_meta_features(held_out.iloc[0])
        candidates = runs[config_columns(held_out)]
        learner = (MetaLearner(**params, ranking_only=not intervals).fit(train_df)
                   if pick is None or baselines else None)
        scores = learner.predict(meta_features, candidates) if learner is not None else None

        def result_of(name: str, chosen: Hashable) -> dict[str, Any]:
            if chosen not in candidates.index:
                raise ConfigError(f"pick {name!r} returned {chosen!r} for {dataset!r}, not a candidate's index label")
            run = runs.loc[chosen]
            result = {
                "picked_config_id": str(chosen),
                "picked_config": row_config(run),
                "accuracy": float(accuracy[chosen]),
                "normalized_regret": normalized_regret(float(accuracy[chosen]), best, worst),
                "cost_seconds": _float_or_none(run["cost_seconds"]),
                "cost_flops_estimate": _float_or_none(run.get(COST_ESTIMATE_COLUMN)),
                "status": str(run["status"]),
            }
            if final is not None:
                result["final_accuracy"] = float(final[chosen])
                result["final_epoch_regret"] = normalized_regret(float(final[chosen]), float(final.max()), float(final.min()))
            return result

        entry: dict[str, Any] = {"dataset": dataset, "n_candidates": int(len(candidates)),
                                 "best_accuracy": best, "worst_accuracy": worst}
        chosen = pick(train_df, meta_features, candidates.copy()) if pick is not None else scores["score"].idxmax()
        entry.update(result_of(method, chosen))
        for name, pick_fn in others.items():
            if name == "portfolio" and not portfolio_applicable(train_df):
                entry[name] = {"normalized_regret": None, "skipped": PORTFOLIO_NOT_APPLICABLE}
                continue
            entry[name] = result_of(name, pick_fn(train_df, meta_features, candidates.copy()))
        for k in ks:
            entry[f"random_{k}"] = {"normalized_regret": expected_random_regret(accuracy.to_numpy(), k)}
            if final is not None:
                entry[f"random_{k}"]["final_epoch_regret"] = expected_random_regret(final.to_numpy(), k)
        if scores is not None and intervals:
            entry["interval"] = _interval_quality(scores, runs["accuracy"].where(runs["status"] == STATUS_OK))
        if baselines:
            cost = _candidate_costs(runs, meta_features, scores)
            entry["cost_aware"] = _cost_aware_result(entry, cost, scores["score"], accuracy, result_of)
        entries.append(entry)

    methods = [method] + ([f"random_{k}" for k in ks] + ["portfolio", "plain_surrogate", "nearest_dataset", "cost_aware"]
                          if baselines else [])
    summary = {m: _summary(entries, m, method) for m in methods}
    if all("interval" in e for e in entries):
        summary["interval"] = _pooled_interval_quality(entries)
    return {"methods": methods, "datasets": entries, "summary": summary}


def _interval_quality(scores: pd.DataFrame, accuracy: pd.Series) -> dict[str, Any]:
    """Coverage and median width of the predicted 80% intervals over a held-out dataset's runs."""
    known = accuracy.notna().to_numpy()
    low, high = scores["pred_accuracy_low"].to_numpy()[known], scores["pred_accuracy_high"].to_numpy()[known]
    values = accuracy.to_numpy(dtype=float)[known]
    inside = (low <= values) & (values <= high)
    return {"n_runs": int(known.sum()), "n_inside": int(inside.sum()),
            "coverage": float(inside.mean()) if known.any() else None,
            "median_width": float(np.median(high - low)) if known.any() else None}


def _pooled_interval_quality(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Coverage over every held-out run, its spread over datasets, and the median of the datasets' widths."""
    per_dataset = [e["interval"] for e in entries if e["interval"]["n_runs"]]
    runs = sum(q["n_runs"] for q in per_dataset)
    coverages = [q["coverage"] for q in per_dataset]
    return {"target": INTERVAL_COVERAGE, "coverage": sum(q["n_inside"] for q in per_dataset) / runs if runs else None,
            "min_dataset_coverage": min(coverages, default=None), "max_dataset_coverage": max(coverages, default=None),
            "median_width": float(np.median([q["median_width"] for q in per_dataset])) if per_dataset else None}


def evaluate_stability(
    df: pd.DataFrame,
    *,
    n_draws: int = 20,
    subset_size: int | None = None,
    learner_params: dict[str, Any] | None = None,
    random_state: int = 0,
) -> dict[str, Any]:
    """Leave-one-dataset-out with a smaller training pool: how much the figure depends on which datasets
    the knowledge base happens to hold.

    For each of ``n_draws`` draws and each held-out dataset, the meta-learner is fitted on a random
    subset of ``subset_size`` of the other datasets (default: 70% of them) and picks for the held-out
    one. A draw's figure is the mean regret over the held-out datasets; the result gives the mean and
    standard deviation of those figures over the draws, and per dataset its mean and max regret.
    """
    validate_rows(df, source="meta-dataset given to evaluate_stability")
    datasets = sorted(df["dataset_id"].unique())
    if len(datasets) < 3:
        raise DataError(f"the stability protocol needs at least 3 datasets (a held-out one and a subset of the others); got {len(datasets)}")
    size = subset_size if subset_size is not None else max(1, round(0.7 * (len(datasets) - 1)))
    if not 1 <= size <= len(datasets) - 1:
        raise ConfigError(f"subset_size must lie in [1, {len(datasets) - 1}], got {size}")
    rng = np.random.default_rng(random_state)
    params = {**(learner_params or {}), "ranking_only": True}
    regrets = np.empty((n_draws, len(datasets)))
    for draw in range(n_draws):
        for j, dataset in enumerate(datasets):
            others = [d for d in datasets if d != dataset]
            pool = set(rng.choice(others, size=size, replace=False)) & set(without_family(df, dataset)["dataset_id"])
            held_out = df[df["dataset_id"] == dataset]
            runs = held_out.set_index("run_id")
            accuracy = _replay_accuracy(held_out, dataset)
            scores = MetaLearner(**params).fit(df[df["dataset_id"].isin(pool)]).predict(
                row_meta_features(held_out.iloc[0]), runs[config_columns(held_out)])["score"]
            chosen = scores.idxmax()
            regrets[draw, j] = normalized_regret(float(accuracy[chosen]), float(accuracy.max()), float(accuracy.min()))
    per_draw = regrets.mean(axis=1)
    return {
        "n_draws": n_draws, "subset_size": size, "n_datasets": len(datasets), "learner_params": learner_params or {},
        "mean_regret": float(per_draw.mean()), "std_regret": float(per_draw.std(ddof=1)) if n_draws > 1 else 0.0,
        "min_regret": float(per_draw.min()), "max_regret": float(per_draw.max()),
        "datasets": {d: {"mean_regret": float(regrets[:, j].mean()), "max_regret": float(regrets[:, j].max())}
                     for j, d in enumerate(datasets)},
    }


def _candidate_costs(runs: pd.DataFrame, meta_features: dict[str, float], scores: pd.DataFrame) -> dict[str, Any]:
    """What the cost-aware pick compares: the estimated compute of the held-out dataset's configs where
    the knowledge base holds estimates (from the dataset's sizes, known before any training), else the
    meta-learner's predicted training seconds."""
    if COST_ESTIMATE_COLUMN in runs.columns and runs[COST_ESTIMATE_COLUMN].notna().any():
        configs = [row_config(row) for row in runs[config_columns(runs)].to_dict("records")]
        values = training_flops_estimates(configs, meta_features.get("n_train"), meta_features.get("n_val"))
        return {"values": pd.Series(values, index=runs.index), "unit": "FLOP (estimate)"}
    return {"values": scores["pred_cost_seconds"], "unit": "seconds (predicted)"}


def _cost_aware_result(entry: dict[str, Any], cost: dict[str, Any], score: pd.Series, accuracy: pd.Series,
                       result_of: Callable[[str, Hashable], dict[str, Any]]) -> dict[str, Any]:
    if entry["portfolio"].get("skipped"):
        return {"normalized_regret": None, "skipped": f"its budget is the portfolio's cost, and {entry['portfolio']['skipped']}"}
    values = cost["values"]
    budget = COST_FRACTION * float(values[entry["portfolio"]["picked_config_id"]])
    within = values.index[values.to_numpy() <= budget] if math.isfinite(budget) else values.index[:0]
    if len(within) == 0:
        return {"normalized_regret": None, "budget": budget, "cost_unit": cost["unit"], "n_within_budget": 0}
    result = result_of("cost_aware", score[within].idxmax())
    oracle = float(accuracy[within].max())
    return {**result, "budget": budget, "cost_unit": cost["unit"], "n_within_budget": int(len(within)),
            "cost": float(values[result["picked_config_id"]]),
            "oracle_regret": normalized_regret(oracle, entry["best_accuracy"], entry["worst_accuracy"])}


def _final_accuracy(runs: pd.DataFrame) -> pd.Series | None:
    """Each run's last-epoch accuracy (``final_accuracy`` in metrics_json, as the Quick-Tune importer
    records it beside the best epoch's), a missing one counting as the dataset's worst; None when the
    knowledge base records none."""
    values = pd.Series([json.loads(m).get("final_accuracy") if isinstance(m, str) else None
                        for m in runs["metrics_json"]], index=runs.index, dtype=float)
    return None if values.isna().all() else values.fillna(values.min())


def _replay_accuracy(held_out: pd.DataFrame, dataset: str) -> pd.Series:
    accuracy = held_out.set_index("run_id")["accuracy"].astype(float)
    if accuracy.isna().all():
        raise DataError(f"dataset {dataset!r} has no run with an accuracy; its regret is undefined (drop it)")
    return accuracy.fillna(accuracy.min())


def _summary(entries: list[dict[str, Any]], name: str, main: str) -> dict[str, Any]:
    results = [e if name == main else e[name] for e in entries]
    scored = [r for r in results if r["normalized_regret"] is not None]
    regrets = np.array([r["normalized_regret"] for r in scored], dtype=float)
    if len(regrets) == 0:
        return {"mean_regret": None, "median_regret": None, "max_regret": None,
                f"n_over_{REGRET_THRESHOLD}": 0, "n_datasets": 0}
    out: dict[str, Any] = {
        "mean_regret": float(regrets.mean()),
        "median_regret": float(np.median(regrets)),
        "max_regret": float(regrets.max()),
        f"n_over_{REGRET_THRESHOLD}": int((regrets > REGRET_THRESHOLD).sum()),
        "n_datasets": int(len(regrets)),
    }
    if len(scored) < len(results):
        out["n_without_pick"] = len(results) - len(scored)
    finals = [r["final_epoch_regret"] for r in scored if "final_epoch_regret" in r]
    if finals:
        out["mean_final_epoch_regret"] = float(np.mean(finals))
    statuses = [r.get("status") for r in scored]
    if statuses[0] is not None:
        out["n_picked_not_ok"] = int(sum(s != "ok" for s in statuses))
    ratios = [_cost_ratio(r, e["portfolio"]) for r, e in zip(results, entries)
              if "portfolio" in e and r in scored and not e["portfolio"].get("skipped")]
    ratios = [x for x in ratios if x is not None]
    if ratios:
        out["median_cost_ratio_to_portfolio"] = float(np.median(ratios))
    return out


def _cost_ratio(result: dict[str, Any], portfolio: dict[str, Any]) -> float | None:
    """Cost of a pick over the portfolio pick's on the same dataset (estimates where the knowledge base
    has them, else recorded seconds)."""
    for key in (COST_ESTIMATE_COLUMN, "cost_seconds"):
        mine, theirs = result.get(key), portfolio.get(key)
        if mine is not None and theirs:
            return float(mine) / float(theirs)
    return None


def _float_or_none(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) or pd.isna(value) else float(value)


def format_table(result: dict[str, Any]) -> str:
    """Per-dataset normalised regret of every method, then mean / median / max / count over the threshold."""
    methods = result["methods"]
    main = methods[0]
    width = max(10, *(len(m) for m in methods))
    header = f"{'dataset':<10} {'n':>4} " + " ".join(f"{m:>{width}}" for m in methods)
    lines = [header, "-" * len(header)]
    for entry in result["datasets"]:
        regrets = [entry["normalized_regret"] if m == main else entry[m]["normalized_regret"] for m in methods]
        flag = "" if entry.get("status", "ok") == "ok" else f"  ({main} picked a {entry['status']} run)"
        lines.append(f"{entry['dataset']:<10.10} {entry['n_candidates']:>4} "
                     + " ".join(_cell(r, width) for r in regrets) + flag)
    lines.append("-" * len(header))
    stats = ["mean_regret", "median_regret", "max_regret", f"n_over_{REGRET_THRESHOLD}"]
    interval = result["summary"].get("interval")
    for optional in ("mean_final_epoch_regret", "median_cost_ratio_to_portfolio"):
        if any(optional in result["summary"][m] for m in methods):
            stats.append(optional)
    for stat in stats:
        values = [result["summary"][m].get(stat) for m in methods]
        label = {"median_cost_ratio_to_portfolio": "cost/portfolio",
                 "mean_final_epoch_regret": "mean, last epoch"}.get(stat, stat.replace("_regret", ""))
        lines.append(f"{label:<15} " + " ".join(_cell(v, width) for v in values))
    if interval and interval["coverage"] is not None:
        lines.append(f"the meta-learner's 80% interval covers {interval['coverage']:.1%} of the held-out runs "
                     f"(datasets {interval['min_dataset_coverage']:.0%}-{interval['max_dataset_coverage']:.0%}), "
                     f"median width {interval['median_width'] * 100:.1f} accuracy points")
    return "\n".join(lines)


def _cell(value: Any, width: int) -> str:
    if value is None:
        return f"{'-':>{width}}"
    return f"{value:>{width}d}" if isinstance(value, int) else f"{value:>{width}.3f}"
