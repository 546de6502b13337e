"""The one meta-dataset schema shared by every search space and every source of runs.

A meta-dataset is a table with one row per training run:

=====================  ==========  ============================================================
column                 type        meaning
=====================  ==========  ============================================================
schema_version         int         ``SCHEMA_VERSION`` of the writer
run_id                 str         stable key of the run: hash of dataset id, config and seed
dataset_id             str         name of the dataset the run trained on
dataset_kind           str         medmnist | imagefolder | generated | derived | external
dataset_parent         str|null    the real dataset a derived one was made from
modality               str         imaging modality from config ("unknown" when not given)
mf_<name>              float       dataset meta-features (NaN where a source lacks one)
search_space           str         name of the search space the config was drawn from
cfg_<name>             scalar      one column per hyperparameter (null where a space lacks it)
seed                   int         training seed
status                 str         ok | failed | truncated
error                  str|null    error message of a failed run
accuracy               float|null  the score configs are ranked by, in [0, 1] (test accuracy for
                                   metallmix sweeps, best-epoch validation accuracy for imports)
cost_seconds           float|null  training wall time of the run (the cost the recommender predicts)
cost_flops_estimate    float|null  optional column: estimated training compute in FLOP, for sources that
                                   published no training time (metallmix.compute_cost: a model, not a
                                   measurement); an ok row needs cost_seconds or this
n_epochs               int         epochs completed
curve_json             str         JSON list of per-epoch records
metrics_json           str         JSON object of every other metric
provenance_json        str         JSON object: git sha, host, hardware, library versions, time;
                                   a sweep row also the Ray node that ran it (ray_node)
=====================  ==========  ============================================================
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import numpy as np
import pandas as pd

from metallmix.errors import SchemaError

SCHEMA_VERSION = 1

MF_PREFIX = "mf_"
CFG_PREFIX = "cfg_"

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_TRUNCATED = "truncated"
STATUSES = (STATUS_OK, STATUS_FAILED, STATUS_TRUNCATED)

DATASET_KINDS = ("medmnist", "imagefolder", "generated", "derived", "external")

REQUIRED_COLUMNS: dict[str, str] = {
    "schema_version": "int",
    "run_id": "str",
    "dataset_id": "str",
    "dataset_kind": "str",
    "dataset_parent": "str?",
    "modality": "str",
    "search_space": "str",
    "seed": "int",
    "status": "str",
    "error": "str?",
    "accuracy": "float?",
    "cost_seconds": "float?",
    "n_epochs": "int",
    "curve_json": "str",
    "metrics_json": "str",
    "provenance_json": "str",
}


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal objects give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def run_key(dataset_id: str, config: dict[str, Any], seed: int) -> str:
    """The idempotency key of a run: same dataset, config and seed give the same key."""
    payload = canonical_json({"dataset": dataset_id, "config": config, "seed": int(seed)})
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def meta_feature_columns(df: pd.DataFrame) -> list[str]:
    return sorted(c for c in df.columns if c.startswith(MF_PREFIX))


def config_columns(df: pd.DataFrame) -> list[str]:
    return sorted(c for c in df.columns if c.startswith(CFG_PREFIX))


def config_set_meta_features(df: pd.DataFrame) -> list[str]:
    """Meta-features (no prefix) equal to the numeric config column of the same name on every row: they
    describe the run's config, not its dataset (MedMNIST+ records ``resolution``, the image side each
    run trained at, as both)."""
    out = []
    for column in meta_feature_columns(df):
        name = column[len(MF_PREFIX):]
        setting = CFG_PREFIX + name
        if setting in df.columns and pd.api.types.is_numeric_dtype(df[setting]) and \
                np.array_equal(df[column].to_numpy(float), df[setting].to_numpy(float), equal_nan=True):
            out.append(name)
    return out


SIZE_SEPARATOR = "@"


def dataset_family(dataset_id: str, parent: str | None = None) -> str:
    """The real dataset a run's images came from, whatever their size or derivation: the root parent of
    a derived dataset, else the dataset itself, without its "@size" suffix (``breastmnist@64`` ->
    ``breastmnist``; ``breastmnist~n200-s0`` with parent ``breastmnist`` -> ``breastmnist``)."""
    root = parent if isinstance(parent, str) and parent else dataset_id
    return root.split(SIZE_SEPARATOR, 1)[0]


def without_family(df: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """The runs of every dataset outside ``dataset``'s family (itself, its parent, its derived datasets and
    its other sizes): what may inform a zero-shot pick for ``dataset`` without leaking it."""
    parents = df["dataset_parent"] if "dataset_parent" in df else pd.Series(None, index=df.index, dtype=object)
    own = parents[df["dataset_id"] == dataset].dropna()
    family = dataset_family(dataset, own.iloc[0] if len(own) else None)
    families = [dataset_family(d, p if isinstance(p, str) else None) for d, p in zip(df["dataset_id"], parents)]
    return df[[f != family for f in families]]


def row_config(row: pd.Series | dict) -> dict[str, Any]:
    """The config dict of one row: its non-null cfg_ columns, prefix removed."""
    items = row.items() if isinstance(row, dict) else row.to_dict().items()
    out = {}
    for key, value in items:
        if key.startswith(CFG_PREFIX) and not _is_null(value):
            out[key[len(CFG_PREFIX):]] = value.item() if hasattr(value, "item") else value
    return out


def row_meta_features(row: pd.Series | dict) -> dict[str, float]:
    items = row.items() if isinstance(row, dict) else row.to_dict().items()
    return {k[len(MF_PREFIX):]: float(v) for k, v in items if k.startswith(MF_PREFIX) and not _is_null(v)}


def _is_null(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def make_row(
    *,
    dataset_id: str,
    dataset_kind: str,
    meta_features: dict[str, float],
    config: dict[str, Any],
    seed: int,
    search_space: str,
    status: str,
    accuracy: float | None,
    cost_seconds: float | None,
    n_epochs: int,
    curve: list[dict] | list[float],
    metrics: dict[str, Any],
    provenance: dict[str, Any],
    dataset_parent: str | None = None,
    modality: str = "unknown",
    error: str | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Build one schema-valid row (a flat dict) from its parts."""
    row: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id or run_key(dataset_id, config, seed),
        "dataset_id": dataset_id,
        "dataset_kind": dataset_kind,
        "dataset_parent": dataset_parent,
        "modality": modality or "unknown",
        "search_space": search_space,
        "seed": int(seed),
        "status": status,
        "error": error,
        "accuracy": None if accuracy is None else float(accuracy),
        "cost_seconds": None if cost_seconds is None else float(cost_seconds),
        "n_epochs": int(n_epochs),
        "curve_json": canonical_json(curve),
        "metrics_json": canonical_json(metrics),
        "provenance_json": canonical_json(provenance),
    }
    for name, value in meta_features.items():
        row[MF_PREFIX + name] = float(value)
    for name, value in config.items():
        row[CFG_PREFIX + name] = value
    validate_rows(pd.DataFrame([row]))
    return row


_DTYPES = {"int": "int64", "str": "string", "str?": "string", "float?": "float64"}
COST_ESTIMATE_COLUMN = "cost_flops_estimate"


def validate_rows(df: pd.DataFrame, source: str = "meta-dataset") -> pd.DataFrame:
    """Check a meta-dataset table against the schema; raise SchemaError saying what to fix.

    Returns the table with the schema's columns in their canonical dtypes (so that tables read
    from different files compare and concatenate alike).
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise SchemaError(f"{source} lacks the columns {missing}; a metallmix meta-dataset needs {list(REQUIRED_COLUMNS)}")
    if not meta_feature_columns(df):
        raise SchemaError(f"{source} has no meta-feature columns (names starting with {MF_PREFIX!r})")
    if not config_columns(df):
        raise SchemaError(f"{source} has no config columns (names starting with {CFG_PREFIX!r})")
    try:
        df = df.astype({c: _DTYPES[t] for c, t in REQUIRED_COLUMNS.items()})
        df = df.astype({c: "float64" for c in meta_feature_columns(df)})
        if COST_ESTIMATE_COLUMN in df.columns:
            df = df.astype({COST_ESTIMATE_COLUMN: "float64"})
    except (TypeError, ValueError) as exc:
        raise SchemaError(f"{source}: a column has values of the wrong type ({exc}); see metallmix.metadataset.schema") from exc
    if len(df) == 0:
        return df
    versions = set(pd.unique(df["schema_version"]))
    unknown = {int(v) for v in versions if int(v) != SCHEMA_VERSION}
    if unknown:
        raise SchemaError(
            f"{source} has schema_version {sorted(unknown)}, this metallmix reads version {SCHEMA_VERSION}; "
            "re-record or convert it with the metallmix version that wrote it"
        )
    bad_status = set(df["status"]) - set(STATUSES)
    if bad_status:
        raise SchemaError(f"{source} has unknown status values {sorted(bad_status)}; allowed: {list(STATUSES)}")
    for col in ("run_id", "dataset_id", "dataset_kind", "search_space", "status"):
        if df[col].isna().any():
            raise SchemaError(f"{source}: column {col!r} has missing values in {int(df[col].isna().sum())} rows")
    ok = df["status"] == STATUS_OK
    no_cost = df["cost_seconds"].isna()
    if COST_ESTIMATE_COLUMN in df.columns:
        no_cost &= df[COST_ESTIMATE_COLUMN].isna()
    for col, missing in (("accuracy", df["accuracy"].isna()), ("cost_seconds", no_cost)):
        nan_ok = ok & missing
        if nan_ok.any():
            raise SchemaError(
                f"{source}: {int(nan_ok.sum())} rows with status 'ok' have no {col!r} "
                f"(first run_id {df.loc[nan_ok, 'run_id'].iloc[0]}); mark them 'failed' or fill the value"
            )
    acc = df.loc[df["accuracy"].notna(), "accuracy"].astype(float)
    if len(acc) and (acc.min() < 0 or acc.max() > 1 or not all(math.isfinite(a) for a in acc)):
        raise SchemaError(f"{source}: accuracy must lie in [0, 1]; found {acc.min()}..{acc.max()} (percentages? divide by 100)")
    dup = df["run_id"].duplicated()
    if dup.any():
        raise SchemaError(f"{source}: run_id {df.loc[dup, 'run_id'].iloc[0]!r} appears twice; run ids must be unique")
    return df
