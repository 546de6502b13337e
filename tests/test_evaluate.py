"""Tests of the leave-one-dataset-out protocol: regret arithmetic, random-k, leakage, bad input."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest

from metallmix.errors import ConfigError, DataError, SchemaError
from metallmix.evaluate import (
    closest_candidate,
    evaluate_stability,
    evaluate_lodo,
    expected_random_regret,
    format_table,
    normalized_regret,
    select_learner,
)
from metallmix.metadataset.schema import make_row
from metallmix.metalearner import MetaLearner

FAST = {"n_estimators": 20, "max_depth": 3, "n_ensemble": 1}


def tiny_table(accuracies: dict[str, list[float | None]]) -> pd.DataFrame:
    """One run per (dataset, config); config k of every dataset has model m<k> and lr 10^-k."""
    rows = []
    for d, (dataset, values) in enumerate(accuracies.items()):
        for k, accuracy in enumerate(values):
            rows.append(make_row(
                dataset_id=dataset, dataset_kind="generated",
                meta_features={"n_images": 100.0 * (d + 1), "n_classes": 2.0 + d},
                config={"model": f"m{k}", "lr": 10.0 ** -k}, seed=0, search_space="test",
                status="ok" if accuracy is not None else "failed", accuracy=accuracy,
                cost_seconds=float(k + 1), n_epochs=3, curve=[], metrics={}, provenance={},
                run_id=f"{dataset}-{k}",
            ))
    return pd.DataFrame(rows)


ACCURACIES = {"A": [0.9, 0.5, 0.1, 0.7], "B": [0.4, 0.8, 0.6, 0.2], "C": [0.3, 0.3, 0.9, 0.5]}


def pick_config(k: int):
    """A stand-in pick for the test: always the candidate of config k."""
    def pick(train_df, meta_features, candidates):
        return next(label for label in candidates.index if label.endswith(f"-{k}"))
    return pick


def test_regret_arithmetic_on_a_known_table():
    result = evaluate_lodo(tiny_table(ACCURACIES), pick=pick_config(1), baselines=False)
    by_dataset = {e["dataset"]: e for e in result["datasets"]}
    assert by_dataset["A"]["normalized_regret"] == pytest.approx((0.9 - 0.5) / (0.9 - 0.1))
    assert by_dataset["B"]["normalized_regret"] == pytest.approx(0.0)
    assert by_dataset["C"]["normalized_regret"] == pytest.approx((0.9 - 0.3) / (0.9 - 0.3))
    assert by_dataset["A"]["picked_config_id"] == "A-1" and by_dataset["A"]["cost_seconds"] == 2.0
    assert by_dataset["A"]["best_accuracy"] == 0.9 and by_dataset["A"]["n_candidates"] == 4
    summary = result["summary"]["metalearner"]
    assert summary["mean_regret"] == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert summary["max_regret"] == pytest.approx(1.0) and summary["n_over_0.25"] == 2
    assert normalized_regret(0.5, 0.5, 0.5) == 0.0


def test_failed_run_without_accuracy_counts_as_worst():
    table = tiny_table({"A": [0.9, None, 0.5], "B": [0.2, 0.4, 0.6]})
    result = evaluate_lodo(table, pick=pick_config(1), baselines=False, datasets=["A"])
    assert result["datasets"][0]["normalized_regret"] == 1.0 and result["datasets"][0]["status"] == "failed"


def test_random_k_known_cases():
    assert expected_random_regret([1.0, 0.5, 0.0], 1) == pytest.approx(0.5)
    assert expected_random_regret([1.0, 0.5, 0.0], 2) == pytest.approx(0.5 / 3)
    assert expected_random_regret([1.0, 0.5, 0.0], 3) == 0.0
    assert expected_random_regret([1.0, 0.5, 0.0], 30) == 0.0
    assert expected_random_regret([0.4, 0.4], 1) == 0.0
    values = np.random.default_rng(0).random(9)
    values[3] = values[5]  # a tie
    for k in (1, 2, 4):
        best, worst = values.max(), values.min()
        draws = [(best - max(values[list(c)])) / (best - worst) for c in itertools.combinations(range(9), k)]
        assert expected_random_regret(values, k) == pytest.approx(np.mean(draws))
    with pytest.raises(ConfigError):
        expected_random_regret(values, 0)


def test_no_leakage_into_the_pick():
    table = tiny_table(ACCURACIES)
    seen = []

    def instrumented_pick(train_df, meta_features, candidates):
        held_out = candidates.index[0].split("-")[0]
        assert held_out not in set(train_df["dataset_id"])
        assert not set(candidates.index) & set(train_df["run_id"])
        assert all(c.startswith("cfg_") for c in candidates.columns)  # no accuracy, status or cost
        assert meta_features["n_classes"] == 2.0 + "ABC".index(held_out)
        seen.append((held_out, sorted(train_df["dataset_id"].unique())))
        return candidates.index[0]

    evaluate_lodo(table, pick=instrumented_pick, baselines=False)
    assert seen == [("A", ["B", "C"]), ("B", ["A", "C"]), ("C", ["A", "B"])]


def test_default_pick_with_baselines_is_json_and_tabulates():
    table = tiny_table({name: list(np.linspace(0.1, 0.9, 6)[::(1 if i % 2 else -1)])
                        for i, name in enumerate(["A", "B", "C", "D"])})
    result = evaluate_lodo(table, learner_params=FAST, random_ks=(1, 3))
    json.dumps(result)
    assert result["methods"] == ["metalearner", "random_1", "random_3", "portfolio", "plain_surrogate", "nearest_dataset",
                                 "cost_aware"]
    entry = result["datasets"][0]
    assert {"picked_config_id", "accuracy", "normalized_regret", "cost_seconds", "n_candidates"} <= set(entry)
    assert entry["random_1"]["normalized_regret"] == pytest.approx(0.5)
    assert 0.0 <= entry["plain_surrogate"]["normalized_regret"] <= 1.0
    text = format_table(result)
    assert "mean" in text and "nearest_dataset" in text and all(d in text for d in "ABCD")


def test_closest_candidate_prefers_the_backbone():
    candidates = pd.DataFrame(
        {"cfg_model": ["a", "b", "a"], "cfg_opt": ["sgd", "adam", "adam"], "cfg_lr": [0.1, 0.001, 0.01]},
        index=["x", "y", "z"],
    )
    assert closest_candidate({"model": "a", "opt": "adam", "lr": 0.001}, candidates) == "z"
    assert closest_candidate({"model": "b", "opt": "sgd", "lr": 0.1}, candidates) == "y"


def test_bad_input():
    table = tiny_table(ACCURACIES)
    with pytest.raises(DataError, match="at least 2 datasets"):
        evaluate_lodo(table[table["dataset_id"] == "A"], pick=pick_config(0), baselines=False)
    with pytest.raises(DataError, match="have no rows"):
        evaluate_lodo(table, pick=pick_config(0), baselines=False, datasets=["Z"])
    with pytest.raises(ConfigError, match="not a candidate"):
        evaluate_lodo(table, pick=lambda train, mf, candidates: "elsewhere", baselines=False)
    no_accuracy = tiny_table({"A": [None, None], "B": [0.1, 0.2]})
    with pytest.raises(DataError, match="no run with an accuracy"):
        evaluate_lodo(no_accuracy, pick=pick_config(0), baselines=False)
    with pytest.raises(SchemaError, match="schema_version"):
        evaluate_lodo(table.assign(schema_version=7), pick=pick_config(0), baselines=False)


def four_datasets() -> pd.DataFrame:
    return tiny_table({name: list(np.linspace(0.1, 0.9, 6)[::(1 if i % 2 else -1)])
                       for i, name in enumerate(["A", "B", "C", "D"])})


def test_nested_choice_never_sees_the_held_out_dataset(monkeypatch):
    import metallmix.evaluate as evaluate_module

    seen = []
    real = evaluate_module.select_learner

    def spying_select(train_df, grid, base_params=None):
        seen.append(sorted(train_df["dataset_id"].unique()))
        return real(train_df, grid, base_params)

    monkeypatch.setattr(evaluate_module, "select_learner", spying_select)
    grid = [{**FAST, "objective": "regression"}, {**FAST, "portfolio_weight": 1.0}]
    log = []
    result = evaluate_lodo(four_datasets(), pick=evaluate_module.nested_pick(grid, log=log), method="nested", baselines=False)
    assert seen == [["B", "C", "D"], ["A", "C", "D"], ["A", "B", "D"], ["A", "B", "C"]]
    assert [entry["training_datasets"] for entry in log] == seen
    assert all(entry["chosen"] in grid and len(entry["inner"]) == 2 for entry in log)
    assert result["methods"] == ["nested"] and len(result["datasets"]) == 4


def test_select_learner_takes_the_lowest_inner_regret():
    table = four_datasets()
    grid = [{**FAST, "objective": "regression"}, {**FAST, "portfolio_weight": 1.0}]
    chosen, trials = select_learner(table, grid)
    inner = [evaluate_lodo(table, learner_params=params, baselines=False, intervals=False)["summary"]["metalearner"]["mean_regret"]
             for params in grid]
    assert [t["mean_regret"] for t in trials] == pytest.approx(inner)
    assert chosen == grid[int(np.argmin(inner))]


def test_interval_coverage_is_reported_and_counts_runs_inside():
    result = evaluate_lodo(four_datasets(), learner_params=FAST, baselines=False)
    for entry in result["datasets"]:
        quality = entry["interval"]
        assert quality["n_runs"] == 6 and 0 <= quality["n_inside"] <= 6
        assert quality["coverage"] == pytest.approx(quality["n_inside"] / 6)
    pooled = result["summary"]["interval"]
    assert pooled["coverage"] == pytest.approx(sum(e["interval"]["n_inside"] for e in result["datasets"]) / 24)
    assert pooled["target"] == pytest.approx(0.8)
    assert "the meta-learner's 80% interval covers" in format_table(result)


def test_final_epoch_regret_where_runs_record_their_last_epoch():
    table = tiny_table(ACCURACIES)
    finals = {"A": [0.2, 0.5, 0.1, 0.7], "B": [0.4, 0.3, 0.6, 0.2], "C": [0.3, 0.1, 0.9, 0.5]}
    table["metrics_json"] = [json.dumps({"final_accuracy": finals[d][int(r.split("-")[1])]})
                             for d, r in zip(table["dataset_id"], table["run_id"])]
    result = evaluate_lodo(table, pick=pick_config(1), baselines=False)
    a = {e["dataset"]: e for e in result["datasets"]}["A"]
    assert a["final_accuracy"] == 0.5 and a["final_epoch_regret"] == pytest.approx((0.7 - 0.5) / (0.7 - 0.1))
    assert result["summary"]["metalearner"]["mean_final_epoch_regret"] == pytest.approx(
        np.mean([(0.7 - 0.5) / 0.6, (0.6 - 0.3) / 0.4, (0.9 - 0.1) / 0.8]))
    assert "mean, last epoch" in format_table(result)


def test_stability_draws_subsets_of_the_other_datasets():
    result = evaluate_stability(four_datasets(), n_draws=3, subset_size=2, learner_params=FAST)
    assert result["subset_size"] == 2 and set(result["datasets"]) == set("ABCD")
    assert result["min_regret"] <= result["mean_regret"] <= result["max_regret"]
    means = [d["mean_regret"] for d in result["datasets"].values()]
    assert result["mean_regret"] == pytest.approx(np.mean(means))
    with pytest.raises(ConfigError, match="subset_size must lie in"):
        evaluate_stability(four_datasets(), n_draws=1, subset_size=4)


def test_the_held_out_family_is_left_out_of_training():
    from metallmix.metadataset.schema import dataset_family, without_family

    rows = []
    for dataset, parent in (("breastmnist", None), ("breastmnist@64", None), ("breastmnist~n200-s0", "breastmnist"),
                            ("retinamnist", None), ("retinamnist@128", None), ("generated-c4", None)):
        for k in range(3):
            rows.append(make_row(dataset_id=dataset, dataset_kind="medmnist", dataset_parent=parent,
                                 meta_features={"n_classes": 2.0 + len(dataset) % 3}, config={"model": f"m{k}"}, seed=0,
                                 search_space="test", status="ok", accuracy=0.5 + 0.1 * k, cost_seconds=1.0, n_epochs=1,
                                 curve=[], metrics={}, provenance={}, run_id=f"{dataset}-{k}"))
    table = pd.DataFrame(rows)
    assert dataset_family("breastmnist@64") == "breastmnist" and dataset_family("x~y", "breastmnist") == "breastmnist"
    assert set(without_family(table, "breastmnist@64")["dataset_id"]) == {"retinamnist", "retinamnist@128", "generated-c4"}
    assert set(without_family(table, "breastmnist~n200-s0")["dataset_id"]) == {"retinamnist", "retinamnist@128", "generated-c4"}
    seen = {}

    def spy(train_df, meta_features, candidates):
        seen[candidates.index[0].rsplit("-", 1)[0]] = set(train_df["dataset_id"])
        return candidates.index[0]

    evaluate_lodo(table, pick=spy, baselines=False)
    assert seen["breastmnist"] == seen["breastmnist@64"] == {"retinamnist", "retinamnist@128", "generated-c4"}
    assert seen["retinamnist@128"] == {"breastmnist", "breastmnist@64", "breastmnist~n200-s0", "generated-c4"}


def test_portfolio_is_not_applicable_when_no_config_repeats_across_datasets():
    table = four_datasets()
    table["cfg_lr"] = table["cfg_lr"] * [1 + "ABCD".index(d) for d in table["dataset_id"]]  # every config distinct
    result = evaluate_lodo(table, learner_params=FAST, random_ks=(1,))
    entry = result["datasets"][0]
    assert entry["portfolio"]["normalized_regret"] is None and "cannot be formed" in entry["portfolio"]["skipped"]
    assert entry["cost_aware"]["normalized_regret"] is None
    assert result["summary"]["portfolio"]["mean_regret"] is None
    assert "portfolio" in format_table(result)
    chosen, trials = select_learner(table, [{**FAST}, {**FAST, "portfolio_weight": 0.5}])
    assert chosen == {**FAST} and "cannot be formed" in trials[1]["skipped"]
    with pytest.raises(ConfigError, match="set portfolio_weight=0"):
        MetaLearner(**FAST, portfolio_weight=1.0).fit(table)
