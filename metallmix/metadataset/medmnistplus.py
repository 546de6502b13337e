"""Import the MedMNIST+ benchmark (Doerrich et al., Scientific Reports 2025) into metallmix's schema.

A MedMNIST+ folder holds two CSV files (see the SOURCE.md shipped beside the built-in copy)::

    datasets.csv   dataset, modality, view, task, n_channels, n_classes, n_train, n_val, n_test, license
    results.csv    dataset, scheme, model, resolution, acc_mean, acc_std, auc_mean, auc_std

One results row (a dataset x scheme x model x resolution, test metrics as the mean over three seeds)
becomes one run row:

- config: ``model``, ``scheme`` (end_to_end | linear_probing | knn) and ``resolution`` with the
  benchmark's own names and values, plus the settings every run of the benchmark shared, recorded as
  such (``FIXED_SETTINGS``; k-NN runs record ``knn_k`` instead, as they train nothing);
- accuracy: acc_mean / 100 (test accuracy, mean over 3 seeds); metrics_json keeps its seed std and the
  AUC with its std (fractions) -- the spread is information a robust pick can use;
- cost: no training time was published, so cost_seconds is empty and ``cost_flops_estimate`` holds the
  estimate of metallmix.compute_cost (FLOPs, a model, not a measurement);
- meta-features: the dataset's split sizes, classes, channels, the image side the run trained at
  (``resolution``: MedMNIST+ gives each dataset at 28, 64, 128 and 224 px), the 0/1 modality and task
  features of metallmix.data.descriptors and, where the dataset's labels are at hand (the MedMNIST
  files shipped with metallmix), its class balance; NaN elsewhere.

Every row is ``ok``: the benchmark published no failed run. A malformed folder is refused with a
message naming the file, line and column to fix.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metallmix.compute_cost import ESTIMATE_NOTE, SCHEMES, estimate_training_flops
from metallmix.data.descriptors import descriptor_features, task_type
from metallmix.data.medmnist import BUILTIN_DIR
from metallmix.data.metafeatures import class_statistics
from metallmix.errors import DataError, SchemaError
from metallmix.metadataset.schema import (
    CFG_PREFIX,
    MF_PREFIX,
    SCHEMA_VERSION,
    STATUS_OK,
    canonical_json,
    validate_rows,
)

SEARCH_SPACE = "medmnistplus"
DATASET_KIND = "external"
SOURCE = ("MedMNIST+ benchmark (Doerrich et al., Scientific Reports 2025; "
          "github.com/sdoerrich97/rethinking-model-prototyping-MedMNISTPlus, Apache-2.0)")
BUILTIN_MEDMNISTPLUS = Path(__file__).resolve().parent.parent / "data" / "builtin" / "medmnistplus"
DATASET_COLUMNS = ("dataset", "modality", "task", "n_channels", "n_classes", "n_train", "n_val", "n_test")  # + view, license
RESULT_COLUMNS = ("dataset", "scheme", "model", "resolution", "acc_mean", "acc_std", "auc_mean", "auc_std")
# What every trained run of the benchmark shared (its config.yaml and train.py).
FIXED_SETTINGS: dict[str, Any] = {
    "optimizer": "adamw", "lr": 1e-4, "scheduler": "cosine", "batch_size": 64, "max_epochs": 100,
    "early_stopping_patience": 5, "pad_to": 224, "weights": "imagenet",
}
KNN_SETTINGS: dict[str, Any] = {"knn_k": 11, "pad_to": 224, "weights": "imagenet"}
SEEDS = (9930641, 115149041, 252139603)
ID_SEPARATOR = ":"
# Label-only features of metallmix.data.metafeatures, computed where the dataset's labels are at hand.
CLASS_BALANCE_FEATURES = ("class_size_min", "class_size_max", "class_size_std", "imbalance_ratio",
                          "class_entropy", "normalized_class_entropy", "minority_fraction")


def import_medmnistplus(folder: str | Path, labels_root: str | Path | None = None) -> pd.DataFrame:
    """Read a MedMNIST+ folder into a schema-valid meta-dataset frame (one row per results.csv row).

    Args:
        folder: holds datasets.csv and results.csv.
        labels_root: a folder of MedMNIST ``<dataset>.npz`` files whose training labels give the class
            balance of those datasets (default: the files shipped with metallmix).
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"MedMNIST+ folder {root} does not exist; give the folder holding datasets.csv and results.csv")
    missing = [name for name in ("datasets.csv", "results.csv") if not (root / name).is_file()]
    if missing:
        raise DataError(f"MedMNIST+ folder {root} lacks {missing}; it needs datasets.csv and results.csv")
    datasets = _read_datasets(root / "datasets.csv")
    results = _read_results(root / "results.csv", datasets)
    balance = _class_balance(datasets, Path(labels_root) if labels_root else None)
    provenance = {"source": SOURCE, "folder": str(root.resolve()), "importer": "metallmix.metadataset.medmnistplus",
                  "accuracy": "test accuracy, mean over the benchmark's 3 seeds", "cost": ESTIMATE_NOTE}
    rows = [_run_row(result, datasets[result["dataset"]], balance.get(result["dataset"], {}), provenance)
            for result in results]
    return validate_rows(pd.DataFrame(rows), source=f"MedMNIST+ folder {root}")


def source_config(config: dict[str, Any]) -> dict[str, Any]:
    """The benchmark's own description of a config: model, scheme and resolution as in results.csv."""
    return {key: config[key] for key in ("model", "scheme", "resolution")}


# ------------------------------------------------------------------ reading
def _rows(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV file whose header holds ``required``."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        absent = [c for c in required if c not in header]
        if absent:
            raise SchemaError(f"{path}: header lacks the column(s) {absent}; it needs {list(required)}")
        rows = [(reader.line_num, row) for row in reader]
    if not rows:
        raise SchemaError(f"{path} holds no rows under its header")
    return rows


def _number(path: Path, line: int, column: str, text: str | None, *, integer: bool = False,
            optional: bool = False, minimum: float | None = None) -> float:
    value = (text or "").strip()
    if not value:
        if optional:
            return math.nan
        raise SchemaError(f"{path} line {line}, column {column!r}: the value is empty; give a number")
    try:
        number = float(value)
    except ValueError:
        raise SchemaError(f"{path} line {line}, column {column!r}: {value!r} is not a number") from None
    if not math.isfinite(number) or (integer and number != int(number)) or (minimum is not None and number < minimum):
        kind = "a whole number" if integer else "a finite number"
        bound = f" >= {minimum:g}" if minimum is not None else ""
        raise SchemaError(f"{path} line {line}, column {column!r}: {value!r} is not {kind}{bound}")
    return number


def _read_datasets(path: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for line, row in _rows(path, DATASET_COLUMNS):
        name = (row["dataset"] or "").strip()
        if not name:
            raise SchemaError(f"{path} line {line}, column 'dataset': the dataset name is empty")
        if name in out:
            raise SchemaError(f"{path} line {line}, column 'dataset': {name!r} is listed twice")
        task = (row["task"] or "").strip()
        if task_type(task) is None:
            raise SchemaError(f"{path} line {line}, column 'task': {task!r} is not a known task type "
                              "(binary-class, multi-class, multi-label, ordinal-regression)")
        facts = {column: _number(path, line, column, row[column], integer=True, minimum=minimum)
                 for column, minimum in (("n_channels", 1), ("n_classes", 2), ("n_train", 1), ("n_val", 0), ("n_test", 0))}
        modality = (row["modality"] or "").strip()
        view = (row.get("view") or "").strip()
        out[name] = {"name": name, "task": task, "modality": f"{modality} ({view})" if view else modality or "unknown",
                     **facts}
    return out


def _read_results(path: Path, datasets: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out, seen = [], {}
    for line, row in _rows(path, RESULT_COLUMNS):
        dataset = (row["dataset"] or "").strip()
        if dataset not in datasets:
            raise SchemaError(f"{path} line {line}, column 'dataset': {dataset!r} is not in datasets.csv "
                              f"(it lists {sorted(datasets)}); add its facts there or remove its results")
        scheme = (row["scheme"] or "").strip()
        if scheme not in SCHEMES:
            raise SchemaError(f"{path} line {line}, column 'scheme': {scheme!r} is not one of {list(SCHEMES)}")
        model = (row["model"] or "").strip()
        if not model:
            raise SchemaError(f"{path} line {line}, column 'model': the model name is empty")
        result = {
            "dataset": dataset, "scheme": scheme, "model": model,
            "resolution": int(_number(path, line, "resolution", row["resolution"], integer=True, minimum=1)),
            "line": line,
        }
        for column in ("acc_mean", "acc_std", "auc_mean", "auc_std"):
            value = _number(path, line, column, row[column], optional=column != "acc_mean", minimum=0)
            if value > 100:
                raise SchemaError(f"{path} line {line}, column {column!r}: {value:g} exceeds 100 (values are percentages)")
            result[column] = value
        key = (dataset, scheme, model, result["resolution"])
        if key in seen:
            raise SchemaError(f"{path} line {line}: {dataset} / {scheme} / {model} / {result['resolution']} "
                              f"repeats line {seen[key]}; each combination appears once")
        seen[key] = line
        out.append(result)
    return out


def _class_balance(datasets: dict[str, dict[str, Any]], labels_root: Path | None) -> dict[str, dict[str, float]]:
    """Class-balance meta-features of the datasets whose MedMNIST training labels are at hand."""
    folder = labels_root or BUILTIN_DIR
    out = {}
    for name, facts in datasets.items():
        path = folder / f"{name}.npz"
        if not path.is_file():
            continue
        with np.load(path, allow_pickle=False) as npz:
            labels = np.asarray(npz["train_labels"])
        if labels.ndim != 2 or labels.shape[1] != 1 or len(labels) != facts["n_train"]:
            continue  # multi-label, or not the same split: the published facts would disagree
        statistics = class_statistics(labels[:, 0].astype(np.int64), int(facts["n_classes"]))
        out[name] = {k: float(statistics[k]) for k in CLASS_BALANCE_FEATURES}
    return out


# ------------------------------------------------------------------ rows
def _meta_features(facts: dict[str, Any], resolution: int, balance: dict[str, float]) -> dict[str, float]:
    mf = {
        "n_images": facts["n_train"] + facts["n_val"] + facts["n_test"],
        "n_train": facts["n_train"], "n_val": facts["n_val"], "n_test": facts["n_test"],
        "n_classes": facts["n_classes"], "channels": facts["n_channels"], "resolution": float(resolution),
        "class_size_mean": facts["n_train"] / facts["n_classes"],
        **{name: balance.get(name, math.nan) for name in CLASS_BALANCE_FEATURES},
        **descriptor_features(facts["modality"], facts["task"]),
    }
    return {name: float(value) for name, value in mf.items()}


def _config(result: dict[str, Any]) -> dict[str, Any]:
    settings = KNN_SETTINGS if result["scheme"] == "knn" else FIXED_SETTINGS
    return {"model": result["model"], "scheme": result["scheme"], "resolution": result["resolution"], **settings}


def run_id(dataset: str, config: dict[str, Any]) -> str:
    """The readable id of a MedMNIST+ run: dataset:scheme:model:resolution."""
    return ID_SEPARATOR.join((dataset, config["scheme"], config["model"], str(config["resolution"])))


def _fraction(percent: float) -> float | None:
    return None if math.isnan(percent) else percent / 100.0


def _run_row(result: dict[str, Any], facts: dict[str, Any], balance: dict[str, float],
             provenance: dict[str, Any]) -> dict[str, Any]:
    config = _config(result)
    metrics = {
        "accuracy_std": _fraction(result["acc_std"]),
        "auc": _fraction(result["auc_mean"]),
        "auc_std": _fraction(result["auc_std"]),
        "n_seeds": 1 if result["scheme"] == "knn" else len(SEEDS),
        "seeds": list(SEEDS),
        "task": facts["task"],
        "source_line": result["line"],
    }
    row: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id(result["dataset"], config),
        "dataset_id": result["dataset"],
        "dataset_kind": DATASET_KIND,
        "dataset_parent": None,
        "modality": facts["modality"],
        "search_space": SEARCH_SPACE,
        "seed": 0,
        "status": STATUS_OK,
        "error": None,
        "accuracy": result["acc_mean"] / 100.0,
        "cost_seconds": None,
        "cost_flops_estimate": estimate_training_flops(result["model"], result["scheme"], facts["n_train"], facts["n_val"]),
        "n_epochs": 0,
        "curve_json": "[]",
        "metrics_json": canonical_json(metrics),
        "provenance_json": canonical_json(provenance),
    }
    for name, value in _meta_features(facts, result["resolution"], balance).items():
        row[MF_PREFIX + name] = value
    for name, value in config.items():
        row[CFG_PREFIX + name] = value
    return row
