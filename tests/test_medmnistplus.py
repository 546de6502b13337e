"""The medical knowledge base: MedMNIST+ importer (shipped folder, malformed and larger copies), the
compute estimate, modality/task descriptors, evaluate's JSON on it, and recommendations for MedMNIST files."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metallmix.cli import _budget, main
from metallmix.compute_cost import (
    EXPECTED_EPOCHS,
    count_forward_flops,
    estimate_training_flops,
    shipped_forward_flops,
)
from metallmix.data.descriptors import descriptor_features, modality_family, parse_modality, parse_task, task_type
from metallmix.errors import ConfigError, DataError, SchemaError
from metallmix.formatting import format_flops
from metallmix.metadataset import load_meta_dataset
from metallmix.metadataset.medmnistplus import BUILTIN_MEDMNISTPLUS, import_medmnistplus
from metallmix.metadataset.schema import row_config
from metallmix.metalearner import MetaLearner, portfolio_scores
from metallmix.recommend import Recommender
from metallmix.schemas import validate

FAST = {"n_estimators": 30, "max_depth": 3, "n_ensemble": 2}
SOURCE = BUILTIN_MEDMNISTPLUS


@pytest.fixture(scope="module")
def kb() -> pd.DataFrame:
    return load_meta_dataset("medmnistplus:builtin")


@pytest.fixture(scope="module")
def results() -> pd.DataFrame:
    return pd.read_csv(SOURCE / "results.csv")


# ------------------------------------------------------------------ importer
def test_shipped_folder_imports_every_outcome(kb: pd.DataFrame, results: pd.DataFrame) -> None:
    assert len(kb) == len(results) == 1080
    assert kb["dataset_id"].nunique() == 9 and (kb.groupby("dataset_id").size() == 120).all()
    assert set(kb["status"]) == {"ok"} and kb["cost_seconds"].isna().all()
    row = kb.set_index("run_id").loc["retinamnist:linear_probing:densenet121:224"]
    source = results[(results.dataset == "retinamnist") & (results.scheme == "linear_probing")
                     & (results.model == "densenet121") & (results.resolution == 224)].iloc[0]
    assert row["accuracy"] == pytest.approx(source["acc_mean"] / 100)
    metrics = json.loads(row["metrics_json"])
    assert metrics["accuracy_std"] == pytest.approx(source["acc_std"] / 100)
    assert metrics["auc"] == pytest.approx(source["auc_mean"] / 100) and metrics["n_seeds"] == 3
    config = row_config(row)
    assert (config["model"], config["scheme"], config["resolution"]) == ("densenet121", "linear_probing", 224)
    assert config["optimizer"] == "adamw" and config["lr"] == 1e-4 and config["early_stopping_patience"] == 5
    knn = row_config(kb.set_index("run_id").loc["retinamnist:knn:densenet121:224"])
    assert knn["knn_k"] == 11 and "optimizer" not in knn
    assert (kb["mf_resolution"] == kb["cfg_resolution"]).all()


def test_meta_features_of_the_rows(kb: pd.DataFrame) -> None:
    by_dataset = kb.groupby("dataset_id").first()
    breast, organ = by_dataset.loc["breastmnist"], by_dataset.loc["organamnist"]
    assert (breast["mf_n_train"], breast["mf_n_val"], breast["mf_n_test"], breast["mf_n_classes"]) == (546, 78, 156, 2)
    assert breast["mf_modality_ultrasound"] == 1 and breast["mf_modality_ct"] == 0 and breast["mf_task_binary"] == 1
    assert organ["mf_modality_ct"] == 1 and organ["mf_task_multi_class"] == 1 and organ["modality"] == "abdominal ct (axial)"
    assert by_dataset.loc["chestmnist", "mf_task_multi_label"] == 1 and by_dataset.loc["retinamnist", "mf_task_ordinal"] == 1
    # class balance only where the labels are at hand (the two MedMNIST files shipped with metallmix)
    known = set(by_dataset.index[by_dataset["mf_imbalance_ratio"].notna()])
    assert known == {"breastmnist", "retinamnist"}
    assert breast["mf_imbalance_ratio"] == pytest.approx(399 / 147)


def test_cost_estimate_ignores_resolution_and_follows_the_documented_model(kb: pd.DataFrame) -> None:
    vgg = kb[(kb["dataset_id"] == "octmnist") & (kb["cfg_model"] == "vgg16")]
    per_scheme = vgg.groupby("cfg_scheme")["cost_flops_estimate"].nunique()
    assert (per_scheme == 1).all()  # padded to 224: same compute at 28, 64, 128 and 224 px
    forward = shipped_forward_flops()["vgg16"]
    n_train, n_val = 97477, 10832
    estimate = vgg.groupby("cfg_scheme")["cost_flops_estimate"].first()
    assert estimate["knn"] == pytest.approx(n_train * forward)
    assert estimate["linear_probing"] == pytest.approx(EXPECTED_EPOCHS * (n_train + n_val) * forward)
    assert estimate["end_to_end"] == pytest.approx(EXPECTED_EPOCHS * (3 * n_train + n_val) * forward)
    assert math.isnan(estimate_training_flops("no_such_model_anywhere", "knn", 10, 10))
    assert format_flops(2.5e15) == "2.5 PFLOP (est.)"


@pytest.mark.parametrize("model", ["alexnet", "resnet18"])
def test_shipped_flop_table_matches_a_recount(model: str) -> None:
    assert count_forward_flops(model) == shipped_forward_flops()[model]


def copy_source(tmp_path: Path) -> Path:
    folder = tmp_path / "mmp"
    shutil.copytree(SOURCE, folder, ignore=shutil.ignore_patterns("*.md", "forward_flops.csv"))
    for path in folder.iterdir():
        path.chmod(0o644)
    return folder


def edit_csv(path: Path, edit) -> None:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows = edit(rows)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def set_cell(row_index: int, column: str, value: str):
    def edit(rows):
        rows[row_index][column] = value
        return rows
    return edit


@pytest.mark.parametrize(("file", "edit", "message"), [
    ("results.csv", lambda rows: [{k: v for k, v in r.items() if k != "acc_mean"} for r in rows],
     "results.csv: header lacks the column(s) ['acc_mean']"),
    ("results.csv", set_cell(4, "scheme", "fine_tuning"), "results.csv line 6, column 'scheme': 'fine_tuning' is not one of"),
    ("results.csv", set_cell(9, "acc_mean", "eighty"), "results.csv line 11, column 'acc_mean': 'eighty' is not a number"),
    ("results.csv", set_cell(0, "acc_mean", "180"), "results.csv line 2, column 'acc_mean': 180 exceeds 100"),
    ("results.csv", set_cell(2, "dataset", "dermamnist"), "results.csv line 4, column 'dataset': 'dermamnist' is not in datasets.csv"),
    ("results.csv", set_cell(1, "resolution", "28"), "repeats line 2"),
    ("datasets.csv", set_cell(0, "n_train", "many"), "datasets.csv line 2, column 'n_train': 'many' is not a number"),
    ("datasets.csv", set_cell(3, "task", "segmentation"), "datasets.csv line 5, column 'task': 'segmentation' is not a known task type"),
])
def test_malformed_folders_are_refused_naming_file_line_and_column(tmp_path, file, edit, message) -> None:
    folder = copy_source(tmp_path)
    edit_csv(folder / file, edit)
    with pytest.raises(SchemaError) as info:
        load_meta_dataset(f"medmnistplus:{folder}")
    assert message in str(info.value)
    assert str(folder / file) in str(info.value)


def test_missing_folder_or_file_says_what_is_needed(tmp_path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        import_medmnistplus(tmp_path / "nowhere")
    folder = copy_source(tmp_path)
    (folder / "datasets.csv").unlink()
    with pytest.raises(DataError, match="lacks \\['datasets.csv'\\]"):
        import_medmnistplus(folder)


def test_a_larger_folder_with_new_datasets_and_models_imports(tmp_path, kb: pd.DataFrame) -> None:
    folder = copy_source(tmp_path)

    def add_dataset(rows):
        extra = dict(rows[0], dataset="bloodlike", modality="blood cell microscopy", task="multi-class",
                     n_channels="3", n_classes="8", n_train="11959", n_val="1712", n_test="3421")
        return rows + [extra]

    def add_results(rows):
        extra = [dict(r, dataset="bloodlike") for r in rows if r["dataset"] == "pathmnist"]
        extra.append(dict(extra[0], model="resnet50", resolution="28"))
        return rows + extra

    edit_csv(folder / "datasets.csv", add_dataset)
    edit_csv(folder / "results.csv", add_results)
    df = load_meta_dataset(f"medmnistplus:{folder}")
    assert df["dataset_id"].nunique() == 10 and len(df) == 1080 + 121
    blood = df[df["dataset_id"] == "bloodlike"]
    assert (blood["mf_modality_microscopy"] == 1).all() and (blood["mf_n_classes"] == 8).all()
    resnet50 = blood[blood["cfg_model"] == "resnet50"]["cost_flops_estimate"].iloc[0]
    assert resnet50 > 0  # a model outside the shipped table is counted on first use
    assert df[df["dataset_id"] != "bloodlike"].reset_index(drop=True).drop(columns="provenance_json").equals(
        kb.reset_index(drop=True).drop(columns="provenance_json"))


# --------------------------------------------------------------- descriptors
@pytest.mark.parametrize(("text", "family"), [
    ("abdominal ct (axial)", "ct"), ("chest x-ray", "xray"), ("retinal oct", "oct"), ("breast ultrasound", "ultrasound"),
    ("fundus photography", "photography"), ("dermatoscopy", "photography"), ("colon pathology", "microscopy"),
    ("blood cell microscopy", "microscopy"), ("brain MRI", "mri"), ("MRI", "mri"), ("xray", "xray"),
    ("doctor's notes", None), ("unknown", None), (None, None), ("photographs of birds", None),
    ("clinical photography", "photography"),
])
def test_modality_families(text, family) -> None:
    assert modality_family(text) == family


def test_descriptor_features_and_their_errors() -> None:
    features = descriptor_features("chest x-ray", "binary-class")
    assert features["modality_xray"] == 1 and features["modality_ct"] == 0 and features["task_binary"] == 1
    assert all(math.isnan(v) for k, v in descriptor_features(None, None).items())
    assert task_type("multi-label, binary-class") == "multi_label" and parse_task("ordinal") == "ordinal"
    with pytest.raises(ConfigError, match="names no known imaging family"):
        parse_modality("gardening")
    with pytest.raises(ConfigError, match="give one of binary, multi_class"):
        parse_task("regression")


# ------------------------------------------------------------ meta-learner
def test_learner_leaves_out_features_set_by_the_config_or_too_sparse(kb: pd.DataFrame) -> None:
    learner = MetaLearner(**FAST).fit(kb)
    assert learner.unused_meta_features_["resolution"].startswith("set by the config")
    assert learner.unused_meta_features_["imbalance_ratio"] == "too sparse: known for 2 of 9 datasets"
    assert "mf_resolution" not in learner.feature_names and "cfg_resolution" in learner.feature_names
    assert "mf_modality_ct" in learner.feature_names


def test_portfolio_weight_one_ranks_by_the_portfolio(kb: pd.DataFrame) -> None:
    train = kb[kb["dataset_id"] != "octmnist"]
    held_out = kb[kb["dataset_id"] == "octmnist"].set_index("run_id")
    candidates = held_out[[c for c in held_out.columns if c.startswith("cfg_")]]
    scores = MetaLearner(**FAST, portfolio_weight=1.0).fit(train).predict({"n_classes": 4}, candidates)["score"]
    best = portfolio_scores(train).iloc[0]["config"]
    assert row_config(candidates.loc[scores.idxmax()]) == best
    assert (best["scheme"], best["resolution"]) == ("end_to_end", 224)


# ----------------------------------------------------------------- evaluate
def test_evaluate_json_names_picks_in_the_knowledge_base_terms(kb: pd.DataFrame, results: pd.DataFrame, tmp_path) -> None:
    out = tmp_path / "lodo.json"
    assert main(["evaluate", "--meta-dataset", "medmnistplus:builtin", "--datasets", "breastmnist,tissuemnist",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [m for m in result["methods"] if m.startswith("random_")] == ["random_1", "random_3", "random_10", "random_30"]
    assert {"portfolio", "cost_aware"} <= set(result["methods"])
    table = results.set_index(["dataset", "model", "scheme", "resolution"])["acc_mean"]
    for entry in result["datasets"]:
        for pick in (entry, entry["portfolio"], entry["cost_aware"]):
            config = pick["picked_config"]
            recorded = table[(entry["dataset"], config["model"], config["scheme"], config["resolution"])]
            assert pick["accuracy"] == pytest.approx(recorded / 100)
            assert pick["picked_config_id"] == f"{entry['dataset']}:{config['scheme']}:{config['model']}:{config['resolution']}"
            assert pick["cost_flops_estimate"] > 0 and pick["cost_seconds"] is None
        assert (entry["portfolio"]["picked_config"]["model"], entry["portfolio"]["picked_config"]["scheme"]) == ("vgg16", "end_to_end")
        cost_aware = entry["cost_aware"]
        assert cost_aware["cost"] <= cost_aware["budget"] == pytest.approx(0.1 * entry["portfolio"]["cost_flops_estimate"])
        assert 0 <= cost_aware["oracle_regret"] <= cost_aware["normalized_regret"]
    assert result["summary"]["cost_aware"]["median_cost_ratio_to_portfolio"] <= 0.1


# ---------------------------------------------------------------- recommend
@pytest.mark.parametrize("name", ["breastmnist", "retinamnist"])
def test_medmnist_files_are_answered_from_the_medical_knowledge_base(name, tmp_path, capsys) -> None:
    path = Path(__file__).resolve().parents[1] / "metallmix" / "data" / "builtin" / "medmnist" / f"{name}.npz"
    assert main(["recommend", "--dataset", str(path), "--json", "--cache-dir", str(tmp_path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    validate(doc)
    assert doc["meta_dataset"]["spec"] == "medmnistplus:builtin"
    assert doc["meta_dataset"]["selection"]["default"] is True
    assert "medical" in doc["meta_dataset"]["selection"]["reason"]
    assert not [w for w in doc["warnings"] if any(f in w for f in ("n_classes", "resolution =", "channels"))
                and "outside" in w]
    assert doc["meta_features"]["outside_training_range"] == []
    assert {"n_classes", "channels", "n_train"} <= set(doc["meta_features"]["used"])
    assert doc["config"]["resolution"] == 28  # the file's images are 28 px: never upsampled
    assert doc["constraints"]["excluded_by"]["max_resolution"] == 90
    assert doc["predicted"]["train_seconds"] is None and doc["predicted"]["compute_flops_estimate"] > 0


def test_compute_budget_and_time_budget_on_the_medical_knowledge_base(kb: pd.DataFrame) -> None:
    recommender = Recommender(metalearner_params=FAST).fit(kb, spec="medmnistplus:builtin")
    query = {"n_train": 5000, "n_val": 600, "n_test": 600, "n_classes": 2, "channels": 1, "resolution": 224,
             "modality": "chest x-ray", "task": "binary"}
    free = recommender.recommend(query)
    budget = free["predicted"]["compute_flops_estimate"] / 20
    cheap = recommender.recommend(query, {"budget_flops": budget})
    assert all(item["predicted"]["compute_flops_estimate"] <= budget for item in cheap["shortlist"])
    assert cheap["constraints"]["excluded_by"]["budget_flops"] > 0
    assert free["meta_features"]["values"]["modality_xray"] == 1
    with pytest.raises(ConfigError, match="give a compute budget instead"):
        recommender.recommend(query, {"budget_minutes": 30})
    with pytest.raises(ConfigError, match="relax budget_flops"):
        recommender.recommend(query, {"budget_flops": 1.0})


@pytest.mark.parametrize(("text", "expected"), [
    ("30min", ("minutes", 30.0)), ("2h", ("minutes", 120.0)), ("90s", ("minutes", 1.5)),
    ("5PFLOP", ("flops", 5e15)), ("800tflop", ("flops", 8e14)), ("3e15FLOP", ("flops", 3e15)),
])
def test_budget_argument(text, expected) -> None:
    kind, value = _budget(text)
    assert kind == expected[0] and value == pytest.approx(expected[1])


def test_bad_budget_and_modality_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["recommend", "--dataset", "breastmnist", "--budget", "lots"])
    assert info.value.code == 2 and "expected a time" in capsys.readouterr().err
    assert main(["recommend", "--meta-features", '{"n_classes": 3}', "--modality", "gardening"]) == 2
    assert "names no known imaging family" in capsys.readouterr().err


def test_forward_flops_of_every_shipped_model_are_plausible() -> None:
    table = shipped_forward_flops()
    assert len(table) == 10 and all(1e9 < flops < 1e11 for flops in table.values())
    assert table["alexnet"] < table["resnet18"] < table["densenet121"] < table["vgg16"] < table["vit_base_patch16_224"]
    assert np.isclose(table["vit_base_patch16_224"], table["vit_base_patch16_clip_224"])
