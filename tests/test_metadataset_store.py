"""The meta-dataset schema and its crash-safe store."""

import json
import os

import pandas as pd
import pytest

from metallmix.errors import SchemaError
from metallmix.metadataset import (
    MetaDatasetStore,
    load_meta_dataset,
    make_row,
    row_config,
    row_meta_features,
    run_key,
    validate_rows,
)


def example_row(lr=0.01, status="ok", accuracy=0.8, dataset="ds-a", seed=0):
    """A hand-made row (test data, not a recorded run)."""
    return make_row(
        dataset_id=dataset, dataset_kind="generated", meta_features={"n_images": 100.0, "n_classes": 2.0},
        config={"backbone": "resnet18", "lr": lr}, seed=seed, search_space="test", status=status,
        accuracy=accuracy if status == "ok" else None, cost_seconds=1.5 if status == "ok" else None,
        n_epochs=2, curve=[{"epoch": 1, "val_accuracy": 0.5}], metrics={"macro_f1": 0.7},
        provenance={"git_sha": "x"}, error=None if status == "ok" else "boom",
    )


def test_run_key_is_stable_and_order_independent():
    a = run_key("ds", {"lr": 0.1, "backbone": "resnet18"}, 0)
    assert a == run_key("ds", {"backbone": "resnet18", "lr": 0.1}, 0)
    assert a != run_key("ds", {"backbone": "resnet18", "lr": 0.1}, 1)
    assert a != run_key("other", {"backbone": "resnet18", "lr": 0.1}, 0)


def test_row_round_trip_of_config_and_meta_features():
    row = example_row()
    assert row_config(row) == {"backbone": "resnet18", "lr": 0.01}
    assert row_meta_features(row) == {"n_images": 100.0, "n_classes": 2.0}
    assert json.loads(row["curve_json"]) == [{"epoch": 1, "val_accuracy": 0.5}]


def test_store_write_is_idempotent_and_atomic(tmp_path):
    store = MetaDatasetStore(tmp_path / "s")
    rows = [example_row(lr=lr) for lr in (0.1, 0.01)] + [example_row(lr=1.0, status="failed")]
    for row in rows:
        store.write_run(row)
    store.write_run(rows[0])  # resumed sweep writes a run again: no duplicate
    (store.runs_dir / ".leftover.parquet.123.tmp").write_bytes(b"half-written")  # a crash mid-write
    df = store.read()
    assert len(df) == 3 and df["run_id"].is_unique
    assert sorted(df["status"]) == ["failed", "ok", "ok"]
    assert store.finished_run_ids() == {r["run_id"] for r in rows}
    assert store.finished_run_ids(include_failed=False) == {rows[0]["run_id"], rows[1]["run_id"]}
    path = store.consolidate()
    pd.testing.assert_frame_equal(load_meta_dataset(path), df)
    pd.testing.assert_frame_equal(load_meta_dataset(store.root), df)
    assert not [p for p in os.listdir(store.root) if p.endswith(".tmp")]


def test_schema_errors_say_what_to_fix(tmp_path):
    good = pd.DataFrame([example_row()])
    with pytest.raises(SchemaError, match="lacks the columns"):
        validate_rows(good.drop(columns=["status"]))
    with pytest.raises(SchemaError, match="schema_version"):
        validate_rows(good.assign(schema_version=99))
    with pytest.raises(SchemaError, match="have no 'accuracy'"):
        validate_rows(good.assign(accuracy=float("nan")))
    with pytest.raises(SchemaError, match="percentages"):
        validate_rows(good.assign(accuracy=80.0))
    with pytest.raises(SchemaError, match="unknown status"):
        validate_rows(good.assign(status="done"))
    with pytest.raises(SchemaError, match="appears twice"):
        validate_rows(pd.concat([good, good]))
    with pytest.raises(SchemaError, match="not found"):
        load_meta_dataset(tmp_path / "nope.parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SchemaError, match="holds no runs"):
        load_meta_dataset(tmp_path / "empty")
