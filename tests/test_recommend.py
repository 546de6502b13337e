"""Tests of metallmix.recommend on small meta-datasets built here (test data, not real runs)."""

from __future__ import annotations

import json
import math

import jsonschema
import numpy as np
import pandas as pd
import pytest

from metallmix.errors import ConfigError, DataError
from metallmix.metadataset import make_row
from metallmix.recommend import (
    BACKBONE_PARAM_COUNTS,
    Constraints,
    InfeasibleConstraintsError,
    Recommender,
    content_hash,
    dataset_config,
    pareto_front,
    parse_meta_features,
    recommend,
    recommend_for_dataset,
)
from metallmix.schemas import load_schema, validate

BACKBONE_SPEED = {"mobilenet_v3_small": 1.0, "resnet18": 2.0, "resnet50": 5.0}
BACKBONE_SKILL = {"mobilenet_v3_small": 0.00, "resnet18": 0.05, "resnet50": 0.10}
LEARNING_RATES = (1e-4, 1e-3, 1e-2)
BATCH_SIZES = (32, 64)
FAST_METALEARNER = {"n_estimators": 40, "max_depth": 4}


def make_test_meta_dataset(n_datasets: int = 6, seed: int = 0, metrics: dict | None = None) -> pd.DataFrame:
    """Test data: a synthetic meta-dataset whose outcomes follow a known rule.

    accuracy rises with the backbone's size and with lr 1e-3, falls with the number of classes;
    cost grows with images x backbone speed factor; resnet50 with lr 1e-2 fails.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for d in range(n_datasets):
        n_images = int(500 * 2**d)
        n_classes = int(2 + 3 * d)
        mf = {"n_images": n_images, "n_classes": n_classes, "pixel_std": round(0.1 + 0.05 * d, 3)}
        for backbone in BACKBONE_SPEED:
            for lr in LEARNING_RATES:
                for batch_size in BATCH_SIZES:
                    config = {"backbone": backbone, "lr": lr, "batch_size": batch_size}
                    failed = backbone == "resnet50" and lr == 1e-2
                    accuracy = (
                        0.9 - 0.02 * n_classes ** 0.5 + BACKBONE_SKILL[backbone] - 0.05 * abs(math.log10(lr) + 3)
                        + rng.normal(0, 0.01)
                    )
                    rows.append(
                        make_row(
                            dataset_id=f"test_ds{d}", dataset_kind="generated", meta_features=mf, config=config,
                            seed=0, search_space="test", status="failed" if failed else "ok",
                            accuracy=None if failed else float(np.clip(accuracy, 0, 1)),
                            cost_seconds=None if failed else n_images * BACKBONE_SPEED[backbone] * 64 / batch_size * 0.01,
                            n_epochs=0 if failed else 3, curve=[], metrics=metrics or {}, provenance={"test": True},
                            error="diverged" if failed else None,
                        )
                    )
    return pd.DataFrame(rows)


QUERY = {"n_images": 3000, "n_classes": 8, "pixel_std": 0.2}


@pytest.fixture(scope="module")
def meta_dataset() -> pd.DataFrame:
    return make_test_meta_dataset()


@pytest.fixture(scope="module")
def recommender(meta_dataset: pd.DataFrame) -> Recommender:
    return Recommender(metalearner_params=FAST_METALEARNER).fit(meta_dataset, spec="test-data")


def test_output_validates_and_is_json(recommender: Recommender) -> None:
    doc = recommend(recommender, QUERY, top_k=4)
    validate(doc)
    assert json.loads(json.dumps(doc)) == doc  # plain JSON types only
    assert doc["explanation_source"] == "template" and doc["explanation"].startswith("Recommended: ")
    assert doc["meta_dataset"] == {
        "spec": "test-data", "n_runs": 108, "n_datasets": 6, "content_hash": recommender.meta_dataset_["content_hash"],
        "cost": "training time predicted from the recorded runs' wall times",
    }
    assert len(doc["shortlist"]) == 4 and [i["rank"] for i in doc["shortlist"]] == [1, 2, 3, 4]
    scores = [i["score"] for i in doc["shortlist"]]
    assert scores == sorted(scores, reverse=True)
    assert doc["candidate_id"] == doc["shortlist"][0]["candidate_id"] and doc["config"] == doc["shortlist"][0]["config"]
    assert len(doc["evidence"]["shap"]) == recommender.shap_top_k
    assert [e["candidate_id"] for e in doc["evidence"]["shap"]] == [i["candidate_id"] for i in doc["shortlist"][:3]]
    assert len(doc["evidence"]["neighbours"]) == 5
    assert doc["degraded"] is False and doc["warnings"] == []
    assert doc["meta_features"]["values"] == QUERY


def test_schema_rejects_a_broken_document(recommender: Recommender) -> None:
    doc = recommender.recommend(QUERY)
    broken = json.loads(json.dumps(doc))
    broken["predicted"]["accuracy"] = 1.5
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)
    del doc["shortlist"]
    with pytest.raises(jsonschema.ValidationError):
        validate(doc)
    assert load_schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_predictions_agree_with_metalearner(recommender: Recommender) -> None:
    doc = recommender.recommend(QUERY, top_k=1)
    row = recommender.candidates_[recommender.candidates_["candidate_id"] == doc["candidate_id"]]
    cfg = [c for c in row.columns if c.startswith("cfg_")]
    pred = recommender.metalearner_.predict(QUERY, row[cfg]).iloc[0]
    assert doc["predicted"]["accuracy"] == pytest.approx(pred["pred_accuracy"])
    assert doc["predicted"]["train_seconds"] == pytest.approx(pred["pred_cost_seconds"])
    assert doc["score"] == pytest.approx(pred["score"])
    # the SHAP evidence explains that same prediction
    assert doc["evidence"]["shap"][0]["prediction"] == pytest.approx(pred["pred_accuracy"], abs=1e-5)


def test_explained_rows_equal_metalearner_feature_frame(recommender: Recommender) -> None:
    cfg = [c for c in recommender.candidates_.columns if c.startswith("cfg_")]
    positions = [0, 5, 7]
    expected = recommender.metalearner_.feature_frame(QUERY, recommender.candidates_[cfg].iloc[positions])
    got = recommender.explained_rows(QUERY, positions)
    pd.testing.assert_frame_equal(got, expected.reset_index(drop=True), check_dtype=False)


def test_budget_constraint_is_respected(recommender: Recommender) -> None:
    free = recommender.recommend(QUERY, top_k=50)
    times = sorted(i["predicted"]["train_seconds"] for i in free["shortlist"])
    budget_minutes = float(np.median(times)) / 60.0
    doc = recommender.recommend(QUERY, {"budget_minutes": budget_minutes}, top_k=50)
    validate(doc)
    assert all(i["predicted"]["train_seconds"] <= budget_minutes * 60 + 1e-9 for i in doc["shortlist"])
    assert all(p["train_seconds"] <= budget_minutes * 60 + 1e-9 for p in doc["pareto_front"])
    assert doc["constraints"]["applied"] == ["budget_minutes"]
    assert doc["constraints"]["n_feasible"] + doc["constraints"]["excluded_by"]["budget_minutes"] == 18
    assert doc["constraints"]["requested"]["budget_minutes"] == budget_minutes


def test_backbone_and_param_constraints_are_respected(recommender: Recommender) -> None:
    doc = recommender.recommend(QUERY, Constraints(backbones=("resnet18", "mobilenet_v3_small")), top_k=20)
    assert {i["backbone"] for i in doc["shortlist"]} <= {"resnet18", "mobilenet_v3_small"}
    assert doc["constraints"]["excluded_by"] == {"backbones": 6}
    doc = recommender.recommend(QUERY, {"max_params": 12e6}, top_k=20)
    assert {i["backbone"] for i in doc["shortlist"]} == {"resnet18", "mobilenet_v3_small"}
    assert all(i["param_count"] == {"value": BACKBONE_PARAM_COUNTS[i["backbone"]], "source": "lookup_table"} for i in doc["shortlist"])
    assert doc["constraints"]["unchecked"] == []
    with pytest.raises(ConfigError, match=r"unknown backbone\(s\) \['vit'\]"):
        recommender.recommend(QUERY, {"backbones": ["vit"]})


def test_p_fail_constraint_avoids_risky_configs(recommender: Recommender) -> None:
    doc = recommender.recommend(QUERY, {"max_p_fail": 0.5}, top_k=20)
    assert all(i["predicted"]["p_fail"] <= 0.5 for i in doc["shortlist"])
    assert not any(i["backbone"] == "resnet50" and i["config"]["lr"] == 1e-2 for i in doc["shortlist"])


def test_infeasible_constraints_name_what_to_relax(recommender: Recommender) -> None:
    with pytest.raises(InfeasibleConstraintsError, match="relax budget_minutes to >= ") as info:
        recommender.recommend(QUERY, {"budget_minutes": 1e-4})
    assert info.value.closest["candidate_id"] and "closest candidate" in str(info.value)
    with pytest.raises(InfeasibleConstraintsError, match="relax max_params to >= 2.54e\\+06"):
        recommender.recommend(QUERY, {"max_params": 1e6})
    with pytest.raises(ConfigError, match="budget_minutes must be a positive number"):
        recommender.recommend(QUERY, {"budget_minutes": -5})
    with pytest.raises(ConfigError, match="unknown constraint"):
        recommender.recommend(QUERY, {"budget": 5})


def test_param_counts_from_config_or_metrics_win_over_the_table() -> None:
    df = make_test_meta_dataset(n_datasets=2, metrics={"n_params": 1234.0})
    rec = Recommender(metalearner_params=FAST_METALEARNER).fit(df)
    assert set(rec.candidates_["param_count_source"]) == {"metrics"}
    assert set(rec.candidates_["param_count"]) == {1234.0}
    df = make_test_meta_dataset(n_datasets=2)
    df["cfg_backbone"] = df["cfg_backbone"].replace("resnet50", "mystery_net")
    rec = Recommender(metalearner_params=FAST_METALEARNER).fit(df)
    doc = rec.recommend(QUERY, {"max_params": 20e6}, top_k=20)
    validate(doc)
    assert doc["constraints"]["unchecked"] == [
        {"constraint": "max_params", "reason": doc["constraints"]["unchecked"][0]["reason"], "n_candidates": 6, "backbones": ["mystery_net"]}
    ]
    assert any("could not be checked" in w for w in doc["warnings"])


def test_pareto_front_is_non_dominated(recommender: Recommender) -> None:
    doc = recommender.recommend(QUERY, top_k=18)
    front = doc["pareto_front"]
    assert front == sorted(front, key=lambda p: p["train_seconds"])
    accs = [p["accuracy"] for p in front]
    assert accs == sorted(accs)  # fastest first, each slower one more accurate
    everything = [(i["predicted"]["train_seconds"], i["predicted"]["accuracy"]) for i in doc["shortlist"]]
    for p in front:
        assert not any(t < p["train_seconds"] and a > p["accuracy"] for t, a in everything)
    accuracy, seconds = np.array([0.5, 0.4, 0.9, 0.9, 0.2]), np.array([2.0, 3.0, 4.0, 4.0, 1.0])
    assert pareto_front(accuracy, seconds, np.array(list("abcde"))).tolist() == [4, 0, 2]


def test_meta_feature_errors_are_clear(recommender: Recommender) -> None:
    with pytest.raises(ConfigError, match="unknown meta-feature 'colour'"):
        recommender.recommend({**QUERY, "colour": 3})
    with pytest.raises(ConfigError, match="'n_images' counts something and cannot be negative"):
        recommender.recommend({**QUERY, "n_images": -10})
    with pytest.raises(ConfigError, match=r"'pixel_std' must lie in \[0, 1\], got 1.5"):
        recommender.recommend({**QUERY, "pixel_std": 1.5})
    with pytest.raises(ConfigError, match="must be finite"):
        recommender.recommend({**QUERY, "pixel_std": math.inf})
    with pytest.raises(ConfigError, match="no meta-feature given"):
        recommender.recommend({})
    with pytest.raises(ConfigError, match="top_k must be a positive integer"):
        recommender.recommend(QUERY, top_k=0)


def test_missing_and_extrapolated_features_are_reported(recommender: Recommender) -> None:
    doc = recommender.recommend({"n_images": 10**7, "n_classes": 8})
    validate(doc)
    assert doc["meta_features"]["imputed"] == ["pixel_std"]
    assert doc["meta_features"]["outside_training_range"] == [{"name": "n_images", "value": 1e7, "min": 500.0, "max": 16000.0}]
    assert any("extrapolate" in w for w in doc["warnings"]) and doc["degraded"] is False
    assert recommender.recommend({"mf_n_classes": 8})["degraded"] is True  # prefix accepted; most features missing


def test_single_dataset_meta_dataset_is_degraded_but_works() -> None:
    df = make_test_meta_dataset(n_datasets=1)
    doc = Recommender(metalearner_params=FAST_METALEARNER).fit(df).recommend(QUERY)
    validate(doc)
    assert doc["degraded"] is True and "single dataset (test_ds0)" in doc["warnings"][0]
    assert [n["dataset_id"] for n in doc["evidence"]["neighbours"]] == ["test_ds0"]


def test_background_comes_from_fitting_data_only(meta_dataset: pd.DataFrame) -> None:
    train = meta_dataset[meta_dataset["dataset_id"] != "test_ds3"]
    rec = Recommender(metalearner_params=FAST_METALEARNER).fit(train)
    assert "test_ds3" not in rec.index_.dataset_ids_
    held_out_images = float(meta_dataset.loc[meta_dataset["dataset_id"] == "test_ds3", "mf_n_images"].iloc[0])
    assert held_out_images not in set(rec.explainer_.background["mf_n_images"])
    assert set(rec.explainer_.background["mf_n_images"]) <= set(train["mf_n_images"])


def test_save_load_round_trip(recommender: Recommender, tmp_path) -> None:
    recommender.save(tmp_path / "model")
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["parts"]["retrieval"] == "retrieval" and manifest["meta_dataset"]["n_runs"] == 108
    assert not list((tmp_path / "model").rglob("*.pkl")) and not list((tmp_path / "model").rglob("*.pickle"))
    loaded = Recommender.load(tmp_path / "model")
    constraints = {"budget_minutes": 60, "max_params": 30e6}
    assert loaded.recommend(QUERY, constraints) == recommender.recommend(QUERY, constraints)
    with pytest.raises(ConfigError, match="holds no saved Recommender"):
        Recommender.load(tmp_path / "nowhere")


def test_unfitted_recommender_says_so() -> None:
    with pytest.raises(ConfigError, match="not fitted"):
        Recommender().recommend(QUERY)


def test_content_hash_tracks_content(meta_dataset: pd.DataFrame) -> None:
    shuffled = meta_dataset.sample(frac=1.0, random_state=1)
    assert content_hash(shuffled) == content_hash(meta_dataset)
    changed = meta_dataset.copy()
    changed.loc[0, "accuracy"] = 0.123
    assert content_hash(changed) != content_hash(meta_dataset)


def test_meta_features_from_json_string_or_file(recommender: Recommender, tmp_path) -> None:
    assert parse_meta_features('{"n_classes": 3}') == {"n_classes": 3}
    path = tmp_path / "mf.json"
    path.write_text(json.dumps(QUERY))
    doc = recommend_for_dataset(recommender, meta_features=str(path))
    assert doc["meta_features"]["values"] == QUERY
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_meta_features("{n_classes: 3}")
    with pytest.raises(ConfigError, match="are neither a JSON object nor an existing JSON file"):
        parse_meta_features(str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="must be a JSON object"):
        parse_meta_features("[1, 2]")
    with pytest.raises(ConfigError, match="exactly one of dataset"):
        recommend_for_dataset(recommender)


def test_dataset_argument_becomes_a_dataset_config(tmp_path) -> None:
    npz = tmp_path / "breastmnist_64.npz"
    npz.write_bytes(b"")
    assert dataset_config(str(npz)) == {"kind": "medmnist", "name": "breastmnist", "size": 64, "root": str(tmp_path)}
    assert dataset_config(str(tmp_path)) == {"kind": "imagefolder", "root": str(tmp_path)}
    assert dataset_config("retinamnist") == {"kind": "medmnist", "name": "retinamnist"}
    assert dataset_config("retinamnist@128") == {"kind": "medmnist", "name": "retinamnist", "size": 128}
    with pytest.raises(DataError, match="does not exist"):
        dataset_config(str(tmp_path / "nothere.npz"))
    with pytest.raises(DataError, match="neither an existing"):
        dataset_config("some/missing/folder")


def test_recommend_for_a_builtin_dataset(recommender: Recommender) -> None:
    """breastmnist ships with metallmix: its meta-features are computed, the unknown ones ignored."""
    doc = recommend_for_dataset(recommender, dataset="breastmnist", top_k=2)
    validate(doc)
    used = doc["meta_features"]["values"]
    assert set(used) == {"n_images", "n_classes", "pixel_std"}
    assert used["n_images"] == 780 and used["n_classes"] == 2
    assert "n_train" in doc["meta_features"]["ignored"] and "centroid_accuracy" in doc["meta_features"]["ignored"]
    assert any("unknown to this meta-dataset and were ignored" in w for w in doc["warnings"])
    with pytest.raises(DataError):
        recommend_for_dataset(recommender, dataset="not_a_medmnist_name")
