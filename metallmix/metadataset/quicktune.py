"""Import the Quick-Tune meta-dataset (Arango et al., ICLR 2024) into metallmix's schema.

A Quick-Tune folder holds::

    table.csv               one row per configuration id: one-hot ``cat:<name>:<value>`` columns and
                            numeric hyperparameter columns
    curves/perf.json        {dataset: {config id: [top-1 validation accuracy in % per epoch]}}
                            (may also hold a non-dataset key "info" describing the file)
    curves/cost.json        {dataset: {config id: [seconds per epoch]}}
    meta/descriptors.json   {dataset: [n_samples, n_classes, resolution, channels]}

Each curve becomes one run row: accuracy = best epoch / 100, cost_seconds = sum of its epoch
seconds, n_epochs = curve length. Status rule, read off the data (every dataset's complete runs
have 50 epochs; a third of the runs stopped after their first epoch, mostly at chance accuracy and
within seconds; 424 of the other 511 short runs stopped after more than 80% of the ~16 h budget):

- ``ok``: the curve has the full length of its dataset (the longest curve recorded for it);
- ``failed``: the curve holds no finite value, or the run stopped after its first epoch in less
  than ``FAILED_COST_FRACTION`` of the time budget (the longest total cost of any run): it crashed or
  diverged at once. Its recorded accuracy is kept where finite (replays score it as it was);
- ``truncated``: every other shorter curve (stopped by the budget or early): its best epoch is a
  real, lower-bound accuracy.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metallmix.errors import DataError, SchemaError
from metallmix.metadataset.schema import (
    CFG_PREFIX,
    MF_PREFIX,
    SCHEMA_VERSION,
    STATUS_FAILED,
    STATUS_OK,
    STATUS_TRUNCATED,
    canonical_json,
    config_columns,
    validate_rows,
)

SEARCH_SPACE = "quicktune-extended"
DATASET_KIND = "external"
SOURCE = "Quick-Tune meta-dataset (Arango et al., ICLR 2024), github.com/rapanti/quicktune, BSD-3-Clause"
CATEGORICAL_PREFIX = "cat:"
DESCRIPTOR_NAMES = ("n_images", "n_classes", "resolution", "channels")
NON_DATASET_KEYS = frozenset({"info"})
FAILED_COST_FRACTION = 0.1
ROUNDING_TOLERANCE = 1e-6

_REQUIRED_FILES = ("table.csv", "curves/perf.json", "curves/cost.json", "meta/descriptors.json")


def import_quicktune(folder: str | Path) -> pd.DataFrame:
    """Read a Quick-Tune folder into a schema-valid meta-dataset frame (one row per recorded curve)."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"Quick-Tune folder {root} does not exist; give the folder holding table.csv, curves/ and meta/")
    missing = [name for name in _REQUIRED_FILES if not (root / name).is_file()]
    if missing:
        raise DataError(f"Quick-Tune folder {root} lacks {missing}; it needs {list(_REQUIRED_FILES)}")

    configs = _read_config_table(root / "table.csv")
    perf = _dataset_entries(_read_json(root / "curves/perf.json"), "curves/perf.json")
    cost = _dataset_entries(_read_json(root / "curves/cost.json"), "curves/cost.json")
    descriptors = _read_json(root / "meta/descriptors.json")
    if not perf:
        raise DataError(f"{root / 'curves/perf.json'} holds no dataset curves")

    budget = max((sum(c) for runs in cost.values() for c in runs.values() if _all_finite(c)), default=0.0)
    provenance = {"source": SOURCE, "folder": str(root.resolve()), "importer": "metallmix.metadataset.quicktune"}
    rows: list[dict[str, Any]] = []
    for dataset_id in sorted(perf):
        meta_features = _meta_features(dataset_id, descriptors)
        curves = perf[dataset_id]
        costs = cost.get(dataset_id)
        if costs is None:
            raise SchemaError(f"curves/cost.json has no entry for dataset {dataset_id!r} that curves/perf.json names")
        unknown = sorted(set(curves) - set(configs.index))
        if unknown:
            raise SchemaError(
                f"curves/perf.json names {len(unknown)} configurations of {dataset_id!r} missing from table.csv "
                f"(first {unknown[0]!r}); the table must hold every configuration the curves refer to"
            )
        full_length = max(len(c) for c in curves.values())
        for config_id in sorted(curves):
            curve = [float(v) if v is not None else math.nan for v in curves[config_id]]
            if config_id not in costs or len(costs[config_id]) != len(curve):
                raise SchemaError(
                    f"curves/cost.json lacks a curve of {len(curve)} epochs for configuration {config_id!r} "
                    f"of {dataset_id!r}; perf and cost curves must match"
                )
            seconds = [float(v) if v is not None else math.nan for v in costs[config_id]]
            rows.append(
                _run_row(dataset_id, config_id, curve, seconds, full_length, budget,
                         meta_features, configs.loc[config_id], provenance)
            )
    return validate_rows(pd.DataFrame(rows), source=f"Quick-Tune folder {root}")


def _read_json(path: Path) -> Any:
    try:
        with open(path) as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); restore the original file") from exc


def _dataset_entries(raw: Any, name: str) -> dict[str, dict[str, list]]:
    """The dataset entries of a curves file; descriptive keys such as "info" are skipped."""
    if not isinstance(raw, dict):
        raise SchemaError(f"{name} must hold a JSON object {{dataset: {{config id: [values per epoch]}}}}")
    out = {}
    for key, value in raw.items():
        if key in NON_DATASET_KEYS:
            continue
        if not isinstance(value, dict) or not all(isinstance(c, list) for c in value.values()):
            raise SchemaError(f"{name}: entry {key!r} is not {{config id: [values per epoch]}}")
        out[key] = value
    return out


def _read_config_table(path: Path) -> pd.DataFrame:
    """table.csv with its one-hot groups folded back: one column per hyperparameter, indexed by config id."""
    table = pd.read_csv(path, dtype={0: str})
    table = table.rename(columns={table.columns[0]: "config_id"}).set_index("config_id")
    if table.index.duplicated().any():
        raise SchemaError(f"{path}: configuration id {table.index[table.index.duplicated()][0]!r} appears twice")
    folded: dict[str, pd.Series] = {}
    groups: dict[str, list[str]] = {}
    for column in table.columns:
        if column.startswith(CATEGORICAL_PREFIX):
            parts = column.split(":", 2)
            if len(parts) != 3:
                raise SchemaError(f"{path}: column {column!r} is not of the form cat:<name>:<value>")
            groups.setdefault(parts[1], []).append(column)
        else:
            values = pd.to_numeric(table[column], errors="coerce")
            if values.isna().any():
                raise SchemaError(f"{path}: column {column!r} has missing or non-numeric values")
            folded[column] = values.astype(float)
    for name, columns in groups.items():
        onehot = table[columns].to_numpy(dtype=float)
        if not np.all(onehot.sum(axis=1) == 1):
            bad = table.index[onehot.sum(axis=1) != 1][0]
            raise SchemaError(f"{path}: one-hot group {name!r} does not have exactly one 1 in configuration {bad!r}")
        labels = np.array([c.split(":", 2)[2] for c in columns], dtype=object)
        folded[name] = pd.Series(labels[onehot.argmax(axis=1)], index=table.index)
    return pd.DataFrame(folded, index=table.index)


def _meta_features(dataset_id: str, descriptors: dict) -> dict[str, float]:
    if dataset_id not in descriptors:
        raise SchemaError(f"meta/descriptors.json has no entry for dataset {dataset_id!r}")
    values = descriptors[dataset_id]
    if not isinstance(values, list) or len(values) != len(DESCRIPTOR_NAMES):
        raise SchemaError(f"meta/descriptors.json: {dataset_id!r} must be [n_samples, n_classes, resolution, channels]")
    mf = {name: float(v) for name, v in zip(DESCRIPTOR_NAMES, values)}
    mf["class_size_mean"] = mf["n_images"] / mf["n_classes"]
    return mf


def _all_finite(values: list[float]) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def _run_row(
    dataset_id: str,
    config_id: str,
    curve: list[float],
    seconds: list[float],
    full_length: int,
    budget: float,
    meta_features: dict[str, float],
    config: pd.Series,
    provenance: dict[str, Any],
) -> dict[str, Any]:
    finite = [v for v in curve if math.isfinite(v)]
    accuracy = max(finite) / 100.0 if finite else None
    if accuracy is not None and not -ROUNDING_TOLERANCE <= accuracy <= 1 + ROUNDING_TOLERANCE:
        raise DataError(f"{dataset_id!r} configuration {config_id!r} has accuracy {max(finite)}%, outside 0-100%")
    if accuracy is not None:
        accuracy = min(max(accuracy, 0.0), 1.0)  # 100.0000004% from float rounding in the source
    total_seconds = float(np.nansum(seconds)) if seconds else 0.0
    error = None
    if accuracy is None:
        status, error = STATUS_FAILED, "no finite accuracy in the recorded curve"
    elif len(curve) >= full_length:
        status = STATUS_OK
    elif len(curve) <= 1 and total_seconds < FAILED_COST_FRACTION * budget:
        status = STATUS_FAILED
        error = f"stopped after its first epoch, {total_seconds:.0f} s into a {budget:.0f} s budget"
    else:
        status = STATUS_TRUNCATED
    row: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run_id": config_id,
        "dataset_id": dataset_id,
        "dataset_kind": DATASET_KIND,
        "dataset_parent": None,
        "modality": "unknown",
        "search_space": SEARCH_SPACE,
        "seed": 0,
        "status": status,
        "error": error,
        "accuracy": accuracy,
        "cost_seconds": total_seconds,
        "n_epochs": len(curve),
        "curve_json": canonical_json(
            [{"epoch": i + 1, "val_accuracy": a / 100.0 if math.isfinite(a) else None,
              "seconds": s if math.isfinite(s) else None} for i, (a, s) in enumerate(zip(curve, seconds))]
        ),
        "metrics_json": canonical_json({"final_accuracy": curve[-1] / 100.0 if curve and math.isfinite(curve[-1]) else None,
                                        "full_length_epochs": full_length}),
        "provenance_json": canonical_json(provenance),
    }
    for name, value in meta_features.items():
        row[MF_PREFIX + name] = value
    for name, value in config.items():
        row[CFG_PREFIX + name] = value
    return row


def infer_search_space(df: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per cfg_ column of a meta-dataset: {"type": "categorical", "values": [...]} or
    {"type": "numeric", "min", "max", "values": distinct values (when at most 50)}."""
    space: dict[str, dict[str, Any]] = {}
    for column in config_columns(df):
        values = df[column].dropna()
        name = column[len(CFG_PREFIX):]
        if values.empty:
            continue
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            distinct = sorted(float(v) for v in values.unique())
            entry: dict[str, Any] = {"type": "numeric", "min": distinct[0], "max": distinct[-1]}
            if len(distinct) <= 50:
                entry["values"] = distinct
            space[name] = entry
        else:
            space[name] = {"type": "categorical", "values": sorted(str(v) for v in values.unique())}
    return space
