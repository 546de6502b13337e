"""recommend(): a ranked shortlist of configs for a new dataset, with predictions and evidence.

A ``Recommender`` bundles the three parts fitted on one meta-dataset: the meta-learner (predicted
accuracy +- uncertainty, failure risk, training time, ranking score), the retrieval index (past
datasets most like the new one, with their best runs) and the SHAP explainer of the meta-learner's
accuracy model. ``recommend()`` scores every candidate config (the distinct configs of the
meta-dataset's search space) for the given meta-features, applies the constraints, and returns a
JSON document that follows ``metallmix/schemas/recommendation.schema.json``.

Constraints (all optional):

- ``budget_minutes``: predicted training time (minutes) at most this (knowledge bases with recorded
  training times);
- ``budget_flops``: estimated training compute (FLOP) at most this (knowledge bases that published no
  times and carry a FLOP-count estimate instead, see metallmix.compute_cost);
- ``max_params``: backbone parameter count at most this. The count is read, in this order, from a
  ``cfg_`` column of the meta-dataset (``n_parameters``, ``n_params``, ``param_count``,
  ``num_params``), from the runs' metrics (same keys, as metallmix's trainer records
  ``n_parameters``; median per backbone), or from ``BACKBONE_PARAM_COUNTS`` below. A candidate
  whose count is unknown is kept and listed under ``constraints.unchecked``;
- ``backbones``: allowed backbone names (the config's ``backbone`` or ``model`` key);
- ``max_p_fail``: predicted probability of a failed run at most this ("avoid risky");
- ``max_resolution``: a config's ``resolution`` setting (the image side it trains at) at most this. Set
  from the dataset's own ``resolution`` meta-feature when not given: images are downsampled, never
  upsampled, as in the benchmarks that recorded such configs.

When no candidate meets every constraint, ``recommend`` raises ``InfeasibleConstraintsError`` (a
``ConfigError``) that names the constraint to relax and the closest candidate; it never silently
drops a constraint. A meta-dataset of a single dataset still gives an answer, flagged
``degraded: true`` with a warning saying why.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import metallmix
from metallmix.compute_cost import flops_per_image
from metallmix.formatting import cost_text
from metallmix.data.descriptors import descriptor_features, modality_family, parse_modality, parse_task
from metallmix.errors import ConfigError, DataError, DatasetNotFoundError, SchemaError
from metallmix.explain import LOG10_SUFFIX, ShapExplainer
from metallmix.metadataset.schema import (
    CFG_PREFIX,
    COST_ESTIMATE_COLUMN,
    MF_PREFIX,
    meta_feature_columns,
    row_config,
    validate_rows,
)
from metallmix.metalearner import PREDICTION_COLUMNS, MetaLearner, candidate_configs, default_params
from metallmix.retrieval import RetrievalIndex, normalise_meta_features

SCHEMA_VERSION = 1
FORMAT_VERSION = 2
MANIFEST_FILE = "manifest.json"
CANDIDATES_FILE = "candidates.parquet"
BACKBONE_KEYS = ("backbone", "model", "arch")
PARAM_COUNT_KEYS = ("n_parameters", "n_params", "param_count", "num_params")
CONSTRAINT_NAMES = ("budget_minutes", "budget_flops", "max_params", "backbones", "max_p_fail", "max_resolution")
RESOLUTION_SETTING = "resolution"
USUAL_SETTINGS = ("scheme", "resolution", "lr", "batch_size", "opt", "optimizer", "epochs", "weight_decay")
N_CONTRASTS = 2  # the pick is contrasted with this many runners-up

# Valid ranges of metallmix's meta-features (metallmix.data.metafeatures documents each); a value
# outside is a mistake in the input, not an unusual dataset. Names not listed only need to be finite.
META_FEATURE_DOMAINS: dict[str, tuple[float, float]] = {
    "n_classes": (2, math.inf),
    "resolution": (1, math.inf),
    "channels": (1, 4),
    "imbalance_ratio": (1, math.inf),
    "class_entropy": (0, math.inf),
    "normalized_class_entropy": (0, 1),
    "minority_fraction": (0, 1),
    "pixel_mean": (0, 1),
    "pixel_std": (0, 1),
    "contrast_mean": (0, 1),
    "gradient_mean": (0, math.inf),
    "edge_density": (0, 1),
    "high_freq_energy": (0, 1),
    "colorfulness": (0, math.inf),
    "channel_correlation": (-1, 1),
    "centroid_accuracy": (0, 1),
}
DOMAIN_TOLERANCE = 1e-9
# Larger magnitudes are refused: no dataset's counts, sizes or ratios come near, and the meta-learner
# (XGBoost, float32: at most ~3.4e38) would read 1e308 as infinity.
MAX_META_FEATURE_VALUE = 1e12

# How a knowledge base prices a config: recorded training times (the recommender learns to predict
# them), a FLOP-count estimate (computed for the new dataset's sizes, metallmix.compute_cost), or nothing.
COST_KIND_SECONDS, COST_KIND_FLOPS, COST_KIND_NONE = "seconds", "flops_estimate", "none"
COST_DESCRIPTIONS = {
    COST_KIND_SECONDS: "training time predicted from the recorded runs' wall times",
    COST_KIND_FLOPS: "training compute in FLOP, an estimate from a FLOP count of each model (the knowledge base "
                     "published no training time; see metallmix.compute_cost)",
    COST_KIND_NONE: "no cost: the knowledge base records neither training times nor a compute estimate",
}
# Categorical meta-features a request may give as text (expanded by metallmix.data.descriptors).
DESCRIPTOR_KEYS = {"modality": parse_modality, "task": parse_task}

# Parameter counts (with the 1000-class ImageNet head) of the backbones that metallmix sweeps and
# the Quick-Tune meta-dataset use, for meta-datasets that do not record them: the param_count column
# (millions) of timm's results/results-imagenet.csv (huggingface/pytorch-image-models), for the same
# architectures (torchvision's mobilenet_v3_small = timm tf_mobilenetv3_small_100, resnet18 =
# resnet18.tv_in1k, and so on).
BACKBONE_PARAM_COUNTS: dict[str, float] = {
    # torchvision / efficientnet-lite
    "resnet18": 11.69e6,
    "resnet34": 21.80e6,
    "resnet50": 25.56e6,
    "mobilenet_v2": 3.50e6,
    "mobilenet_v3_small": 2.54e6,
    "mobilenet_v3_large": 5.48e6,
    "efficientnet_b0": 5.29e6,
    "efficientnet_lite0": 4.65e6,
    "densenet121": 7.98e6,
    "convnext_tiny": 28.59e6,
    # timm models of the Quick-Tune meta-dataset
    "beit_base_patch16_384": 86.74e6,
    "beit_large_patch16_512": 305.67e6,
    "convnext_small_384_in22ft1k": 50.22e6,
    "deit3_small_patch16_384_in21ft1k": 22.21e6,
    "dla46x_c": 1.07e6,
    "edgenext_small": 5.59e6,
    "edgenext_x_small": 2.34e6,
    "edgenext_xx_small": 1.33e6,
    "mobilevit_xs": 2.32e6,
    "mobilevit_xxs": 1.27e6,
    "mobilevitv2_075": 2.87e6,
    "swinv2_base_window12to24_192to384_22kft1k": 87.92e6,
    "tf_efficientnet_b4_ns": 19.34e6,
    "tf_efficientnet_b6_ns": 43.04e6,
    "tf_efficientnet_b7_ns": 66.35e6,
    "volo_d1_384": 26.78e6,
    "volo_d3_448": 86.63e6,
    "volo_d4_448": 193.41e6,
    "volo_d5_448": 295.91e6,
    "volo_d5_512": 296.09e6,
    "xcit_nano_12_p8_384_dist": 3.05e6,
    "xcit_small_12_p8_384_dist": 26.21e6,
    "xcit_tiny_12_p8_384_dist": 6.71e6,
    "xcit_tiny_24_p8_384_dist": 12.11e6,
    # models of the MedMNIST+ benchmark (timm 1.0.31 defaults, counted on the meta device; alexnet is
    # torchvision's; eva02 with its 512-d CLIP projection, dino and samvit without a classifier)
    "vgg16": 138.36e6,
    "alexnet": 61.10e6,
    "efficientnet_b4": 19.34e6,
    "vit_base_patch16_224": 86.57e6,
    "vit_base_patch16_clip_224": 86.57e6,
    "eva02_base_patch16_clip_224": 86.26e6,
    "vit_base_patch16_224.dino": 85.80e6,
    "samvit_base_patch16": 89.67e6,
}


class InfeasibleConstraintsError(ConfigError):
    """No candidate config meets every constraint; ``closest`` is the candidate nearest to meeting them."""

    def __init__(self, message: str, closest: dict[str, Any]):
        super().__init__(message)
        self.closest = closest


@dataclass(frozen=True)
class Constraints:
    """What the recommended config must satisfy (None: no constraint)."""

    budget_minutes: float | None = None
    max_params: float | None = None
    backbones: tuple[str, ...] | None = None
    max_p_fail: float | None = None
    budget_flops: float | None = None
    max_resolution: float | None = None

    def __post_init__(self) -> None:
        for name in ("budget_minutes", "max_params", "budget_flops", "max_resolution"):
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or not value > 0):
                raise ConfigError(f"constraint {name} must be a positive number, got {value!r}")
        if self.max_p_fail is not None and (not _is_number(self.max_p_fail) or not 0 <= self.max_p_fail <= 1):
            raise ConfigError(f"constraint max_p_fail must be a probability in [0, 1], got {self.max_p_fail!r}")
        if self.backbones is not None:
            if isinstance(self.backbones, str) or not all(isinstance(b, str) and b for b in self.backbones) or not self.backbones:
                raise ConfigError(f"constraint backbones must be a non-empty list of backbone names, got {self.backbones!r}")
            object.__setattr__(self, "backbones", tuple(self.backbones))

    @classmethod
    def from_any(cls, value: Constraints | dict[str, Any] | None) -> Constraints:
        if value is None:
            return cls()
        if isinstance(value, Constraints):
            return value
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(CONSTRAINT_NAMES))
            if unknown:
                raise ConfigError(f"unknown constraint(s) {unknown}; known: {list(CONSTRAINT_NAMES)}")
            return cls(**value)
        raise ConfigError(f"constraints must be a Constraints, a dict or None, got {type(value).__name__}")

    def requested(self) -> dict[str, Any]:
        out = asdict(self)
        out["backbones"] = list(self.backbones) if self.backbones is not None else None
        return out


@dataclass
class _Feasibility:
    mask: np.ndarray
    applied: list[str]
    excluded_by: dict[str, int]
    violations: dict[str, np.ndarray] = field(default_factory=dict)
    unchecked: list[dict[str, Any]] = field(default_factory=list)


class Recommender:
    """Meta-learner + retrieval index + SHAP explainer, fitted on one meta-dataset.

    Args:
        metalearner_params: keyword arguments of ``MetaLearner`` (None: ``metalearner.default_params``,
            the settings chosen for the knowledge base's search space).
        n_neighbours: how many similar past datasets a recommendation lists.
        n_top_configs: how many best configs each neighbour carries.
        shap_top_k: how many of the shortlisted configs get a SHAP explanation (the first ones;
            ~12 ms each on one core).
        shap_top_features: features listed per SHAP explanation.
        max_background: rows of fitting data kept as the SHAP background.
        random_state: seed of the background sample.
    """

    def __init__(
        self,
        *,
        metalearner_params: dict[str, Any] | None = None,
        n_neighbours: int = 5,
        n_top_configs: int = 3,
        shap_top_k: int = 3,
        shap_top_features: int = 5,
        max_background: int = 300,
        random_state: int = 0,
    ):
        self.metalearner_params = metalearner_params
        self.n_neighbours = n_neighbours
        self.n_top_configs = n_top_configs
        self.shap_top_k = shap_top_k
        self.shap_top_features = shap_top_features
        self.max_background = max_background
        self.random_state = random_state

    # ------------------------------------------------------------------ fit
    def fit(self, df: pd.DataFrame, spec: str | None = None) -> Recommender:
        """Fit the three parts on a meta-dataset table (``spec`` only names it in the output)."""
        validate_rows(df)
        if len(df) == 0:
            raise SchemaError("the meta-dataset is empty; record some runs first")
        params = default_params(df) if self.metalearner_params is None else self.metalearner_params
        self.metalearner_ = MetaLearner(**params).fit(df)
        self.index_ = RetrievalIndex(n_top_configs=self.n_top_configs).fit(df)
        self.explainer_ = ShapExplainer(
            self.metalearner_.accuracy_model,
            list(self.metalearner_.feature_names),
            self._background(df),
            max_background=self.max_background,
            random_state=self.random_state,
        )
        self.explainer_.global_importance()  # computed once here, saved with the explainer
        candidates = candidate_configs(df).reset_index(drop=True)
        self.backbone_key_ = next((k for k in BACKBONE_KEYS if CFG_PREFIX + k in candidates.columns), None)
        self.candidates_ = _with_param_counts(candidates, df, self.backbone_key_)
        self.cost_kind_ = _cost_kind(df)
        self._prepare_candidates()
        self.feature_domain_ = _feature_domain(df)
        self.meta_dataset_ = {
            "spec": spec,
            "n_runs": int(len(df)),
            "n_datasets": int(df["dataset_id"].nunique()),
            "content_hash": content_hash(df),
        }
        return self

    def _background(self, df: pd.DataFrame) -> pd.DataFrame:
        """Rows of the accuracy model's input built from the fitting runs (a seeded sample)."""
        runs = df[df["accuracy"].notna()]
        if len(runs) > self.max_background:
            runs = runs.sample(n=self.max_background, random_state=self.random_state)
        return self.metalearner_.feature_frame_from_rows(runs).reset_index(drop=True)

    def _prepare_candidates(self) -> None:
        """Per-candidate arrays that every query reuses (configs, backbones, parameter counts, model input)."""
        cfg_cols = [c for c in self.candidates_.columns if c.startswith(CFG_PREFIX)]
        self._cfg_frame = self.candidates_[cfg_cols]
        self._ids = self.candidates_["candidate_id"].astype(str).to_numpy()
        self._configs = [row_config(row) for row in self._cfg_frame.to_dict("records")]
        key = self.backbone_key_
        self._backbones = np.array([None if key is None else _text_or_none(c.get(key)) for c in self._configs], dtype=object)
        self._params = self.candidates_["param_count"].to_numpy(dtype=float)
        self._param_sources = self.candidates_["param_count_source"].astype(str).to_numpy()
        # the accuracy model's input for every candidate, its mf_ columns filled per query
        self._candidate_features = self.metalearner_.feature_frame({}, self._cfg_frame)
        self._resolutions = np.array([_number_or_nan(c.get(RESOLUTION_SETTING)) for c in self._configs])
        # the compute estimate of a candidate is per_train x n_train + per_val x n_val (metallmix.compute_cost)
        coefficients = [flops_per_image(c["model"], c["scheme"]) if self.cost_kind_ == COST_KIND_FLOPS else (np.nan, np.nan)
                        for c in self._configs]
        self._flops_per_image = np.array(coefficients, dtype=float).reshape(len(self._configs), 2)

    def explained_rows(self, meta_features: dict[str, float], positions: list[int]) -> pd.DataFrame:
        """The accuracy model's input (``MetaLearner.feature_frame``) for the candidates at ``positions``."""
        rows = self._candidate_features.iloc[positions].copy()
        for column in rows.columns:
            if column.startswith(MF_PREFIX):
                rows[column] = float(meta_features.get(column[len(MF_PREFIX):], np.nan))
        return rows.reset_index(drop=True)

    def _check_fitted(self) -> None:
        if not hasattr(self, "metalearner_"):
            raise ConfigError("this Recommender is not fitted yet; call fit(df) or Recommender.load(folder) first")

    # ------------------------------------------------------------ recommend
    def recommend(
        self,
        meta_features: dict[str, float],
        constraints: Constraints | dict[str, Any] | None = None,
        top_k: int = 5,
        *,
        ignored_features: list[str] | None = None,
    ) -> dict[str, Any]:
        """The recommendation document for a dataset with these meta-features (see the module doc)."""
        self._check_fitted()
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ConfigError(f"top_k must be a positive integer, got {top_k!r}")
        constraints = Constraints.from_any(constraints)
        features, feature_report = self.check_meta_features(meta_features)
        feature_report["ignored"] = sorted(ignored_features or [])

        if constraints.max_resolution is None and "resolution" in features and not np.isnan(self._resolutions).all():
            constraints = replace(constraints, max_resolution=features["resolution"])
        frame = self.metalearner_.predict(features, self._cfg_frame)
        pred = {column: frame[column].to_numpy(dtype=float) for column in PREDICTION_COLUMNS}
        pred["compute_flops"] = self._flops_per_image @ np.array([features.get("n_train", np.nan), features.get("n_val", np.nan)])
        feasibility = self._feasibility(pred, constraints)
        if not feasibility.mask.any():
            raise self._infeasible_error(pred, feasibility)

        feasible = np.flatnonzero(feasibility.mask)
        ranked = feasible[np.lexsort((self._ids[feasible], -pred["score"][feasible]))]  # score desc, then id
        shortlist = [int(i) for i in ranked[:top_k]]
        front = [int(feasible[i]) for i in pareto_front(pred["pred_accuracy"][feasible], self._cost(pred)[feasible], self._ids[feasible])]
        front_set = set(front)
        explanations = self.explainer_.explain(
            self.explained_rows(features, shortlist[: self.shap_top_k]), top_n=self.shap_top_features
        )
        neighbours = [
            {key: hit[key] for key in ("dataset_id", "distance", "meta_features", "top_configs")}
            for hit in self.index_.query(features, k=self.n_neighbours)
        ]
        items = [self._item(rank, i, pred, front_set) for rank, i in enumerate(shortlist, start=1)]
        shap_evidence = [{"candidate_id": item["candidate_id"], **expl} for item, expl in zip(items[: len(explanations)], explanations, strict=True)]
        contrasts = [self._contrast(features, shortlist[0], rival, rank)
                     for rank, rival in enumerate(shortlist[1:N_CONTRASTS + 1], start=2)]
        warnings, degraded = self._warnings(feature_report, feasibility)
        best = items[0]
        document = {
            "schema_version": SCHEMA_VERSION,
            "candidate_id": best["candidate_id"],
            "config": best["config"],
            "backbone": best["backbone"],
            "param_count": best["param_count"],
            "predicted": best["predicted"],
            "score": best["score"],
            "explanation": "",
            "explanation_source": "template",
            "evidence": {
                "shap": shap_evidence,
                "contrast": contrasts,
                "neighbours": neighbours,
                "global_importance": self.explainer_.global_importance()[:10],
            },
            "shortlist": items,
            "pareto_front": [
                {
                    "candidate_id": str(self._ids[i]),
                    "config": dict(self._configs[i]),
                    "backbone": self._backbones[i],
                    "accuracy": _clip01(pred["pred_accuracy"][i]),
                    "train_seconds": _nonnegative_or_none(pred["pred_cost_seconds"][i]),
                    "compute_flops_estimate": _nonnegative_or_none(pred["compute_flops"][i]),
                }
                for i in front
            ],
            "constraints": {
                "requested": constraints.requested(),
                "applied": feasibility.applied,
                "unchecked": feasibility.unchecked,
                "n_candidates": int(len(self._ids)),
                "n_feasible": int(feasibility.mask.sum()),
                "excluded_by": feasibility.excluded_by,
            },
            "meta_features": feature_report,
            "meta_dataset": {**self.meta_dataset_, "cost": COST_DESCRIPTIONS[self.cost_kind_]},
            "degraded": degraded,
            "warnings": warnings,
        }
        document["explanation"] = template_explanation(document)
        return document

    def save_waterfall_plot(self, document: dict[str, Any], path: str | Path) -> Path:
        """A SHAP waterfall PNG of the predicted accuracy of ``document``'s pick (a recommend() answer)."""
        position = int(np.flatnonzero(self._ids == document["candidate_id"])[0])
        row = self.explained_rows(document["meta_features"]["values"], [position])
        label = ", ".join(f"{k}={_short(v)}" for k, v in document["config"].items() if k in (self.backbone_key_, *USUAL_SETTINGS))
        return self.explainer_.save_waterfall_plot(row, path, title=f"Why {label or document['candidate_id']}: SHAP of predicted accuracy (points)")

    def _contrast(self, features: dict[str, float], pick: int, rival: int, rival_rank: int) -> dict[str, Any]:
        """Why candidate ``pick`` is predicted above (or below) ``rival`` (``ShapExplainer.contrast``)."""
        rows = self.explained_rows(features, [pick, rival])
        contrast = self.explainer_.contrast(rows, self.metalearner_.feature_groups, (self._configs[pick], self._configs[rival]))
        return {"candidate_id": str(self._ids[pick]), "rival_id": str(self._ids[rival]), "rival_rank": rival_rank,
                "rival_backbone": self._backbones[rival], **contrast}

    def shortlist_document(self, meta_features: dict[str, float], candidates: pd.DataFrame, top_k: int) -> dict[str, Any]:
        """A recommendation-like document (what the LLM step reads) whose shortlist is the top ``top_k``
        of the given candidates (cfg_ columns, indexed by id) instead of the meta-dataset's configs:
        how benchmarks let the LLM pick among a held-out dataset's own recorded configurations."""
        features, report = self.check_meta_features(meta_features)
        predictions = self.metalearner_.predict(features, candidates).set_axis(candidates.index)
        top = predictions.sort_values("score", ascending=False, kind="stable").head(top_k)
        shortlist = []
        for rank, (run_id, row) in enumerate(top.iterrows(), start=1):
            config = row_config(candidates.loc[run_id])
            accuracy = _clip01(row["pred_accuracy"])
            shortlist.append({
                "rank": rank, "candidate_id": str(run_id), "config": config, "score": float(row["score"]),
                "backbone": next((str(config[k]) for k in BACKBONE_KEYS if k in config), None),
                "param_count": {"value": None, "source": "unknown"},
                "predicted": {"accuracy": accuracy,
                              "accuracy_low": min(_clip01(row["pred_accuracy_low"]), accuracy),
                              "accuracy_high": max(_clip01(row["pred_accuracy_high"]), accuracy),
                              "accuracy_std": max(float(row["pred_accuracy_std"]), 0.0),
                              "train_seconds": _nonnegative_or_none(row["pred_cost_seconds"]),
                              "compute_flops_estimate": None,
                              "p_fail": _clip01(row["p_fail"])},
            })
        shap_rows = self.metalearner_.feature_frame(features, candidates.loc[top.index[:self.shap_top_k]].reset_index(drop=True))
        explanations = self.explainer_.explain(shap_rows, top_n=self.shap_top_features)
        return {
            "candidate_id": shortlist[0]["candidate_id"],
            "shortlist": shortlist,
            "evidence": {
                "shap": [{"candidate_id": item["candidate_id"], **e} for item, e in zip(shortlist, explanations)],
                "neighbours": self.index_.query(features, k=self.n_neighbours),
                "global_importance": self.explainer_.global_importance()[:10],
            },
            "meta_features": report,
            "constraints": {"requested": {}},
        }

    def check_meta_features(self, meta_features: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
        """Validated meta-features and a report {values, used, imputed, not_learned, outside_training_range}.

        ``modality`` and ``task`` may be given as text (e.g. "chest x-ray", "binary"): they become the 0/1
        features of metallmix.data.descriptors. Raise ConfigError for unknown names, non-numbers,
        non-finite values, values beyond ±``MAX_META_FEATURE_VALUE``, negative values of count features
        (those recorded as non-negative integers in the meta-dataset), and values outside
        ``META_FEATURE_DOMAINS`` (the documented range of metallmix's meta-features). A value outside
        the knowledge base's range is reported (the predictions extrapolate) for the features the
        meta-learner uses.
        """
        self._check_fitted()
        features = normalise_meta_features(self._expand_descriptors(meta_features), list(self.feature_domain_))
        learned = set(self.metalearner_.meta_feature_names_)
        outside = []
        for name, value in features.items():
            domain = self.feature_domain_[name]
            if not -MAX_META_FEATURE_VALUE <= value <= MAX_META_FEATURE_VALUE:
                raise ConfigError(f"meta-feature {name!r} = {value:g} is beyond ±{MAX_META_FEATURE_VALUE:g}: give the "
                                  "dataset's real value (its counts, sizes and ratios are far smaller)")
            if domain["count"] and value < 0:
                raise ConfigError(f"meta-feature {name!r} counts something and cannot be negative, got {value:g}")
            low, high = META_FEATURE_DOMAINS.get(name, (-math.inf, math.inf))
            if not low - DOMAIN_TOLERANCE <= value <= high + DOMAIN_TOLERANCE:
                raise ConfigError(f"meta-feature {name!r} must lie in [{low:g}, {high:g}], got {value:g}")
            if name in learned and domain["min"] is not None and not domain["min"] <= value <= domain["max"]:
                outside.append({"name": name, "value": value, "min": domain["min"], "max": domain["max"]})
        imputed = sorted(set(self.feature_domain_) - set(features))
        if len(imputed) == len(self.feature_domain_):
            raise ConfigError(f"no meta-feature given; give at least one of {sorted(self.feature_domain_)}")
        report = {
            "values": dict(sorted(features.items())),
            "used": sorted(learned & set(features)),
            "imputed": imputed,
            "not_learned": dict(sorted(self.metalearner_.unused_meta_features_.items())),
            "outside_training_range": outside,
        }
        return features, report

    def _expand_descriptors(self, meta_features: dict[str, Any]) -> dict[str, Any]:
        """``modality`` / ``task`` text -> their 0/1 meta-features (those this knowledge base knows)."""
        if not isinstance(meta_features, dict) or not DESCRIPTOR_KEYS.keys() & set(meta_features):
            return meta_features
        out = {k: v for k, v in meta_features.items() if k not in DESCRIPTOR_KEYS}
        given = {key: DESCRIPTOR_KEYS[key](str(meta_features[key])) for key in DESCRIPTOR_KEYS if meta_features.get(key) is not None}
        expanded = descriptor_features(given.get("modality"), given.get("task"))
        for name, value in expanded.items():
            prefix = name.split("_", 1)[0]
            if prefix in given and name in self.feature_domain_:
                out[name] = value
        return out

    def _item(self, rank: int, i: int, pred: dict[str, np.ndarray], pareto: set[int]) -> dict[str, Any]:
        """The shortlist entry of candidate ``i`` (a position in ``candidates_``)."""
        params = float(self._params[i])
        return {
            "rank": rank,
            "candidate_id": str(self._ids[i]),
            "config": dict(self._configs[i]),
            "backbone": self._backbones[i],
            "param_count": {"value": None if math.isnan(params) else params, "source": str(self._param_sources[i])},
            "score": float(pred["score"][i]),
            "predicted": _predicted(pred, i),
            "pareto_optimal": i in pareto,
        }

    def _feasibility(self, pred: dict[str, np.ndarray], constraints: Constraints) -> _Feasibility:
        result = _Feasibility(mask=np.ones(len(self._ids), dtype=bool), applied=[], excluded_by={})

        def apply(name: str, ok: np.ndarray, violation: np.ndarray) -> None:
            result.applied.append(name)
            result.excluded_by[name] = int((~ok).sum())
            result.violations[name] = violation
            result.mask &= ok

        if constraints.budget_minutes is not None:
            if self.cost_kind_ != COST_KIND_SECONDS:
                raise ConfigError(f"budget_minutes cannot be checked: this knowledge base has {COST_DESCRIPTIONS[self.cost_kind_]}"
                                  + ("; give a compute budget instead (budget_flops, --budget 5PFLOP)" if self.cost_kind_ == COST_KIND_FLOPS else ""))
            minutes = pred["pred_cost_seconds"] / 60.0
            apply("budget_minutes", minutes <= constraints.budget_minutes, np.maximum(minutes / constraints.budget_minutes - 1, 0))
        if constraints.budget_flops is not None:
            if self.cost_kind_ != COST_KIND_FLOPS:
                raise ConfigError(f"budget_flops cannot be checked: this knowledge base has {COST_DESCRIPTIONS[self.cost_kind_]}"
                                  + ("; give a time budget instead (budget_minutes, --budget 30min)" if self.cost_kind_ == COST_KIND_SECONDS else ""))
            flops = pred["compute_flops"]
            if np.isnan(flops).all():
                raise ConfigError("budget_flops needs the dataset's n_train and n_val meta-features to estimate compute; give them")
            apply("budget_flops", flops <= constraints.budget_flops, np.nan_to_num(np.maximum(flops / constraints.budget_flops - 1, 0), nan=np.inf))
        if constraints.max_params is not None:
            unknown = np.isnan(self._params)
            ok = unknown | (self._params <= constraints.max_params)
            apply("max_params", ok, np.where(unknown, 0.0, np.maximum(self._params / constraints.max_params - 1, 0)))
            if unknown.any():
                result.unchecked.append(
                    {
                        "constraint": "max_params",
                        "reason": "no parameter count recorded in the meta-dataset or in BACKBONE_PARAM_COUNTS; kept",
                        "n_candidates": int(unknown.sum()),
                        "backbones": sorted({b or "?" for b in self._backbones[unknown]}),
                    }
                )
        if constraints.backbones is not None:
            if self.backbone_key_ is None:
                raise ConfigError(f"constraint backbones cannot be checked: the search space has no {' / '.join(BACKBONE_KEYS)} key")
            known = sorted({b for b in self._backbones if b is not None})
            unknown_names = sorted(set(constraints.backbones) - set(known))
            if unknown_names:
                raise ConfigError(f"unknown backbone(s) {unknown_names}; this meta-dataset's backbones are {known}")
            ok = np.isin(self._backbones.astype(str), list(constraints.backbones))
            apply("backbones", ok, (~ok).astype(float))
        if constraints.max_p_fail is not None:
            p_fail = pred["p_fail"]
            apply("max_p_fail", p_fail <= constraints.max_p_fail, np.maximum(p_fail - constraints.max_p_fail, 0))
        if constraints.max_resolution is not None and not np.isnan(self._resolutions).all():
            resolution = np.nan_to_num(self._resolutions, nan=0.0)
            apply("max_resolution", resolution <= constraints.max_resolution,
                  np.maximum(resolution / constraints.max_resolution - 1, 0))
        return result

    def _cost(self, pred: dict[str, np.ndarray]) -> np.ndarray:
        """The cost the Pareto front trades accuracy against: seconds or estimated FLOPs (zeros if none)."""
        cost = pred["compute_flops"] if self.cost_kind_ == COST_KIND_FLOPS else pred["pred_cost_seconds"]
        return np.nan_to_num(cost, nan=0.0)

    def _infeasible_error(self, pred: dict[str, np.ndarray], feasibility: _Feasibility) -> InfeasibleConstraintsError:
        """Name what to relax for the closest candidate: fewest constraints broken, then smallest breach, then best score."""
        broken = np.zeros(len(self._ids))
        breach = np.zeros(len(self._ids))
        for violation in feasibility.violations.values():
            broken += violation > 0
            breach += violation
        i = int(np.lexsort((-pred["score"], breach, broken))[0])
        needs = []
        for name in feasibility.applied:
            if feasibility.violations[name][i] <= 0:
                continue
            if name == "budget_minutes":
                needs.append(f"relax budget_minutes to >= {math.ceil(pred['pred_cost_seconds'][i] / 60.0 * 100) / 100:g}")
            elif name == "budget_flops":
                needs.append(f"relax budget_flops to >= {pred['compute_flops'][i]:.3g} FLOP (estimate)")
            elif name == "max_resolution":
                needs.append(f"give images of at least {self._resolutions[i]:g} px")
            elif name == "max_params":
                needs.append(f"relax max_params to >= {self._params[i]:.4g}")
            elif name == "backbones":
                needs.append(f"allow backbone {self._backbones[i]!r}")
            else:
                needs.append(f"relax max_p_fail to >= {math.ceil(pred['p_fail'][i] * 1000) / 1000:g}")
        excluded = ", ".join(f"{k} excludes {v}" for k, v in feasibility.excluded_by.items())
        closest = self._item(1, i, pred, set())
        message = (
            f"no candidate config meets all constraints ({excluded} of {len(self._ids)} candidates); "
            f"{' and '.join(needs)}: the closest candidate is {closest['candidate_id']} "
            f"(backbone {closest['backbone']}, predicted accuracy {closest['predicted']['accuracy']:.3f}, "
            f"{cost_text(closest['predicted'])}, p_fail {closest['predicted']['p_fail']:.3f}, "
            f"{_format_params(closest['param_count']['value'])} parameters)"
        )
        return InfeasibleConstraintsError(message, closest)

    def _warnings(self, feature_report: dict[str, Any], feasibility: _Feasibility) -> tuple[list[str], bool]:
        warnings, degraded = [], False
        if self.meta_dataset_["n_datasets"] == 1:
            degraded = True
            only = self.index_.dataset_ids_[0]
            warnings.append(
                f"degraded: the meta-dataset holds runs of a single dataset ({only}); the meta-learner cannot "
                "tell datasets apart, so this ranking is that dataset's, whatever the new dataset is"
            )
        learned = self.metalearner_.meta_feature_names_
        missing = [name for name in feature_report["imputed"] if name in learned]
        if missing:
            if len(missing) * 2 > len(learned):
                degraded = True
                warnings.append(f"degraded: most meta-features the model uses are missing ({missing}); predictions rest on the rest")
            else:
                warnings.append(f"meta-features {missing} were not given; the models treated them as missing")
        for item in feature_report["outside_training_range"]:
            warnings.append(
                f"meta-feature {item['name']} = {item['value']:g} lies outside the meta-dataset's range "
                f"[{item['min']:g}, {item['max']:g}]: the predictions extrapolate"
            )
        if feature_report["ignored"]:
            warnings.append(f"meta-features {feature_report['ignored']} are unknown to this meta-dataset and were ignored")
        for item in feasibility.unchecked:
            warnings.append(f"constraint {item['constraint']} could not be checked for {item['n_candidates']} candidates ({', '.join(item['backbones'])})")
        if feasibility.excluded_by.get("max_resolution"):
            side = feature_report["values"].get("resolution")
            warnings.append(
                f"{feasibility.excluded_by['max_resolution']} configs train at a resolution above "
                + (f"the dataset's {side:g} px images" if side is not None else "max_resolution")
                + " and were left out (the recorded runs downsampled images, never upsampled them); "
                "with larger images of the same data (MedMNIST+ publishes 64, 128 and 224 px) they can be considered"
            )
        return warnings, degraded

    # ------------------------------------------------------------ save/load
    def save(self, folder: str | Path) -> Path:
        """Write manifest.json + metalearner/ + retrieval/ + explainer/ + candidates.parquet (no pickle)."""
        self._check_fitted()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.metalearner_.save(folder / "metalearner")
        self.index_.save(folder / "retrieval")
        self.explainer_.save(folder / "explainer")
        self.candidates_.to_parquet(folder / CANDIDATES_FILE, index=False)
        manifest = {
            "format_version": FORMAT_VERSION,
            "metallmix_version": metallmix.__version__,
            "parts": {"metalearner": "metalearner", "retrieval": "retrieval", "explainer": "explainer", "candidates": CANDIDATES_FILE},
            "params": {
                "metalearner_params": self.metalearner_params,
                "n_neighbours": self.n_neighbours,
                "n_top_configs": self.n_top_configs,
                "shap_top_k": self.shap_top_k,
                "shap_top_features": self.shap_top_features,
                "max_background": self.max_background,
                "random_state": self.random_state,
            },
            "backbone_key": self.backbone_key_,
            "cost_kind": self.cost_kind_,
            "feature_domain": self.feature_domain_,
            "meta_dataset": self.meta_dataset_,
        }
        (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Recommender:
        folder = Path(folder)
        manifest_path = folder / MANIFEST_FILE
        if not manifest_path.is_file():
            raise ConfigError(f"{folder} holds no saved Recommender (no {MANIFEST_FILE}); fit one and save it there")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ConfigError(f"{manifest_path} has format_version {manifest.get('format_version')}, this metallmix reads {FORMAT_VERSION}; refit")
        parts = manifest["parts"]
        self = cls(**manifest["params"])
        self.metalearner_ = MetaLearner.load(folder / parts["metalearner"])
        self.index_ = RetrievalIndex.load(folder / parts["retrieval"])
        self.explainer_ = ShapExplainer.load(folder / parts["explainer"], self.metalearner_.accuracy_model)
        self.candidates_ = pd.read_parquet(folder / parts["candidates"])
        self.backbone_key_ = manifest["backbone_key"]
        self.cost_kind_ = manifest["cost_kind"]
        self.feature_domain_ = manifest["feature_domain"]
        self.meta_dataset_ = manifest["meta_dataset"]
        self._prepare_candidates()
        return self


# ------------------------------------------------------------------ functions
def recommend(
    recommender: Recommender,
    meta_features: dict[str, float],
    constraints: Constraints | dict[str, Any] | None = None,
    top_k: int = 5,
) -> dict[str, Any]:
    """The recommendation document (schema: metallmix/schemas/recommendation.schema.json)."""
    return recommender.recommend(meta_features, constraints, top_k)


@dataclass(frozen=True)
class DatasetFacts:
    """What a recommendation knows of a dataset read from disk: its computed meta-features (with the
    0/1 modality and task features of metallmix.data.descriptors) and where they came from."""

    source: str
    kind: str
    meta_features: dict[str, float]
    modality: str | None
    task: str | None

    @property
    def is_medical(self) -> bool:
        return self.kind == "medmnist" or modality_family(self.modality) is not None


def describe_dataset(dataset: str | dict[str, Any], *, modality: str | None = None, task: str | None = None) -> DatasetFacts:
    """Load a dataset (path, name or config), compute its meta-features, and add its modality and task.

    ``modality`` / ``task`` (e.g. from ``--modality`` / ``--task``) win over what the dataset's config or
    its source documents (MedMNIST's own modality and task). The task of a 2-class dataset is binary
    (every loader here is single-label); other tasks are missing unless given.
    """
    from metallmix.data import compute_meta_features, load_dataset

    loaded = load_dataset(dataset_config(dataset))
    meta_features = {str(k): float(v) for k, v in compute_meta_features(loaded).items()}
    if modality is not None:
        parse_modality(modality)  # an unknown family is an error: the user asked for it
    else:
        modality = None if loaded.modality == "unknown" else loaded.modality
    task = parse_task(task) if task is not None else (loaded.description.get("task") or ("binary" if loaded.n_classes == 2 else None))
    meta_features.update(descriptor_features(modality, task))
    return DatasetFacts(source=str(dataset if not isinstance(dataset, dict) else loaded.name), kind=loaded.kind,
                        meta_features=meta_features, modality=modality, task=task)


def recommend_for_dataset(
    recommender: Recommender,
    *,
    dataset: str | dict[str, Any] | DatasetFacts | None = None,
    meta_features: str | Path | dict[str, Any] | None = None,
    constraints: Constraints | dict[str, Any] | None = None,
    top_k: int = 5,
) -> dict[str, Any]:
    """Recommend for a dataset given one of two ways.

    Args:
        dataset: a MedMNIST ``.npz`` path, an image folder path, a registered name (e.g.
            "breastmnist"), a dataset config mapping (its meta-features are computed here), or the
            ``DatasetFacts`` of one. Computed features the recommender does not know are listed as
            ignored; missing ones (NaN: an unknown modality or task) as imputed.
        meta_features: a dict, a JSON object string, or the path of a JSON file.
    """
    if (dataset is None) == (meta_features is None):
        raise ConfigError("give exactly one of dataset (a path or name) and meta_features (JSON or a file)")
    if meta_features is not None:
        return recommender.recommend(parse_meta_features(meta_features), constraints, top_k)
    computed = (dataset if isinstance(dataset, DatasetFacts) else describe_dataset(dataset)).meta_features
    known = set(recommender.feature_domain_)
    ignored = sorted(set(computed) - known)
    used = {k: v for k, v in computed.items() if k in known and v is not None and math.isfinite(v)}
    if not used:
        raise ConfigError(
            f"none of the dataset's meta-features {sorted(computed)} is known to this meta-dataset "
            f"(it knows {sorted(known)}); use a meta-dataset recorded with metallmix's meta-features"
        )
    return recommender.recommend(used, constraints, top_k, ignored_features=ignored)


def parse_meta_features(value: str | Path | dict[str, Any]) -> dict[str, Any]:
    """Meta-features from a dict, a JSON object string, or the path of a JSON file holding one."""
    if isinstance(value, dict):
        return value
    text = str(value)
    path = Path(text)
    if not text.lstrip().startswith(("{", "[")):
        if not path.is_file():
            raise ConfigError(f"meta-features {text!r} are neither a JSON object nor an existing JSON file")
        text = path.read_text()
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"meta-features are not valid JSON ({exc}); give an object such as {{\"n_classes\": 2}}") from None
    if not isinstance(parsed, dict):
        raise ConfigError(f"meta-features must be a JSON object of name: number, got {type(parsed).__name__}")
    return parsed


def dataset_config(dataset: str | dict[str, Any]) -> dict[str, Any]:
    """A dataset config for ``metallmix.data.load_dataset`` from a path or a registered name.

    - ``X.npz`` or ``X_<size>.npz`` (a MedMNIST file): kind medmnist, name X, its folder as root;
    - an existing folder: kind imagefolder (one sub-folder per class);
    - ``name`` or ``name@size``: a MedMNIST dataset (built in, or under ~/.medmnist).
    """
    if isinstance(dataset, dict):
        return dataset
    path = Path(dataset)
    if path.suffix == ".npz":
        if not path.is_file():
            raise DatasetNotFoundError(f"MedMNIST file {path} does not exist")
        stem, _, size = path.stem.rpartition("_")
        if stem and size.isdigit():
            return {"kind": "medmnist", "name": stem, "size": int(size), "root": str(path.parent)}
        return {"kind": "medmnist", "name": path.stem, "root": str(path.parent)}
    if path.is_dir():
        return {"kind": "imagefolder", "root": str(path)}
    name, _, size = str(dataset).partition("@")
    if size and not size.isdigit():
        raise ConfigError(f"dataset {dataset!r}: write a size as name@128")
    if "/" in name or "\\" in name:
        raise DataError(f"dataset {dataset!r} is neither an existing .npz file, an existing folder, nor a registered name")
    return {"kind": "medmnist", "name": name, **({"size": int(size)} if size else {})}


def pareto_front(accuracy: np.ndarray, seconds: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Positions of the candidates that no other beats on both accuracy (higher) and time (lower), fastest first.

    Ties on time go to the more accurate, then to the smaller id.
    """
    order = np.lexsort((ids, -accuracy, seconds))
    ordered = accuracy[order]
    best_before = np.maximum.accumulate(np.concatenate(([-np.inf], ordered[:-1])))
    return order[ordered > best_before]


def content_hash(df: pd.DataFrame) -> str:
    """A hash of a meta-dataset's content (rows in run_id order, columns by name)."""
    ordered = df.sort_values("run_id", kind="stable")[sorted(df.columns)].reset_index(drop=True)
    digest = hashlib.sha256()
    digest.update(json.dumps(list(ordered.columns)).encode())
    digest.update(pd.util.hash_pandas_object(ordered.astype(str), index=False).to_numpy().tobytes())
    return digest.hexdigest()[:24]


def template_explanation(document: dict[str, Any]) -> str:
    """A short readable justification built from the document's own evidence (no LLM)."""
    pred = document["predicted"]
    config = document["config"]
    backbone = document["backbone"] or "this config"
    params = document["param_count"]["value"]
    size = f" ({params / 1e6:.1f} M parameters)" if params is not None else ""
    shown = _key_settings(config, document["evidence"]["shap"][:1], exclude=_backbone_key_of(config, backbone))
    settings = ", ".join(f"{k}={_short(config[k])}" for k in shown)
    lines = [
        f"Recommended: {backbone}{size}" + (f" with {settings} (full config in 'config')." if settings else "."),
        f"Predicted accuracy {pred['accuracy']:.1%} (80% range {pred['accuracy_low']:.1%} to "
        f"{pred['accuracy_high']:.1%} if the run completes), {cost_text(pred)}, failure risk {pred['p_fail']:.0%}.",
    ]
    for contrast in document["evidence"]["contrast"][:1]:
        rival = contrast["rival_backbone"] or f"candidate {contrast['rival_id']}"
        lines.append(f"Why it ranks above the runner-up ({rival}): {contrast['text']}.")
        if contrast["gap_points"] < 0:
            lines.append("Its predicted accuracy is the lower of the two: it ranks first on the ranking score, which "
                         "learns how configs compare within each past dataset rather than their absolute accuracy.")
    shap = document["evidence"]["shap"]
    context = [item for item in shap[0]["top_features"] if item["kind"] == "dataset"] if shap else []
    if context:
        lines.append(f"Dataset context: {ShapExplainer.render_text(context)}")
    neighbours = document["evidence"]["neighbours"]
    if neighbours:
        parts = []
        for hit in neighbours[:3]:
            best = hit["top_configs"][0] if hit["top_configs"] else None
            if best:
                parts.append(f"{hit['dataset_id']} (distance {hit['distance']:.2f}; best accuracy {best['accuracy']:.1%})")
            else:
                parts.append(f"{hit['dataset_id']} (distance {hit['distance']:.2f})")
        lines.append("Most similar past datasets: " + ", ".join(parts) + ".")
    c = document["constraints"]
    lines.append(f"{c['n_feasible']} of {c['n_candidates']} candidate configs met the constraints.")
    if document["degraded"]:
        lines.append("Caution: degraded answer, see warnings.")
    return " ".join(lines)


# ------------------------------------------------------------------ helpers
def _with_param_counts(candidates: pd.DataFrame, df: pd.DataFrame, backbone_key: str | None) -> pd.DataFrame:
    """Add ``param_count`` and ``param_count_source`` (config | metrics | lookup_table | unknown)."""
    out = candidates.copy()
    counts = pd.Series(np.nan, index=out.index, dtype=float)
    sources = pd.Series("unknown", index=out.index, dtype=object)
    for key in PARAM_COUNT_KEYS:
        column = CFG_PREFIX + key
        if column in out.columns:
            values = pd.to_numeric(out[column], errors="coerce")
            take = counts.isna() & values.notna()
            counts[take], sources[take] = values[take], "config"
    if backbone_key is not None:
        backbones = out[CFG_PREFIX + backbone_key].astype(str)
        from_metrics = _param_counts_from_metrics(df, backbone_key)
        for table, source in ((from_metrics, "metrics"), (BACKBONE_PARAM_COUNTS, "lookup_table")):
            values = backbones.map(table).astype(float)
            take = counts.isna() & values.notna()
            counts[take], sources[take] = values[take], source
    out["param_count"] = counts
    out["param_count_source"] = sources
    return out


def _param_counts_from_metrics(df: pd.DataFrame, backbone_key: str) -> dict[str, float]:
    column = CFG_PREFIX + backbone_key
    found: dict[str, list[float]] = {}
    for backbone, metrics_json in zip(df[column], df["metrics_json"], strict=True):
        if pd.isna(backbone) or not isinstance(metrics_json, str):
            continue
        metrics = json.loads(metrics_json)
        for key in PARAM_COUNT_KEYS:
            value = metrics.get(key)
            if _is_number(value) and value > 0:
                found.setdefault(str(backbone), []).append(float(value))
                break
    return {backbone: float(np.median(values)) for backbone, values in found.items()}


def _feature_domain(df: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per meta-feature: min and max over the meta-dataset, and whether it is a count."""
    domain = {}
    for column in meta_feature_columns(df):
        values = df[column].dropna().to_numpy(dtype=float)
        name = column[len(MF_PREFIX):]
        if len(values) == 0:
            domain[name] = {"min": None, "max": None, "count": False}
            continue
        is_count = bool(np.all(values >= 0) and np.all(values == np.round(values)))
        domain[name] = {"min": float(values.min()), "max": float(values.max()), "count": is_count}
    return domain


def _predicted(pred: dict[str, np.ndarray], i: int) -> dict[str, float]:
    accuracy = _clip01(pred["pred_accuracy"][i])
    return {
        "accuracy": accuracy,
        "accuracy_low": min(_clip01(pred["pred_accuracy_low"][i]), accuracy),
        "accuracy_high": max(_clip01(pred["pred_accuracy_high"][i]), accuracy),
        "accuracy_std": max(float(pred["pred_accuracy_std"][i]), 0.0),
        "train_seconds": _nonnegative_or_none(pred["pred_cost_seconds"][i]),
        "compute_flops_estimate": _nonnegative_or_none(pred["compute_flops"][i]),
        "p_fail": _clip01(pred["p_fail"][i]),
    }


def _cost_kind(df: pd.DataFrame) -> str:
    if df["cost_seconds"].notna().any():
        return COST_KIND_SECONDS
    if COST_ESTIMATE_COLUMN in df.columns and df[COST_ESTIMATE_COLUMN].notna().any():
        return COST_KIND_FLOPS
    return COST_KIND_NONE


def _number_or_nan(value: Any) -> float:
    return float(value) if _is_number(value) else math.nan


def _nonnegative_or_none(value: Any) -> float | None:
    return max(float(value), 0.0) if _is_number(value) else None


def _text_or_none(value: Any) -> str | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _key_settings(config: dict[str, Any], shap: list[dict[str, Any]], exclude: str | None, limit: int = 6) -> list[str]:
    """Config keys worth naming in a sentence: those SHAP ranks highest, then the usual ones."""
    keys: list[str] = []
    for explanation in shap:
        for item in explanation["top_features"]:
            if item["kind"] == "config":
                key = item["name"].partition("=")[0].removesuffix(LOG10_SUFFIX)
                keys.append(key)
    keys += [k for k in USUAL_SETTINGS if k in config]
    out = []
    for key in keys:
        if key in config and key != exclude and key not in out:
            out.append(key)
    return out[:limit]


def _backbone_key_of(config: dict[str, Any], backbone: str) -> str | None:
    return next((k for k in BACKBONE_KEYS if str(config.get(k)) == backbone), None)


def _clip01(value: Any) -> float:
    return float(min(max(float(value), 0.0), 1.0))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and math.isfinite(float(value))


def _format_params(value: float | None) -> str:
    return "unknown" if value is None else f"{value / 1e6:.2f} M"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
