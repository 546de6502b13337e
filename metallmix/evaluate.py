"""Leave-one-dataset-out (LODO) evaluation of zero-shot picks, replayed on a recorded meta-dataset.

For every dataset d of the meta-dataset: a pick function sees the runs of the *other* datasets, d's
meta-features and d's evaluated configurations (cfg_ columns only: no accuracy, status or cost),
and names one of them; the pick is scored by its recorded accuracy as the normalised regret

    (best accuracy of d - accuracy of the pick) / (best accuracy of d - worst accuracy of d)

over every run recorded for d (failed runs included with the accuracy they recorded; a run with no
accuracy counts as d's worst). Baselines on the same table:

- ``random_<k>``: the exact expected regret of the best of k configurations of d drawn uniformly
  without replacement;
- ``plain_surrogate``: the paper's plain regressor (one XGBoost model on raw accuracy of ok runs)
  picking its argmax (``MetaLearner(objective="plain", n_ensemble=1)``);
- ``nearest_dataset``: the best ok config of the most similar training dataset (metallmix.retrieval:
  standardised meta-features, exact nearest neighbour), replayed as d's evaluated configuration
  closest to it (see ``closest_candidate``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable
from math import comb
from typing import Any

import numpy as np
import pandas as pd

from metallmix.errors import ConfigError, DataError
from metallmix.metadataset.schema import CFG_PREFIX, config_columns, row_meta_features, validate_rows
from metallmix.metalearner import MetaLearner

PickFn = Callable[[pd.DataFrame, dict[str, float], pd.DataFrame], Hashable]
"""pick(train_df, meta_features, candidates) -> the index label of the chosen row of candidates.
train_df: runs of every other dataset; meta_features: the held-out dataset's, without prefix;
candidates: one row per evaluated configuration of the held-out dataset, cfg_ columns only,
indexed by run_id."""

DEFAULT_RANDOM_KS = (1, 3, 10, 30)
REGRET_THRESHOLD = 0.25
BACKBONE_COLUMNS = ("model", "backbone")  # the backbone's config name: Quick-Tune's, metallmix's own
MAIN_METHOD = "metalearner"


def metalearner_pick(**params: Any) -> PickFn:
    """A pick function that fits ``MetaLearner(**params)`` on the training runs and takes the top score."""

    def pick(train_df: pd.DataFrame, meta_features: dict[str, float], candidates: pd.DataFrame) -> Hashable:
        scores = MetaLearner(**params).fit(train_df).predict(meta_features, candidates)["score"]
        return scores.idxmax()

    return pick


def nearest_dataset_pick(train_df: pd.DataFrame, meta_features: dict[str, float], candidates: pd.DataFrame) -> Hashable:
    """The candidate closest to the best ok config of the training dataset nearest in meta-features."""
    from metallmix.retrieval import RetrievalIndex

    neighbour = RetrievalIndex(n_top_configs=1).fit(train_df).query(meta_features, k=1)[0]
    return closest_candidate(neighbour["top_configs"][0]["config"], candidates)


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
) -> dict[str, Any]:
    """Leave each dataset out in turn, pick a config for it, and score the pick (module docstring).

    Args:
        df: the meta-dataset (at least two datasets).
        pick: the zero-shot picker under test (``PickFn``); default ``metalearner_pick(**learner_params)``.
        method: its name in the result.
        baselines: also score random-k, the plain surrogate and the nearest-dataset pick.
        random_ks: the k of the random-search baselines.
        datasets: evaluate only these held-out datasets (all by default); training always uses every
            other dataset of ``df``.
        learner_params: MetaLearner settings of the default pick and of the plain surrogate
            (its ``objective`` is replaced by "plain" there).

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
    picks: dict[str, PickFn] = {method: pick or metalearner_pick(**params)}
    if baselines:
        picks["plain_surrogate"] = metalearner_pick(**{**params, "objective": "plain", "fail_penalty": 0.0, "n_ensemble": 1})
        picks["nearest_dataset"] = nearest_dataset_pick
    ks = sorted({int(k) for k in random_ks}) if baselines else []

    entries = []
    for dataset in targets:
        held_out = df[df["dataset_id"] == dataset]
        train_df = df[df["dataset_id"] != dataset]
        accuracy = _replay_accuracy(held_out, dataset)
        best, worst = float(accuracy.max()), float(accuracy.min())
        meta_features = row_meta_features(held_out.iloc[0])
        candidates = held_out.set_index("run_id")[config_columns(held_out)]
        entry: dict[str, Any] = {"dataset": dataset, "n_candidates": int(len(candidates)),
                                 "best_accuracy": best, "worst_accuracy": worst}
        for name, pick_fn in picks.items():
            chosen = pick_fn(train_df, meta_features, candidates.copy())
            if chosen not in candidates.index:
                raise ConfigError(f"pick {name!r} returned {chosen!r} for {dataset!r}, not a candidate's index label")
            run = held_out.set_index("run_id").loc[chosen]
            result = {
                "picked_config_id": str(chosen),
                "accuracy": float(accuracy[chosen]),
                "normalized_regret": normalized_regret(float(accuracy[chosen]), best, worst),
                "cost_seconds": _float_or_none(run["cost_seconds"]),
                "status": str(run["status"]),
            }
            if name == method:
                entry.update(result)
            else:
                entry[name] = result
        for k in ks:
            entry[f"random_{k}"] = {"normalized_regret": expected_random_regret(accuracy.to_numpy(), k)}
        entries.append(entry)

    methods = [method] + ([f"random_{k}" for k in ks] + ["plain_surrogate", "nearest_dataset"] if baselines else [])
    return {"methods": methods, "datasets": entries, "summary": {m: _summary(entries, m, method) for m in methods}}


def _replay_accuracy(held_out: pd.DataFrame, dataset: str) -> pd.Series:
    accuracy = held_out.set_index("run_id")["accuracy"].astype(float)
    if accuracy.isna().all():
        raise DataError(f"dataset {dataset!r} has no run with an accuracy; its regret is undefined (drop it)")
    return accuracy.fillna(accuracy.min())


def _summary(entries: list[dict[str, Any]], name: str, main: str) -> dict[str, Any]:
    regrets = np.array([e["normalized_regret"] if name == main else e[name]["normalized_regret"] for e in entries])
    out: dict[str, Any] = {
        "mean_regret": float(regrets.mean()),
        "median_regret": float(np.median(regrets)),
        "max_regret": float(regrets.max()),
        f"n_over_{REGRET_THRESHOLD}": int((regrets > REGRET_THRESHOLD).sum()),
        "n_datasets": int(len(regrets)),
    }
    statuses = [e["status"] if name == main else e[name].get("status") for e in entries]
    if statuses[0] is not None:
        out["n_picked_not_ok"] = int(sum(s != "ok" for s in statuses))
    return out


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
        lines.append(f"{entry['dataset']:<10} {entry['n_candidates']:>4} "
                     + " ".join(f"{r:>{width}.3f}" for r in regrets) + flag)
    lines.append("-" * len(header))
    for stat in ("mean_regret", "median_regret", "max_regret", f"n_over_{REGRET_THRESHOLD}"):
        values = [result["summary"][m][stat] for m in methods]
        label = stat.replace("_regret", "")
        lines.append(f"{label:<16}" + " ".join(
            f"{v:>{width}d}" if isinstance(v, int) else f"{v:>{width}.3f}" for v in values))
    return "\n".join(lines)
