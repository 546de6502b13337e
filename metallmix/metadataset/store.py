"""Where meta-datasets live on disk: an append-only store of runs, and the spec strings that name one.

A store is a folder::

    STORE/
      runs/<run_id>.parquet     one file per finished run, written atomically (temp file + rename)
      metadataset.parquet       all runs in one file, rebuilt atomically by ``consolidate()``
      manifest.json             how the meta-dataset was made (command, config, hardware, date, sha)

Writing a run twice with the same run_id replaces the file with identical content, so a resumed
sweep can never duplicate a row; a crash mid-write leaves only a temp file that readers ignore.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from metallmix.errors import SchemaError
from metallmix.metadataset.schema import STATUS_OK, validate_rows

CONSOLIDATED_NAME = "metadataset.parquet"
# The Quick-Tune runs shipped with metallmix (BSD-3-Clause; see its SOURCE.md): `quicktune:builtin`.
BUILTIN_QUICKTUNE = Path(__file__).resolve().parent.parent / "data" / "builtin" / "quicktune-metaalbum-extended"
DEFAULT_META_DATASET = "quicktune:builtin"
MANIFEST_NAME = "manifest.json"


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(temporary path)`` on a sibling file, then rename it over ``path``: readers never
    see half a file, and a crash leaves the previous file intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_parquet(df: pd.DataFrame, path: str | Path) -> None:
    atomic_write(Path(path), lambda tmp: df.to_parquet(tmp, index=False))


def atomic_write_json(obj: Any, path: str | Path) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True, default=str)
            fh.write("\n")

    atomic_write(Path(path), write)


class MetaDatasetStore:
    """An append-only, crash-safe folder of runs (see the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.runs_dir = self.root / "runs"

    def write_run(self, row: dict[str, Any]) -> Path:
        df = validate_rows(pd.DataFrame([row]), source=f"run {row.get('run_id')!r}")
        path = self.runs_dir / f"{row['run_id']}.parquet"
        atomic_write_parquet(df, path)
        return path

    def run_ids(self) -> set[str]:
        if not self.runs_dir.is_dir():
            return set()
        return {p.stem for p in self.runs_dir.glob("*.parquet")}

    def finished_run_ids(self, include_failed: bool = True) -> set[str]:
        """Run ids that a resumed sweep skips: every recorded run, or only the ok ones."""
        if include_failed:
            return self.run_ids()
        df = self.read()
        return set(df.loc[df["status"] == STATUS_OK, "run_id"])

    def read(self) -> pd.DataFrame:
        """Every recorded run, one row each, sorted by run_id."""
        files = sorted(self.runs_dir.glob("*.parquet")) if self.runs_dir.is_dir() else []
        if not files:
            consolidated = self.root / CONSOLIDATED_NAME
            if consolidated.exists():
                return read_parquet(consolidated)
            return pd.DataFrame()
        df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        return validate_rows(df.sort_values("run_id", ignore_index=True), source=str(self.root))

    def consolidate(self) -> Path:
        """Write all runs into one Parquet file, atomically; returns its path."""
        df = self.read()
        path = self.root / CONSOLIDATED_NAME
        atomic_write_parquet(df, path)
        return path

    def write_manifest(self, manifest: dict[str, Any]) -> Path:
        path = self.root / MANIFEST_NAME
        atomic_write_json(manifest, path)
        return path


def read_parquet(path: str | Path) -> pd.DataFrame:
    return validate_rows(pd.read_parquet(path), source=str(path))


def load_meta_dataset(spec: str | Path) -> pd.DataFrame:
    """Open a meta-dataset named by its spec string.

    - ``PATH.parquet``: a consolidated meta-dataset file;
    - ``DIR``: a metallmix store (its runs, or its metadataset.parquet);
    - ``quicktune:DIR``: a folder in the Quick-Tune format (table.csv, curves/, meta/), imported;
      ``quicktune:builtin`` is the copy shipped with metallmix (3,198 runs on 18 Meta-Album datasets);
    - ``medmnistplus:DIR``: a folder in the MedMNIST+ benchmark's format (datasets.csv, results.csv),
      imported; ``medmnistplus:builtin`` is the copy shipped with metallmix (1,080 outcomes on 9
      medical datasets);
    - ``qtt:DIR``: a Quick-Tune tool portfolio folder (config.csv, curve.csv, cost.csv, meta.csv),
      imported; ``qtt:builtin`` is the copy shipped with metallmix (MedQuickTune: 505 runs of 3D CNNs on
      6 MRI/CT tasks, scored by validation ROC AUC).
    """
    spec = str(spec)
    # The importers are imported on use: each spec needs only its own.
    if spec.startswith("quicktune:"):
        from metallmix.metadataset.quicktune import import_quicktune

        folder = spec[len("quicktune:"):]
        return import_quicktune(BUILTIN_QUICKTUNE if folder == "builtin" else folder)
    if spec.startswith("medmnistplus:"):
        from metallmix.metadataset.medmnistplus import BUILTIN_MEDMNISTPLUS, import_medmnistplus

        folder = spec[len("medmnistplus:"):]
        return import_medmnistplus(BUILTIN_MEDMNISTPLUS if folder == "builtin" else folder)
    if spec.startswith("qtt:"):
        from metallmix.metadataset.qtt import BUILTIN_MEDQUICKTUNE, import_qtt

        folder = spec[len("qtt:"):]
        return import_qtt(BUILTIN_MEDQUICKTUNE if folder == "builtin" else folder)
    path = Path(spec)
    if path.is_file():
        return read_parquet(path)
    if path.is_dir():
        df = MetaDatasetStore(path).read()
        if df.empty:
            raise SchemaError(f"meta-dataset folder {spec} holds no runs (no runs/*.parquet, no {CONSOLIDATED_NAME})")
        return df
    raise SchemaError(
        f"meta-dataset {spec!r} not found; give a .parquet file, a metallmix store folder, "
        "quicktune:DIR for a Quick-Tune folder, medmnistplus:DIR for a MedMNIST+ folder or qtt:DIR for a Quick-Tune "
        "tool portfolio folder (builtin for the shipped copies)"
    )
