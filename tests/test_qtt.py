"""The 3D medical knowledge base: the Quick-Tune tool portfolio importer on the shipped MedQuickTune copy
(rows checked against the raw CSV files), malformed copies, and the meta-learner and replay on it."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from metallmix.bench import SECONDS
from metallmix.bench.replay import RecordedOutcomes
from metallmix.errors import DataError, SchemaError
from metallmix.evaluate import evaluate_lodo
from metallmix.metadataset import load_meta_dataset
from metallmix.metadataset.qtt import (
    BUILTIN_MEDQUICKTUNE,
    METRIC,
    SEARCH_SPACE,
    import_qtt,
)
from metallmix.metadataset.schema import row_config

SOURCE = BUILTIN_MEDQUICKTUNE
RUNS = {"crlm": 166, "desmoid": 117, "liver": 94, "bflair": 49, "gist": 40, "hcc": 39}
FAILED = {"crlm": 80, "desmoid": 44, "liver": 31, "bflair": 2, "gist": 7, "hcc": 4}


@pytest.fixture(scope="module")
def kb() -> pd.DataFrame:
    return load_meta_dataset("qtt:builtin")


@pytest.fixture(scope="module")
def raw() -> dict[str, pd.DataFrame]:
    return {name: pd.read_csv(SOURCE / f"{name}.csv", index_col=0) for name in ("config", "curve", "cost", "meta")}


# ------------------------------------------------------------------ the shipped folder
def test_shipped_folder_imports_every_run(kb: pd.DataFrame) -> None:
    assert len(kb) == 505 and kb["run_id"].is_unique
    assert kb.groupby("dataset_id").size().to_dict() == RUNS
    assert kb[kb["status"] == "failed"].groupby("dataset_id").size().to_dict() == FAILED
    assert kb["status"].value_counts().to_dict() == {"ok": 337, "failed": 168}  # no truncated curve in it
    assert set(kb["search_space"]) == {SEARCH_SPACE} and set(kb["dataset_kind"]) == {"external"}
    ok, failed = kb[kb["status"] == "ok"], kb[kb["status"] == "failed"]
    assert ok.groupby("dataset_id")["n_epochs"].unique().map(list).to_dict() == {
        "bflair": [25], "crlm": [25], "desmoid": [21], "gist": [25], "hcc": [25], "liver": [25]}
    assert failed["accuracy"].isna().all() and (failed["n_epochs"] == 0).all() and (failed["curve_json"] == "[]").all()
    assert failed["error"].str.contains("all 25 epochs of curve.csv are 0 or empty").all()
    assert failed["cost_seconds"].notna().all() and ok["error"].isna().all()
    assert ok["accuracy"].between(0.3, 0.81).all()


@pytest.mark.parametrize("index", [1, 2, 183, 349, 466, 505])
def test_rows_match_the_raw_csv(kb: pd.DataFrame, raw: dict[str, pd.DataFrame], index: int) -> None:
    dataset = raw["config"].loc[index, "dataset"]
    row = kb.set_index("run_id").loc[f"{dataset}:{index}"]
    recorded = raw["curve"].loc[index].to_numpy(float)
    cost = raw["cost"].loc[index, "cost"]
    assert row["cost_seconds"] == pytest.approx(cost)
    metrics = json.loads(row["metrics_json"])
    assert metrics["metric"] == METRIC and "ROC AUC" in METRIC
    if (recorded == 0).all():
        assert row["status"] == "failed" and math.isnan(row["accuracy"]) and metrics["final_accuracy"] is None
        return
    scores = recorded[:21] if dataset == "desmoid" else recorded  # desmoid: 21 epochs, then 4 zero cells of padding
    assert row["status"] == "ok" and row["n_epochs"] == len(scores)
    assert row["accuracy"] == pytest.approx(scores.max() / 100)
    assert metrics["final_accuracy"] == pytest.approx(scores[-1] / 100)
    assert metrics["best_epoch"] == int(scores.argmax()) + 1
    curve = json.loads(row["curve_json"])
    assert [e["epoch"] for e in curve] == list(range(1, len(scores) + 1))
    assert [e["val_accuracy"] for e in curve] == pytest.approx(list(scores / 100))
    assert sum(e["seconds"] for e in curve) == pytest.approx(cost)  # the total, spread evenly
    assert len({e["seconds"] for e in curve}) == 1


def test_meta_features_modality_and_config(kb: pd.DataFrame, raw: dict[str, pd.DataFrame]) -> None:
    by_dataset = kb.groupby("dataset_id").first()
    crlm, liver = by_dataset.loc["crlm"], by_dataset.loc["liver"]
    assert crlm["modality"] == "CT" and crlm["mf_modality_ct"] == 1 and crlm["mf_modality_mri"] == 0
    assert liver["modality"] == "MRI" and liver["mf_modality_mri"] == 1 and liver["mf_modality_ct"] == 0
    assert (crlm["mf_resolution"], crlm["mf_depth"], liver["mf_depth"]) == (256, 96, 32)
    assert (crlm["mf_n_images"], crlm["mf_n_classes"], crlm["mf_channels"], crlm["mf_task_binary"]) == (1500, 2, 1, 1)
    assert set(by_dataset["modality"]) == {"CT", "MRI"}
    assert "cfg_dataset" not in kb and "cfg_model_type" not in kb  # the dataset is no setting; model_type is empty
    rows = kb.set_index("run_id")
    densenet, resnet = row_config(rows.loc["liver:1"]), row_config(rows.loc["liver:2"])
    source = raw["config"].loc[1]
    assert densenet["model"] == "densenet" and densenet["densenet_type"] == "densenet121"
    assert densenet["learning_rate"] == pytest.approx(source["learning_rate"]) and densenet["batch_size"] == 1
    assert densenet["remove_last_block"] is True and "resnet_type" not in densenet  # empty cell: no setting
    assert resnet["no_max_pool"] is True and resnet["resnet_type"] == "resnet18" and "growth_rate" not in resnet
    assert kb["cfg_batch_size"].dtype.kind == "i" and kb["cfg_learning_rate"].dtype.kind == "f"


def test_spec_strings(tmp_path: Path, kb: pd.DataFrame) -> None:
    folder = copy_source(tmp_path)
    copied = load_meta_dataset(f"qtt:{folder}")
    assert len(copied) == len(kb) and list(copied["accuracy"].fillna(-1)) == list(kb["accuracy"].fillna(-1))
    with pytest.raises(SchemaError, match="qtt:DIR"):
        load_meta_dataset(str(tmp_path / "nowhere"))


# ------------------------------------------------------------------ malformed copies
def copy_source(tmp_path: Path) -> Path:
    folder = tmp_path / "portfolio"
    shutil.copytree(SOURCE, folder, ignore=shutil.ignore_patterns("*.md", "LICENSE"))
    for path in folder.iterdir():
        path.chmod(0o644)
    return folder


def edit_csv(path: Path, edit) -> None:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    edit(rows)
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)


def set_cell(row: int, column: str, value: str):
    """Set a cell of data row ``row`` (0 = the first run; file line row + 2) in the column named ``column``."""
    def edit(rows: list[list[str]]) -> None:
        rows[row + 1][rows[0].index(column)] = value
    return edit


def drop_column(column: str):
    def edit(rows: list[list[str]]) -> None:
        at = rows[0].index(column)
        for cells in rows:
            del cells[at]
    return edit


def drop_last_run(rows: list[list[str]]) -> None:
    rows.pop()


@pytest.mark.parametrize(("file", "edit", "message"), [
    ("meta.csv", drop_column("modality"), "meta.csv line 1: the header lacks the column(s) ['modality']"),
    ("cost.csv", drop_column("cost"), "cost.csv line 1: the header lacks the column(s) ['cost']"),
    ("curve.csv", drop_last_run, "curve.csv holds 504 runs and"),
    ("cost.csv", set_cell(4, "", "999"), "cost.csv line 6, index column: run '999' where"),
    ("curve.csv", set_cell(9, "3", "abc"), "curve.csv line 11, column '3': 'abc' is not a number"),
    ("curve.csv", set_cell(9, "3", "180"), "curve.csv line 11, column '3': 180 lies outside 0-100"),
    ("cost.csv", set_cell(1, "cost", "-5"), "cost.csv line 3, column 'cost': '-5' is not a finite number >= 0"),
    ("cost.csv", set_cell(1, "cost", ""), "cost.csv line 3, column 'cost': the value is empty"),
    ("meta.csv", set_cell(0, "dataset", "hcc"), "meta.csv line 2, column 'dataset': 'hcc' differs from 'liver'"),
    ("meta.csv", set_cell(2, "num_classes", "two"), "meta.csv line 4, column 'num_classes': 'two' is not a number"),
    ("curve.csv", drop_column("3"), "curve.csv line 1, column '4': expected epoch 3"),
])
def test_malformed_folders_are_refused_naming_file_line_and_column(tmp_path, file, edit, message) -> None:
    folder = copy_source(tmp_path)
    edit_csv(folder / file, edit)
    with pytest.raises(SchemaError) as info:
        load_meta_dataset(f"qtt:{folder}")
    assert message in str(info.value)
    assert str(folder / file) in str(info.value)


def test_missing_folder_or_file_says_what_is_needed(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        import_qtt(tmp_path / "nowhere")
    folder = copy_source(tmp_path)
    (folder / "cost.csv").unlink()
    with pytest.raises(DataError, match=r"lacks \['cost.csv'\]"):
        import_qtt(folder)


def test_short_and_non_finite_curves(tmp_path: Path) -> None:
    folder = copy_source(tmp_path)

    def edit(rows: list[list[str]]) -> None:
        for column in range(21, 26):  # run 1 (liver): epochs 20-24 left empty -> 20 epochs
            rows[1][column] = ""
        rows[2][4] = "nan"  # run 2 (liver): epoch 3 holds no finite score

    edit_csv(folder / "curve.csv", edit)
    rows = import_qtt(folder).set_index("run_id")
    short, broken = rows.loc["liver:1"], rows.loc["liver:2"]
    assert short["status"] == "truncated" and short["n_epochs"] == 20
    assert json.loads(short["metrics_json"])["full_length_epochs"] == 25
    assert broken["status"] == "failed" and "epoch 3 of curve.csv holds no finite score ('nan')" in broken["error"]
    assert math.isnan(broken["accuracy"])


# ------------------------------------------------------------------ the knowledge base at work
def test_meta_learner_gives_a_regret_for_every_dataset(kb: pd.DataFrame) -> None:
    result = evaluate_lodo(kb, learner_params={"n_ensemble": 2, "n_estimators": 30})
    regrets = {entry["dataset"]: entry["normalized_regret"] for entry in result["datasets"]}
    assert set(regrets) == set(RUNS)
    assert all(0 <= r <= 1 for r in regrets.values())


def test_replay_accepts_each_held_out_dataset(kb: pd.DataFrame) -> None:
    for dataset, runs in kb.groupby("dataset_id"):
        outcomes = RecordedOutcomes(runs)
        assert outcomes.unit is SECONDS and outcomes.has_curves
        assert outcomes.max_epochs == (21 if dataset == "desmoid" else 25)
        costs = {run_id: run.cost for run_id, run in outcomes.runs.items()}
        assert costs == pytest.approx(dict(zip(runs["run_id"], runs["cost_seconds"], strict=True)))


@pytest.mark.parametrize("method", ["asha", "bohb"])
def test_curve_based_searches_replay_on_it(method: str) -> None:
    """ASHA and BOHB stop runs between epochs of the recorded curves (fewer epochs than 10 whole runs);
    BOHB models within a budget of 10 trials."""
    from metallmix.bench.run import run_benchmark

    result = run_benchmark({"mode": "replay", "method": method, "held_out": "desmoid", "meta_dataset": "qtt:builtin",
                            "budget": {"trials": 10}, "seed": 0})
    assert "skipped" not in result and result["n_trials"] == 10
    assert sum(t["epochs"] for t in result["trials"]) < 10 * 21  # some runs were stopped early
    assert 0 <= result["normalized_regret"] <= 1
    if method == "bohb":
        assert result["model_based_trials"] > 0
