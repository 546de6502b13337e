"""Tests of the Quick-Tune importer: a small folder written here, and the real one when it is present."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from metallmix.errors import DataError, SchemaError
from metallmix.metadataset.quicktune import FAILED_COST_FRACTION, import_quicktune, infer_search_space
from metallmix.metadataset.schema import STATUS_FAILED, STATUS_OK, STATUS_TRUNCATED
from metallmix.metadataset.store import BUILTIN_QUICKTUNE, load_meta_dataset

REAL_FOLDER = BUILTIN_QUICKTUNE

TABLE = """,lr,batch_size,cat:model:resnet,cat:model:vit,cat:opt_betas:None,"cat:opt_betas:[0.9, 0.999]"
c1,0.001,32,1,0,1,0
c2,0.01,8,0,1,0,1
c3,0.0001,16,1,0,0,1
c4,0.1,64,0,1,1,0
"""
PERF = {
    "info": {"metric": "Top1 Accuracy in %"},
    "A": {"c1": [10.0, 50.0, 40.0], "c2": [5.0], "c3": [20.0, 100.00000004]},
    "B": {"c4": [1.0, 2.0, 3.0]},
}
COST = {
    "A": {"c1": [100.0, 100.0, 100.0], "c2": [3.0], "c3": [280.0, 10.0]},
    "B": {"c4": [1.0, 1.0, 1.0]},
}
DESCRIPTORS = {"A": [1000, 10, 128, 3], "B": [500, 50, 64, 1]}


def write_folder(root: Path, table: str = TABLE, perf: dict = PERF, cost: dict = COST,
                 descriptors: dict = DESCRIPTORS) -> Path:
    (root / "curves").mkdir(parents=True)
    (root / "meta").mkdir()
    (root / "table.csv").write_text(table)
    (root / "curves/perf.json").write_text(json.dumps(perf))
    (root / "curves/cost.json").write_text(json.dumps(cost))
    (root / "meta/descriptors.json").write_text(json.dumps(descriptors))
    return root


def test_small_folder_rows_values_and_statuses(tmp_path):
    df = import_quicktune(write_folder(tmp_path / "qt")).set_index("run_id")
    assert sorted(df.index) == ["c1", "c2", "c3", "c4"]  # one row per curve; "info" is not a dataset
    assert df.loc["c1", "accuracy"] == pytest.approx(0.5)
    assert df.loc["c1", "cost_seconds"] == pytest.approx(300.0)
    assert df.loc["c1", "n_epochs"] == 3
    assert df.loc["c3", "accuracy"] == 1.0  # 100.00000004 % is float rounding, clipped
    # budget = longest total cost (300 s); c2 stopped after one epoch in 3 s < 10% of it: failed
    assert df.loc["c1", "status"] == STATUS_OK
    assert df.loc["c2", "status"] == STATUS_FAILED and df.loc["c2", "accuracy"] == pytest.approx(0.05)
    assert df.loc["c3", "status"] == STATUS_TRUNCATED  # 2 of A's 3 epochs
    assert df.loc["c4", "status"] == STATUS_OK  # B's full length is its own longest curve
    curve = json.loads(df.loc["c1", "curve_json"])
    assert [e["val_accuracy"] for e in curve] == pytest.approx([0.1, 0.5, 0.4])
    assert [e["seconds"] for e in curve] == [100.0, 100.0, 100.0]
    # one-hot groups folded back, numeric hyperparameters kept as floats
    assert df.loc["c2", "cfg_model"] == "vit" and df.loc["c1", "cfg_model"] == "resnet"
    assert df.loc["c2", "cfg_opt_betas"] == "[0.9, 0.999]"
    assert df.loc["c2", "cfg_lr"] == 0.01 and df.loc["c2", "cfg_batch_size"] == 8.0
    # meta-features under metallmix's own names
    assert df.loc["c4", "mf_n_images"] == 500 and df.loc["c4", "mf_channels"] == 1
    assert df.loc["c1", "mf_class_size_mean"] == pytest.approx(100.0)
    assert set(df["dataset_kind"]) == {"external"} and set(df["search_space"]) == {"quicktune-extended"}
    assert "quicktune" in df.loc["c1", "provenance_json"]


def test_infer_search_space(tmp_path):
    space = infer_search_space(import_quicktune(write_folder(tmp_path / "qt")))
    assert space["model"] == {"type": "categorical", "values": ["resnet", "vit"]}
    assert space["lr"]["type"] == "numeric" and space["lr"]["min"] == 0.0001 and space["lr"]["max"] == 0.1
    assert space["batch_size"]["values"] == [8.0, 16.0, 32.0, 64.0]


def test_load_meta_dataset_spec(tmp_path):
    folder = write_folder(tmp_path / "qt")
    assert len(load_meta_dataset(f"quicktune:{folder}")) == 4


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        import_quicktune(tmp_path / "nowhere")
    folder = write_folder(tmp_path / "qt")
    (folder / "curves/cost.json").unlink()
    with pytest.raises(DataError, match="cost.json"):
        import_quicktune(folder)


def test_curve_of_unknown_config(tmp_path):
    perf = {**PERF, "B": {"c4": [1.0], "c9": [2.0]}}
    cost = {**COST, "B": {"c4": [1.0], "c9": [1.0]}}
    with pytest.raises(SchemaError, match="missing from table.csv"):
        import_quicktune(write_folder(tmp_path / "qt", perf=perf, cost=cost))


def test_bad_table_and_descriptors(tmp_path):
    broken_onehot = TABLE.replace("c1,0.001,32,1,0,1,0", "c1,0.001,32,1,1,1,0")
    with pytest.raises(SchemaError, match="exactly one 1"):
        import_quicktune(write_folder(tmp_path / "a", table=broken_onehot))
    missing_value = TABLE.replace("c1,0.001,32", "c1,,32")
    with pytest.raises(SchemaError, match="'lr'"):
        import_quicktune(write_folder(tmp_path / "b", table=missing_value))
    with pytest.raises(SchemaError, match="descriptors.json has no entry"):
        import_quicktune(write_folder(tmp_path / "c", descriptors={"A": DESCRIPTORS["A"]}))
    with pytest.raises(SchemaError, match="must match"):
        import_quicktune(write_folder(tmp_path / "d", cost={**COST, "B": {"c4": [1.0]}}))


def test_curve_without_finite_value_is_failed(tmp_path):
    perf = {**PERF, "B": {"c4": [None, None, None]}}
    df = import_quicktune(write_folder(tmp_path / "qt", perf=perf)).set_index("run_id")
    assert df.loc["c4", "status"] == STATUS_FAILED and math.isnan(df.loc["c4", "accuracy"])


def test_builtin_folder_against_raw_files():
    df = import_quicktune(REAL_FOLDER).set_index("run_id")
    perf = json.loads((REAL_FOLDER / "curves/perf.json").read_text())
    cost = json.loads((REAL_FOLDER / "curves/cost.json").read_text())
    datasets = [d for d in perf if d != "info"]
    assert len(datasets) == 18
    assert len(df) == sum(len(perf[d]) for d in datasets)
    table = pd.read_csv(REAL_FOLDER / "table.csv", dtype={0: str}).set_index("Unnamed: 0")
    budget = max(sum(c) for d in datasets for c in cost[d].values())
    for dataset in datasets[:6]:
        for config_id in sorted(perf[dataset])[:3]:
            row = df.loc[config_id]
            curve = perf[dataset][config_id]
            assert row["dataset_id"] == dataset
            assert row["accuracy"] == pytest.approx(min(max(curve) / 100, 1.0))
            assert row["cost_seconds"] == pytest.approx(sum(cost[dataset][config_id]))
            assert row["n_epochs"] == len(curve)
            expected = ("ok" if len(curve) == 50 else
                        "failed" if len(curve) == 1 and sum(cost[dataset][config_id]) < FAILED_COST_FRACTION * budget
                        else "truncated")
            assert row["status"] == expected
            raw = table.loc[config_id]
            assert raw[f"cat:model:{row['cfg_model']}"] == 1
            assert raw[f"cat:opt:{row['cfg_opt']}"] == 1
            assert row["cfg_lr"] == raw["lr"]
    assert df["status"].value_counts().to_dict() == {"ok": 1643, "failed": 1044, "truncated": 511}
