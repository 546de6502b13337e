"""Tests of the XGBoost meta-learner on a small constructed meta-dataset with a known structure."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from metallmix.errors import ConfigError, SchemaError
from metallmix.metadataset.schema import config_columns, make_row
from metallmix.metalearner import (
    OBJECTIVES,
    PREDICTION_COLUMNS,
    MetaLearner,
    candidate_configs,
    config_id,
    within_dataset_target,
)

FAST = {"n_estimators": 30, "max_depth": 3, "n_ensemble": 2}
MODEL_QUALITY = {"good_net": 0.9, "mid_net": 0.7, "weak_net": 0.5}
LEARNING_RATES = (1e-4, 1e-3, 1e-2, 1.0)  # lr 1.0 always diverges


def constructed_meta_dataset(n_datasets: int = 4, seed: int = 0) -> pd.DataFrame:
    """Accuracy = model quality x dataset difficulty, lower for small lr; lr 1.0 fails at chance level."""
    rng = np.random.default_rng(seed)
    rows = []
    for d in range(n_datasets):
        n_classes = int(rng.integers(2, 20))
        difficulty = 1.0 - 0.02 * n_classes
        for model, quality in MODEL_QUALITY.items():
            for lr in LEARNING_RATES:
                for batch_size in (16.0, 64.0):
                    failed = lr == 1.0
                    accuracy = 1.0 / n_classes if failed else quality * difficulty * (0.8 if lr == 1e-4 else 1.0)
                    accuracy = float(np.clip(accuracy + rng.normal(0, 0.01), 0, 1))
                    config = {"model": model, "lr": lr, "batch_size": batch_size}
                    rows.append(make_row(
                        dataset_id=f"ds{d}", dataset_kind="generated",
                        meta_features={"n_images": 1000.0 * (d + 1), "n_classes": float(n_classes)},
                        config=config, seed=0, search_space="test", status="failed" if failed else "ok",
                        accuracy=accuracy, cost_seconds=10.0 * batch_size * (2 if model == "good_net" else 1),
                        n_epochs=1 if failed else 5, curve=[], metrics={}, provenance={"test": True},
                    ))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def meta_dataset() -> pd.DataFrame:
    return constructed_meta_dataset()


@pytest.fixture(scope="module")
def fitted(meta_dataset) -> MetaLearner:
    return MetaLearner(**FAST).fit(meta_dataset)


def candidates_of(df: pd.DataFrame, dataset: str) -> pd.DataFrame:
    return df[df["dataset_id"] == dataset][config_columns(df)].reset_index(drop=True)


QUERY = {"n_images": 2500.0, "n_classes": 5.0}


def test_predict_columns_index_and_ranking(fitted, meta_dataset):
    candidates = candidates_of(meta_dataset, "ds1")
    candidates.index = [f"c{i}" for i in range(len(candidates))]
    pred = fitted.predict(QUERY, candidates)
    assert list(pred.columns) == PREDICTION_COLUMNS and list(pred.index) == list(candidates.index)
    assert pred[PREDICTION_COLUMNS].notna().all().all()
    assert (pred["pred_accuracy_low"] <= pred["pred_accuracy_high"]).all()
    assert ((pred["p_fail"] >= 0) & (pred["p_fail"] <= 1)).all()
    best = candidates.loc[pred["score"].idxmax()]
    assert best["cfg_model"] == "good_net" and best["cfg_lr"] in (1e-3, 1e-2)
    diverging = candidates["cfg_lr"] == 1.0
    assert pred.loc[diverging, "p_fail"].min() > pred.loc[~diverging, "p_fail"].max()
    assert pred.loc[diverging, "score"].max() < pred.loc[~diverging, "score"].min()
    # cost model: good_net runs cost twice as much
    good = candidates["cfg_model"] == "good_net"
    assert pred.loc[good, "pred_cost_seconds"].mean() > 1.5 * pred.loc[~good, "pred_cost_seconds"].mean()


def test_feature_frame_matches_accuracy_model(fitted, meta_dataset):
    candidates = candidates_of(meta_dataset, "ds0")
    features = fitted.feature_frame(QUERY, candidates)
    assert list(features.columns) == fitted.feature_names
    assert "cfg_lr_log10" in features.columns and "cfg_model=good_net" in features.columns
    assert features["cfg_lr_log10"].iloc[0] == pytest.approx(np.log10(candidates["cfg_lr"].iloc[0]))
    raw = fitted.accuracy_model.inplace_predict(features.to_numpy(dtype=np.float32))
    pred = fitted.predict(QUERY, candidates)
    np.testing.assert_allclose(np.clip(raw, 0, 1), pred["pred_accuracy"].to_numpy(), rtol=1e-6)
    assert fitted.feature_groups["cfg_model=good_net"] == "cfg_model"


def test_shap_on_accuracy_model_is_in_accuracy_units(fitted, meta_dataset):
    shap = pytest.importorskip("shap")
    features = fitted.feature_frame(QUERY, candidates_of(meta_dataset, "ds0").head(5))
    explainer = shap.TreeExplainer(fitted.accuracy_model)
    values = explainer.shap_values(features)
    raw = fitted.accuracy_model.inplace_predict(features.to_numpy(dtype=np.float32))
    np.testing.assert_allclose(values.sum(axis=1) + explainer.expected_value, raw, atol=1e-4)


def test_save_load_round_trip(fitted, meta_dataset, tmp_path):
    candidates = candidates_of(meta_dataset, "ds2")
    fitted.save(tmp_path / "model")
    assert not list((tmp_path / "model").glob("*.pkl"))
    state = json.loads((tmp_path / "model" / "metalearner.json").read_text())
    assert state["params"]["n_ensemble"] == 2
    loaded = MetaLearner.load(tmp_path / "model")
    pd.testing.assert_frame_equal(fitted.predict(QUERY, candidates), loaded.predict(QUERY, candidates))
    assert loaded.feature_names == fitted.feature_names


def test_missing_columns_unknown_values_and_meta_features(fitted, meta_dataset):
    candidates = candidates_of(meta_dataset, "ds0").drop(columns=["cfg_batch_size"])
    candidates.loc[0, "cfg_model"] = "never_seen_net"
    pred = fitted.predict({"mf_n_images": 800.0, "unrelated": 3.0}, candidates)  # prefix allowed, extras ignored
    assert pred.notna().all().all()
    features = fitted.feature_frame({}, candidates)
    assert features["cfg_batch_size"].isna().all() and features["mf_n_classes"].isna().all()
    assert features.loc[0, [f for f in features.columns if f.startswith("cfg_model=")]].sum() == 0
    with pytest.raises(ConfigError, match="numeric"):
        fitted.predict(QUERY, candidates.assign(cfg_lr="fast"))
    with pytest.raises(ConfigError, match="number"):
        fitted.predict({"n_classes": "many"}, candidates)
    assert fitted.predict(QUERY, candidates.iloc[:0]).empty


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_every_objective_fits_and_ranks(objective, meta_dataset):
    learner = MetaLearner(objective, n_estimators=20, max_depth=3, n_ensemble=1, fail_penalty=0.5).fit(meta_dataset)
    candidates = candidates_of(meta_dataset, "ds3")
    pred = learner.predict(QUERY, candidates)
    assert candidates.loc[pred["score"].idxmax(), "cfg_lr"] != 1.0


def test_bad_settings_and_inputs(meta_dataset):
    with pytest.raises(ConfigError, match="objective"):
        MetaLearner("magic").fit(meta_dataset)
    with pytest.raises(ConfigError, match="fail_penalty"):
        MetaLearner(fail_penalty=-1).fit(meta_dataset)
    with pytest.raises(ConfigError, match="not fitted"):
        MetaLearner().predict(QUERY, candidates_of(meta_dataset, "ds0"))
    with pytest.raises(SchemaError, match="lacks the columns"):
        MetaLearner(**FAST).fit(meta_dataset.drop(columns=["status"]))
    bad = meta_dataset.copy()
    bad.loc[0, "accuracy"] = np.nan
    with pytest.raises(SchemaError, match="no 'accuracy'"):
        MetaLearner(**FAST).fit(bad)
    with pytest.raises(SchemaError, match="schema_version"):
        MetaLearner(**FAST).fit(meta_dataset.assign(schema_version=99))
    with pytest.raises(SchemaError, match="empty"):
        MetaLearner(**FAST).fit(meta_dataset.iloc[:0])
    with pytest.raises(ConfigError, match="metalearner.json"):
        MetaLearner.load("/nonexistent/model")


def test_single_dataset_fits(meta_dataset):
    one = meta_dataset[meta_dataset["dataset_id"] == "ds0"]
    pred = MetaLearner(**FAST).fit(one).predict(QUERY, candidates_of(meta_dataset, "ds1"))
    assert pred["score"].notna().all()


def test_within_dataset_target():
    accuracy = np.array([0.2, 0.6, 1.0, 0.5, 0.5])
    datasets = np.array(["a", "a", "a", "b", "b"])
    np.testing.assert_allclose(within_dataset_target(accuracy, datasets), [0, 0.5, 1, 0.5, 0.5])
    np.testing.assert_allclose(within_dataset_target(accuracy, datasets, "rank"), [0, 0.5, 1, 0.5, 0.5])


def test_candidate_configs(meta_dataset):
    table = candidate_configs(meta_dataset)
    assert len(table) == len(MODEL_QUALITY) * len(LEARNING_RATES) * 2
    assert table["candidate_id"].is_unique and (table["n_datasets"] == 4).all() and (table["n_runs"] == 4).all()
    first = table.iloc[0]
    assert first["candidate_id"] == config_id({"batch_size": first["cfg_batch_size"], "lr": first["cfg_lr"],
                                               "model": first["cfg_model"]})
    shuffled = candidate_configs(meta_dataset.sample(frac=1.0, random_state=1))
    pd.testing.assert_frame_equal(table, shuffled)
