"""Import a Quick-Tune tool (quicktunetool) portfolio, MedQuickTune's 3D MRI/CT runs, into metallmix's schema.

A portfolio folder holds four CSV files that list the same runs in the same order, each row starting
with the run's index (see the SOURCE.md shipped beside the built-in copy)::

    config.csv   dataset, then one column per hyperparameter (an empty cell: the setting does not
                 apply to that run's model, e.g. densenet_type for a ResNet)
    curve.csv    columns 0, 1, 2, ...: the validation score per epoch, in %
    cost.csv     cost: the run's total cost in seconds
    meta.csv     dataset, num_classes, input_channels, input_size_h/w/d (voxels), modality, total_num_samples

Each run becomes one row, ``run_id`` "<dataset>:<index>" (``crlm:183``):

- config: config.csv's columns except ``dataset``, empty cells left out (null: a column empty on every
  run, such as MedQuickTune's model_type, adds none); a column is numeric when all its cells are
  numbers, boolean when all are True/False, else text;
- accuracy: best epoch / 100. In MedQuickTune that score is the **validation ROC AUC** the source
  optimised (its configured target metric; mean over 5 inner cross-validation folds), not an
  accuracy: metallmix's ``accuracy`` column is "the score configs are ranked by", and metrics_json
  says which score it is (``metric``) and keeps ``final_accuracy`` (the last epoch / 100), which
  metallmix.evaluate reads;
- cost_seconds: cost.csv's value. The source records only a run's total, so curve_json's per-epoch
  ``seconds`` spread it evenly over the run's epochs (an even split, not a measurement);
- meta-features: ``n_images`` (total_num_samples), ``n_classes``, ``channels`` (input_channels),
  ``resolution`` (the in-plane size: the larger of input_size_h and input_size_w; 256 for all six
  tasks), ``depth`` (input_size_d, the slices per volume) and the 0/1 modality and task features of
  metallmix.data.descriptors ("MRI" and "CT" are its mri and ct families; the task is binary for 2
  classes, else multi-class: the format knows single-label classification only); the ``modality``
  column keeps meta.csv's text. MedQuickTune's meta.csv gives total_num_samples = 1500 for every
  dataset, apparently its portfolio writer's default: n_images tells these six datasets nothing apart.

Curves, read off the shipped data: every curve has 25 cells. The portfolio writer pads a shorter curve
with zeros (or leaves the cells empty), so trailing 0 / empty cells are padding, never scores (an
averaged ROC AUC of exactly 0 would need every fold's ranking perfectly inverted). 168 of 505 curves are
all zero: runs whose metrics were not found. Desmoid's 73 scored curves hold 21 epochs, every other
scored curve 25. Curves of early-stopped runs end in a run of identical values (the writer pads each
stopped fold with its last value); those epochs are kept as recorded: they leave the best epoch
unchanged, and no per-epoch time says where training stopped. Status rule:

- ``failed``: no score after the padding is removed (an all-zero curve), or an epoch whose value is not
  finite; the error says which. accuracy is null and curve_json empty (n_epochs 0); cost_seconds keeps
  the recorded cost (failed runs cost seconds to hours);
- ``ok``: the curve has the full length of its dataset (the longest scored curve recorded for it: 21
  for desmoid, 25 elsewhere);
- ``truncated``: a shorter scored curve (none in MedQuickTune): its best epoch is a real, lower-bound score.

The reading follows the format; the labels follow MedQuickTune, the one portfolio metallmix ships:
every row gets search space ``medquicktune`` and the metric note above. A portfolio from another
source reads as well, but its score and space are then MedQuickTune's only by name.

A malformed folder is refused with a message naming the file, line and column to fix.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from metallmix.data.descriptors import descriptor_features
from metallmix.errors import DataError, SchemaError
from metallmix.metadataset.quicktune import ROUNDING_TOLERANCE
from metallmix.metadataset.schema import (
    CFG_PREFIX,
    MF_PREFIX,
    SCHEMA_VERSION,
    STATUS_FAILED,
    STATUS_OK,
    STATUS_TRUNCATED,
    canonical_json,
    validate_rows,
)

SEARCH_SPACE = "medquicktune"
DATASET_KIND = "external"
SOURCE = ("MedQuickTune portfolio runs (github.com/AnonymousMedQuickTune/AnonymousMedQuickTune, "
          "experiments/Portfolio; MIT, copyright 2024 Diane Wagner)")
BUILTIN_MEDQUICKTUNE = Path(__file__).resolve().parent.parent / "data" / "builtin" / "medquicktune"
METRIC = "validation ROC AUC (the source's % / 100), mean over 5 inner cross-validation folds"
COST_NOTE = "cost.csv: the run's total seconds; curve_json spreads them evenly over its epochs"

CONFIG_FILE, CURVE_FILE, COST_FILE, META_FILE = "config.csv", "curve.csv", "cost.csv", "meta.csv"
FILES = (CONFIG_FILE, CURVE_FILE, COST_FILE, META_FILE)
DATASET_COLUMN = "dataset"
COST_COLUMN = "cost"
META_COLUMNS = ("dataset", "num_classes", "input_channels", "input_size_h", "input_size_w", "input_size_d",
                "modality", "total_num_samples")
BOOLEANS = {"True": True, "False": False}
ID_SEPARATOR = ":"


def import_qtt(folder: str | Path) -> pd.DataFrame:
    """Read a portfolio folder into a schema-valid meta-dataset frame (one row per run)."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"Quick-Tune portfolio folder {root} does not exist; give the folder holding {list(FILES)}")
    missing = [name for name in FILES if not (root / name).is_file()]
    if missing:
        raise DataError(f"Quick-Tune portfolio folder {root} lacks {missing}; it needs {list(FILES)}")
    configs = _read(root / CONFIG_FILE, (DATASET_COLUMN,))
    curves = _read(root / CURVE_FILE, ())
    costs = _read(root / COST_FILE, (COST_COLUMN,))
    metas = _read(root / META_FILE, META_COLUMNS)
    _check_unique_runs(configs)
    for table in (curves, costs, metas):
        _check_same_runs(configs, table)
    _check_epoch_columns(curves)

    runs = []
    for config, setting, curve, cost, meta in zip(configs.rows, _settings(configs), curves.rows, costs.rows,
                                                  metas.rows, strict=True):
        dataset = config.cells[DATASET_COLUMN].strip()
        if not dataset:
            raise SchemaError(f"{configs.path} line {config.line}, column 'dataset': the dataset name is empty")
        if meta.cells[DATASET_COLUMN].strip() != dataset:
            raise SchemaError(f"{metas.path} line {meta.line}, column 'dataset': {meta.cells[DATASET_COLUMN]!r} "
                              f"differs from {dataset!r} in {configs.path} line {config.line}; a run has one dataset")
        scores, error = _scores(curves.path, curve, curves.columns)
        runs.append({
            "dataset": dataset, "index": config.index, "config": setting, "scores": scores, "error": error,
            "cost": _number(costs.path, cost.line, COST_COLUMN, cost.cells[COST_COLUMN], minimum=0),
            "modality": meta.cells["modality"].strip() or "unknown",
            "meta_features": _meta_features(metas.path, meta),
        })
    full_length: dict[str, int] = {}
    for run in runs:
        full_length[run["dataset"]] = max(full_length.get(run["dataset"], 0), len(run["scores"]))
    provenance = {"source": SOURCE, "folder": str(root.resolve()), "importer": "metallmix.metadataset.qtt",
                  "accuracy": METRIC, "cost": COST_NOTE}
    rows = [_run_row(run, full_length[run["dataset"]], provenance) for run in runs]
    return validate_rows(pd.DataFrame(rows), source=f"Quick-Tune portfolio folder {root}")


# ------------------------------------------------------------------ reading
class _Row(NamedTuple):
    line: int
    index: str
    cells: dict[str, str]


class _Table(NamedTuple):
    path: Path
    columns: list[str]
    rows: list[_Row]


def _read(path: Path, required: tuple[str, ...]) -> _Table:
    """A portfolio CSV file: its columns after the index column, and its rows with their line numbers."""
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header:
            raise SchemaError(f"{path} is empty; it needs a header line (the index column, then the columns)")
        columns = [name.strip() for name in header[1:]]
        absent = [c for c in required if c not in columns]
        if absent:
            raise SchemaError(f"{path} line 1: the header lacks the column(s) {absent}; it needs {list(required)}")
        repeated = sorted({c for c in columns if columns.count(c) > 1})
        if repeated:
            raise SchemaError(f"{path} line 1: the column(s) {repeated} appear more than once in the header")
        rows = []
        for cells in reader:
            if len(cells) != len(header):
                raise SchemaError(f"{path} line {reader.line_num}: {len(cells)} cells where the header has "
                                  f"{len(header)}; every row needs the run index and one cell per column")
            rows.append(_Row(reader.line_num, cells[0].strip(), dict(zip(columns, cells[1:], strict=True))))
    if not rows:
        raise SchemaError(f"{path} holds no runs under its header")
    return _Table(path, columns, rows)


def _check_unique_runs(table: _Table) -> None:
    seen: dict[str, int] = {}
    for row in table.rows:
        if not row.index:
            raise SchemaError(f"{table.path} line {row.line}, index column: the run index is empty")
        if row.index in seen:
            raise SchemaError(f"{table.path} line {row.line}, index column: run {row.index!r} repeats line "
                              f"{seen[row.index]}; each run index appears once")
        seen[row.index] = row.line


def _check_same_runs(reference: _Table, table: _Table) -> None:
    """``table`` lists the runs of ``reference`` (config.csv), in the same order."""
    for row, other in zip(reference.rows, table.rows):
        if row.index != other.index:
            raise SchemaError(f"{table.path} line {other.line}, index column: run {other.index!r} where "
                              f"{reference.path} line {row.line} has run {row.index!r}; the four files must list "
                              "the same runs in the same order")
    if len(table.rows) != len(reference.rows):
        longer = table if len(table.rows) > len(reference.rows) else reference
        extra = longer.rows[min(len(table.rows), len(reference.rows))]
        raise SchemaError(f"{table.path} holds {len(table.rows)} runs and {reference.path} {len(reference.rows)}: "
                          f"{longer.path} line {extra.line} (run {extra.index!r}) has no counterpart; the four "
                          "files must list the same runs")


def _check_epoch_columns(curves: _Table) -> None:
    for epoch, column in enumerate(curves.columns):
        if column != str(epoch):
            raise SchemaError(f"{curves.path} line 1, column {column!r}: expected epoch {epoch}; the columns of "
                              f"{CURVE_FILE} are the epochs 0, 1, 2, ... in order")
    if not curves.columns:
        raise SchemaError(f"{curves.path} line 1: the header has no epoch columns (0, 1, 2, ...)")


def _number(path: Path, line: int, column: str, text: str, *, integer: bool = False, minimum: float = 0) -> float:
    value = text.strip()
    if not value:
        raise SchemaError(f"{path} line {line}, column {column!r}: the value is empty; give a number")
    try:
        number = float(value)
    except ValueError:
        raise SchemaError(f"{path} line {line}, column {column!r}: {value!r} is not a number") from None
    if not math.isfinite(number) or (integer and number != int(number)) or number < minimum:
        kind = "a whole number" if integer else "a finite number"
        raise SchemaError(f"{path} line {line}, column {column!r}: {value!r} is not {kind} >= {minimum:g}")
    return number


def _settings(configs: _Table) -> list[dict[str, Any]]:
    """Each run's config: config.csv's cells except the dataset, typed per column, empty cells left out."""
    kinds = {}
    for column in configs.columns:
        if column == DATASET_COLUMN:
            continue
        texts = [row.cells[column].strip() for row in configs.rows if row.cells[column].strip()]
        kinds[column] = "bool" if texts and all(t in BOOLEANS for t in texts) else \
            "number" if all(_is_number(t) for t in texts) else "text"
    out = []
    for row in configs.rows:
        setting: dict[str, Any] = {}
        for column, kind in kinds.items():
            text = row.cells[column].strip()
            if text:
                setting[column] = BOOLEANS[text] if kind == "bool" else _as_number(text) if kind == "number" else text
        out.append(setting)
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _as_number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def _scores(path: Path, row: _Row, epochs: list[str]) -> tuple[list[float], str | None]:
    """A run's scores in % per epoch without the trailing padding, and why the run failed (or None)."""
    values: list[float | None] = []  # None: an empty cell
    for column in epochs:
        text = row.cells[column].strip()
        if not text:
            values.append(None)
            continue
        try:
            value = float(text)
        except ValueError:
            raise SchemaError(f"{path} line {row.line}, column {column!r}: {text!r} is not a number "
                              "(a score in %, or empty)") from None
        if math.isfinite(value) and not 0 <= value <= 100 + ROUNDING_TOLERANCE:
            raise SchemaError(f"{path} line {row.line}, column {column!r}: {value:g} lies outside 0-100 "
                              "(scores are percentages)")
        values.append(value)
    while values and values[-1] in (None, 0.0):
        values.pop()
    if not values:
        return [], (f"no score recorded: all {len(epochs)} epochs of {CURVE_FILE} are 0 or empty, "
                    "the portfolio's mark of a run whose metrics were not found")
    for epoch, value in enumerate(values):
        if value is None or not math.isfinite(value):
            return [], f"epoch {epoch} of {CURVE_FILE} holds no finite score ({row.cells[epochs[epoch]].strip()!r})"
    return values, None


def _meta_features(path: Path, row: _Row) -> dict[str, float]:
    def whole(column: str, minimum: float) -> float:
        return _number(path, row.line, column, row.cells[column], integer=True, minimum=minimum)

    n_classes = whole("num_classes", 2)
    mf = {
        "n_images": whole("total_num_samples", 1),
        "n_classes": n_classes,
        "channels": whole("input_channels", 1),
        "resolution": max(whole("input_size_h", 1), whole("input_size_w", 1)),
        "depth": whole("input_size_d", 1),
        **descriptor_features(row.cells["modality"], "binary" if n_classes == 2 else "multi-class"),
    }
    return {name: float(value) for name, value in mf.items()}


# ------------------------------------------------------------------ rows
def _run_row(run: dict[str, Any], full_length: int, provenance: dict[str, Any]) -> dict[str, Any]:
    scores, cost = run["scores"], run["cost"]
    if run["error"]:
        status = STATUS_FAILED
    else:
        status = STATUS_OK if len(scores) >= full_length else STATUS_TRUNCATED
    best = max(scores) if scores else None
    metrics = {
        "metric": METRIC,
        "final_accuracy": min(scores[-1] / 100.0, 1.0) if scores else None,
        "best_epoch": scores.index(best) + 1 if scores else None,
        "full_length_epochs": full_length,
    }
    row: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run_id": ID_SEPARATOR.join((run["dataset"], run["index"])),
        "dataset_id": run["dataset"],
        "dataset_kind": DATASET_KIND,
        "dataset_parent": None,
        "modality": run["modality"],
        "search_space": SEARCH_SPACE,
        "seed": 0,
        "status": status,
        "error": run["error"],
        "accuracy": None if best is None else min(best / 100.0, 1.0),  # 100.0000001 % is float rounding
        "cost_seconds": cost,
        "n_epochs": len(scores),
        "curve_json": canonical_json([{"epoch": epoch + 1, "val_accuracy": value / 100.0,
                                       "seconds": cost / len(scores)} for epoch, value in enumerate(scores)]),
        "metrics_json": canonical_json(metrics),
        "provenance_json": canonical_json(provenance),
    }
    for name, value in run["meta_features"].items():
        row[MF_PREFIX + name] = value
    for name, value in run["config"].items():
        row[CFG_PREFIX + name] = value
    return row
