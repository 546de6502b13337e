"""Tests of metallmix.explain on a meta-learner fitted to test data (not real runs)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_recommend import FAST_METALEARNER, QUERY, make_test_meta_dataset

from metallmix.errors import ConfigError
from metallmix.explain import ShapExplainer, display_feature
from metallmix.metadataset import config_columns
from metallmix.metalearner import MetaLearner, candidate_configs


@pytest.fixture(scope="module")
def fitted() -> tuple[MetaLearner, pd.DataFrame, pd.DataFrame]:
    df = make_test_meta_dataset()
    learner = MetaLearner(**FAST_METALEARNER).fit(df)
    background = learner.feature_frame_from_rows(df)
    candidates = candidate_configs(df)
    rows = learner.feature_frame(QUERY, candidates[config_columns(df)])
    return learner, background, rows


@pytest.fixture(scope="module")
def explainer(fitted) -> ShapExplainer:
    learner, background, _ = fitted
    return ShapExplainer(learner.accuracy_model, learner.feature_names, background, max_background=60)


def test_shap_values_sum_to_prediction_minus_expected_value(fitted, explainer: ShapExplainer) -> None:
    learner, _, rows = fitted
    values = explainer.shap_values(rows)
    raw = learner.accuracy_model.inplace_predict(rows.to_numpy(dtype=np.float32), missing=np.nan)
    assert values.shape == (len(rows), len(learner.feature_names))
    np.testing.assert_allclose(values.sum(axis=1) + explainer.expected_value, raw, rtol=0, atol=2e-6)
    # the explanation's prediction is that same raw output, in [0, 1] accuracy units here
    explanations = explainer.explain(rows.iloc[:4])
    np.testing.assert_allclose([e["prediction"] for e in explanations], raw[:4], atol=2e-6)


def test_explanation_structure_and_units(fitted, explainer: ShapExplainer) -> None:
    _, _, rows = fitted
    explanation = explainer.explain(rows.iloc[[0]], top_n=3)[0]
    top = explanation["top_features"]
    assert len(top) == 3
    sizes = [abs(t["shap"]) for t in top]
    assert sizes == sorted(sizes, reverse=True)
    for item in top:
        assert item["points"] == pytest.approx(100 * item["shap"])
        assert item["direction"] == ("raises" if item["shap"] >= 0 else "lowers")
        assert item["value"] == pytest.approx(float(rows.iloc[0][item["feature"]])) or item["value"] is None
        assert item["display"] in explanation["text"]
    all_values = explainer.shap_values(rows.iloc[[0]])[0]
    shown = sum(t["shap"] for t in top)
    assert explanation["other_features_points"] == pytest.approx(100 * (all_values.sum() - shown), abs=1e-6)
    assert "predicted accuracy by" in explanation["text"] and explanation["text"].endswith("points.")


def test_display_follows_the_metalearner_encoding() -> None:
    assert display_feature("cfg_backbone=resnet18", 1.0) == "backbone is resnet18"
    assert display_feature("cfg_backbone=resnet18", 0.0) == "backbone is not resnet18"
    assert display_feature("cfg_backbone=resnet18", float("nan")) == "backbone unset"
    assert display_feature("cfg_lr_log10", -3.0) == "lr = 0.001"
    assert display_feature("mf_n_classes", 40.0) == "n_classes = 40"
    assert display_feature("mf_pixel_std", 0.1234) == "pixel_std = 0.123"


def test_global_importance_ranks_used_features(fitted, explainer: ShapExplainer) -> None:
    learner, _, _ = fitted
    importance = explainer.global_importance()
    assert [i["feature"] for i in importance] != [] and len(importance) == len(learner.feature_names)
    sizes = [i["mean_abs_points"] for i in importance]
    assert sizes == sorted(sizes, reverse=True) and min(sizes) >= 0
    expected = np.abs(explainer.shap_values(explainer.background)).mean(axis=0) * 100
    by_name = {i["feature"]: i["mean_abs_points"] for i in importance}
    for name, value in zip(learner.feature_names, expected, strict=True):
        assert by_name[name] == pytest.approx(value)
    # the rule behind the test data: backbone and learning rate matter
    top_columns = {i["name"].partition("=")[0] for i in importance[:4]}
    assert {"backbone", "lr_log10"} & top_columns


def test_summary_plot_is_a_png(explainer: ShapExplainer, tmp_path) -> None:
    path = explainer.save_summary_plot(tmp_path / "plots" / "shap_summary.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_save_load_round_trip(fitted, explainer: ShapExplainer, tmp_path) -> None:
    learner, _, rows = fitted
    explainer.save(tmp_path / "explainer")
    loaded = ShapExplainer.load(tmp_path / "explainer", learner.accuracy_model)
    assert loaded.explain(rows.iloc[:3]) == explainer.explain(rows.iloc[:3])
    assert loaded.global_importance() == explainer.global_importance()
    pd.testing.assert_frame_equal(loaded.background, explainer.background)


def test_bad_inputs_raise_clear_errors(fitted) -> None:
    learner, background, _ = fitted
    with pytest.raises(ConfigError, match="background lacks the model's features"):
        ShapExplainer(learner.accuracy_model, learner.feature_names, background.drop(columns=learner.feature_names[0]))
    with pytest.raises(ConfigError, match="background is empty"):
        ShapExplainer(learner.accuracy_model, learner.feature_names, background.iloc[:0])
    with pytest.raises(ConfigError, match="holds no saved ShapExplainer"):
        ShapExplainer.load("/nonexistent/folder", learner.accuracy_model)
