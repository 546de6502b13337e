"""The XGBoost meta-learner: from (dataset meta-features, config) to the expected outcome of a run.

It fits five kinds of boosted trees on a meta-dataset (one row per run, every status):

- the **accuracy model** (``accuracy_model``): regression of a run's accuracy, as a fraction in
  [0, 1], on every run with a recorded accuracy (failed and truncated runs included, so configs that
  crash score low);
- the **score models**: what ranks candidates, chosen by ``objective`` (see ``OBJECTIVES``): a
  regression of the accuracy normalised within each dataset (the default), a learning-to-rank model
  with the dataset as query group, or the paper's plain regressor on raw accuracy of ok runs;
  ``n_ensemble`` of them, differing only in their random seed; the score is their mean;
- the **failure model**: probability that a run does not finish (status failed or truncated); the
  ranking score is ``mean score model output - fail_penalty * p_fail``;
- the **interval model**: 10% and 90% quantiles of the accuracy of a run that completes (status ok;
  the failure model gives the risk that it does not), widened to hold 80% of the completed runs of
  datasets it has not seen: conformalised quantile regression (Romano et al., 2019) across datasets. Each fitting dataset is left out in turn, the quantile model fitted on the
  others scores its runs by ``max(low - accuracy, accuracy - high)``, and the 80% quantile of those
  scores (``interval_correction_``, accuracy units) widens every interval on both sides (a negative one
  narrows it). Without two datasets there is nothing to calibrate on and the correction is 0;
- the **cost model**: regression of log seconds of complete (ok) runs.

Defaults come from leave-one-dataset-out runs on the Quick-Tune data (benchmarks/recommender_regret.py,
mean normalised regret of the top pick over 18 datasets): objective "regression" beat "rank_ndcg",
"regression_rank" and "rank_pairwise"; a failure penalty fixed one dataset and broke another, so it
is 0. One model's top pick swings with its seed (single models 0.086-0.186 over 25 seeds, means of
5 models 0.069-0.173); means of 20 models settled at 0.069, hence ``n_ensemble=20``.

Features: the dataset meta-features (``mf_<name>``) but two kinds (listed in ``unused_meta_features_``
with the reason), numeric config values (``cfg_<name>``; the
``log_scale`` ones as ``cfg_<name>_log10``) and one 0/1 column per value of each categorical config
column (``cfg_<name>=<value>``). A candidate lacking a column gets NaN there (XGBoost's missing
value); a categorical value never seen in fitting gets 0 in every one-hot column of its group.

Meta-features left out of the model:

- **set by the config**: equal to the config column of the same name on every fitting row (MedMNIST+
  records ``resolution``, the image side each run trained at, as both): the config column carries it;
- **too sparse**: missing on more than half of the fitting datasets (MedMNIST+'s class balance, known
  for 2 of 9 datasets). Trees would learn "known vs missing", which tells those few datasets apart,
  and send every new dataset, whose value is always computed, down their branch.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

from metallmix.errors import ConfigError, SchemaError
from metallmix.metadataset.schema import (
    CFG_PREFIX,
    MF_PREFIX,
    STATUS_OK,
    canonical_json,
    config_columns,
    config_set_meta_features,
    meta_feature_columns,
    row_config,
    validate_rows,
)

OBJECTIVES = ("regression", "regression_rank", "rank_pairwise", "rank_ndcg", "plain")
"""- regression: squared error on accuracy min-max normalised within each training dataset (0 = its
  worst run, 1 = its best);
- regression_rank: squared error on the within-dataset rank percentile of accuracy;
- rank_pairwise / rank_ndcg: XGBoost ``rank:pairwise`` / ``rank:ndcg`` with one query group per
  dataset (ndcg on 0..NDCG_LEVELS relevance levels of the normalised accuracy);
- plain: the paper's plain regressor: raw accuracy of ok runs only (a baseline; no failure penalty
  unless ``fail_penalty`` says so)."""

MODEL_FILES = {"accuracy": "accuracy_model.ubj", "fail": "fail_model.ubj",
               "interval": "interval_model.ubj", "cost": "cost_model.ubj"}
SCORE_MODEL_FILE = "score_model_{}.ubj"
STATE_FILE = "metalearner.json"
FORMAT_VERSION = 1
NDCG_LEVELS = 10
LOG_FLOOR = 1e-8
INTERVAL_QUANTILES = (0.1, 0.9)
INTERVAL_COVERAGE = INTERVAL_QUANTILES[1] - INTERVAL_QUANTILES[0]
MAX_MISSING_DATASET_SHARE = 0.5
_Z_INTERVAL = 1.2815515655446004  # standard normal 90% quantile: (q90 - q10) / (2 z) estimates a std
_FORBIDDEN_NAME_CHARS = {"[": "(", "]": ")", "<": "lt"}


class MetaLearner:
    """Zero-shot ranker of configs for a dataset, scikit-learn style.

    Args:
        objective: how the score model learns to rank (one of ``OBJECTIVES``).
        fail_penalty: weight of p_fail subtracted from the score models' mean output.
        n_ensemble: number of score models (seeds random_state, random_state + 1, ...).
        n_estimators, max_depth, learning_rate, subsample, colsample_bytree, min_child_weight:
            XGBoost settings shared by every model.
        log_scale: numeric config columns (without prefix) encoded as log10 (zero -> log10(1e-8)).
        portfolio_weight: weight in [0, 1] of the portfolio in the ranking score: the score is
            ``(1 - w) x z(score models) + w x z(portfolio)``, z-scored over the candidates of a query,
            where the portfolio is each config's mean min-max normalised accuracy over the fitting
            datasets (``portfolio_scores``; a config never run there counts as their mean). 0 (the
            default) ranks by the score models alone; 1 by the portfolio alone.
        ranking_only: fit only what ranks candidates (the score models, the failure model when
            ``fail_penalty`` > 0, no score model at all when ``portfolio_weight`` is 1): the fast
            form for model-selection loops; ``predict`` then gives NaN accuracy, interval and cost.
        n_jobs: XGBoost threads.
        random_state: seed of every model.
    """

    def __init__(
        self,
        objective: str = "regression",
        *,
        fail_penalty: float = 0.0,
        n_ensemble: int = 20,
        n_estimators: int = 200,
        max_depth: int = 6,
        learning_rate: float = 0.05,
        subsample: float = 0.8,
        colsample_bytree: float = 0.8,
        min_child_weight: float = 1.0,
        log_scale: tuple[str, ...] = ("lr", "weight_decay"),
        portfolio_weight: float = 0.0,
        ranking_only: bool = False,
        n_jobs: int = 1,
        random_state: int = 0,
    ):
        self.objective = objective
        self.fail_penalty = fail_penalty
        self.n_ensemble = n_ensemble
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.min_child_weight = min_child_weight
        self.log_scale = tuple(log_scale)
        self.portfolio_weight = portfolio_weight
        self.ranking_only = ranking_only
        self.n_jobs = n_jobs
        self.random_state = random_state

    # ------------------------------------------------------------------ settings
    def get_params(self) -> dict[str, Any]:
        return {
            "objective": self.objective, "fail_penalty": self.fail_penalty,
            "n_ensemble": self.n_ensemble, "n_estimators": self.n_estimators,
            "max_depth": self.max_depth, "learning_rate": self.learning_rate, "subsample": self.subsample,
            "colsample_bytree": self.colsample_bytree, "min_child_weight": self.min_child_weight,
            "log_scale": list(self.log_scale), "portfolio_weight": self.portfolio_weight,
            "ranking_only": self.ranking_only, "n_jobs": self.n_jobs, "random_state": self.random_state,
        }

    def _check_params(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.n_estimators < 1 or self.max_depth < 1 or self.n_ensemble < 1:
            raise ConfigError("n_estimators, max_depth and n_ensemble must be >= 1")
        if not 0 < self.learning_rate <= 1 or not 0 < self.subsample <= 1 or not 0 < self.colsample_bytree <= 1:
            raise ConfigError("learning_rate, subsample and colsample_bytree must lie in (0, 1]")
        if self.fail_penalty < 0:
            raise ConfigError(f"fail_penalty must be >= 0, got {self.fail_penalty}")
        if not 0 <= self.portfolio_weight <= 1:
            raise ConfigError(f"portfolio_weight must lie in [0, 1], got {self.portfolio_weight}")

    def _xgb_params(self, objective: str, seed_offset: int = 0, **extra: Any) -> dict[str, Any]:
        return {
            "objective": objective, "max_depth": self.max_depth, "eta": self.learning_rate,
            "subsample": self.subsample, "colsample_bytree": self.colsample_bytree,
            "min_child_weight": self.min_child_weight, "nthread": self.n_jobs,
            "seed": self.random_state + seed_offset, "tree_method": "hist", **extra,
        }

    # ----------------------------------------------------------------------- fit
    def fit(self, df: pd.DataFrame) -> MetaLearner:
        """Fit every model on a meta-dataset frame (all statuses)."""
        self._check_params()
        validate_rows(df, source="meta-dataset given to MetaLearner.fit")
        if len(df) == 0:
            raise SchemaError("MetaLearner.fit got an empty meta-dataset; it needs runs of at least one dataset")
        self._fit_encoders(df)
        features = self._features(df, {})
        x = features.to_numpy(dtype=np.float32)
        accuracy = df["accuracy"].to_numpy(dtype=np.float64)
        has_accuracy = np.isfinite(accuracy)
        if not has_accuracy.any():
            raise SchemaError("no run of the meta-dataset has an accuracy; the meta-learner has nothing to learn from")
        ok = (df["status"] == STATUS_OK).to_numpy()
        rounds = self.n_estimators

        self._boosters = {}
        if not self.ranking_only or self.fail_penalty > 0:
            self._boosters["fail"] = xgb.train(self._xgb_params("binary:logistic"), self._dmatrix(x, (~ok).astype(np.float32)), rounds)
        learned_scores = not self.ranking_only or self.portfolio_weight < 1
        self._score_boosters = [self._fit_score_model(df, x, accuracy, has_accuracy, ok, seed_offset=i)
                                for i in range(self.n_ensemble if learned_scores else 0)]
        self.interval_correction_ = 0.0
        if not self.ranking_only:
            self._boosters["accuracy"] = xgb.train(self._xgb_params("reg:squarederror"),
                                                   self._dmatrix(x[has_accuracy], accuracy[has_accuracy]), rounds)
            # the interval is of runs that complete (the failure model prices the others)
            completed = has_accuracy & ok if (has_accuracy & ok).any() else has_accuracy
            self._boosters["interval"] = self._fit_interval_model(x[completed], accuracy[completed])
            self.interval_correction_ = self._interval_correction(
                x[completed], accuracy[completed], df["dataset_id"].to_numpy()[completed])
            seconds = df["cost_seconds"].to_numpy(dtype=np.float64)
            timed = np.isfinite(seconds) & (seconds > 0) & ok
            if not timed.any():
                timed = np.isfinite(seconds) & (seconds > 0)
            if timed.any():
                self._boosters["cost"] = xgb.train(self._xgb_params("reg:squarederror"),
                                                   self._dmatrix(x[timed], np.log(seconds[timed])), rounds)
        self.portfolio_ = {}
        if self.portfolio_weight > 0:
            scores = portfolio_scores(df)
            if int(scores["n_datasets"].max()) < 2:
                raise ConfigError(f"portfolio_weight > 0 but {PORTFOLIO_NOT_APPLICABLE}; set portfolio_weight=0")
            self.portfolio_ = scores.set_index("candidate_id")["mean_normalized_accuracy"].to_dict()
        self.n_training_runs_ = int(len(df))
        self.n_training_datasets_ = int(df["dataset_id"].nunique())
        return self

    def _fit_interval_model(self, x: np.ndarray, accuracy: np.ndarray) -> xgb.Booster:
        return xgb.train(self._xgb_params("reg:quantileerror", quantile_alpha=list(INTERVAL_QUANTILES)),
                         self._dmatrix(x, accuracy), self.n_estimators)

    def _interval_correction(self, x: np.ndarray, accuracy: np.ndarray, datasets: np.ndarray) -> float:
        """The conformal correction of the interval model, from leave-one-dataset-out scores (module doc)."""
        names = np.unique(datasets)
        if len(names) < 2:
            return 0.0
        scores = np.empty(len(accuracy))
        for name in names:
            held_out = datasets == name
            model = self._fit_interval_model(x[~held_out], accuracy[~held_out])
            bounds = np.sort(_predict(model, x[held_out]).reshape(int(held_out.sum()), -1), axis=1)
            scores[held_out] = np.maximum(bounds[:, 0] - accuracy[held_out], accuracy[held_out] - bounds[:, -1])
        level = min(1.0, np.ceil((len(scores) + 1) * INTERVAL_COVERAGE) / len(scores))
        return float(np.quantile(scores, level, method="higher"))

    def _dmatrix(self, x: np.ndarray, label: np.ndarray, qid: np.ndarray | None = None) -> xgb.DMatrix:
        return xgb.DMatrix(x, label=label, qid=qid, feature_names=self.feature_names_, missing=np.nan, nthread=self.n_jobs)

    def _fit_score_model(self, df: pd.DataFrame, x: np.ndarray, accuracy: np.ndarray,
                         has_accuracy: np.ndarray, ok: np.ndarray, seed_offset: int) -> xgb.Booster:
        rounds = self.n_estimators
        if self.objective == "plain":
            rows = has_accuracy & ok
            if not rows.any():
                raise SchemaError("objective 'plain' learns from ok runs only and the meta-dataset has none")
            return xgb.train(self._xgb_params("reg:squarederror", seed_offset),
                             self._dmatrix(x[rows], accuracy[rows]), rounds)
        datasets = df["dataset_id"].to_numpy()[has_accuracy]
        target = within_dataset_target(accuracy[has_accuracy], datasets,
                                       "rank" if self.objective == "regression_rank" else "minmax")
        xs = x[has_accuracy]
        if self.objective in ("regression", "regression_rank"):
            return xgb.train(self._xgb_params("reg:squarederror", seed_offset), self._dmatrix(xs, target), rounds)
        order = np.argsort(datasets, kind="stable")
        _, qid = np.unique(datasets[order], return_inverse=True)
        if self.objective == "rank_ndcg":
            label = np.round(target[order] * NDCG_LEVELS)
            params = self._xgb_params("rank:ndcg", seed_offset, lambdarank_pair_method="topk", ndcg_exp_gain=True)
        else:
            label = target[order]
            params = self._xgb_params("rank:pairwise", seed_offset, lambdarank_pair_method="mean",
                                      lambdarank_num_pair_per_sample=8)
        return xgb.train(params, self._dmatrix(xs[order], label, qid=qid), rounds)

    # ------------------------------------------------------------------ encoding
    def _fit_encoders(self, df: pd.DataFrame) -> None:
        self.unused_meta_features_ = unused_meta_features(df)
        self.meta_feature_names_ = [c[len(MF_PREFIX):] for c in meta_feature_columns(df)
                                    if c[len(MF_PREFIX):] not in self.unused_meta_features_]
        self.numeric_columns_: list[str] = []
        self.categories_: dict[str, list[str]] = {}
        for column in config_columns(df):
            values = df[column]
            if values.isna().all():
                continue
            if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
                self.numeric_columns_.append(column[len(CFG_PREFIX):])
            else:
                self.categories_[column[len(CFG_PREFIX):]] = sorted(str(v) for v in values.dropna().unique())
        self._build_feature_names()

    def _build_feature_names(self) -> None:
        names = [MF_PREFIX + n for n in self.meta_feature_names_]
        groups = {MF_PREFIX + n: MF_PREFIX + n for n in self.meta_feature_names_}
        for name in self.numeric_columns_:
            feature = CFG_PREFIX + name + ("_log10" if name in self.log_scale else "")
            names.append(feature)
            groups[feature] = CFG_PREFIX + name
        for name, values in self.categories_.items():
            for value in values:
                feature = _safe_name(f"{CFG_PREFIX}{name}={value}")
                names.append(feature)
                groups[feature] = CFG_PREFIX + name
        if len(set(names)) != len(names):
            raise SchemaError("two config values map to the same feature name; rename the values of that column")
        self.feature_names_ = names
        self.feature_groups_ = groups

    @property
    def feature_names(self) -> list[str]:
        """The accuracy model's input columns, in order (see ``feature_frame``)."""
        self._check_fitted()
        return list(self.feature_names_)

    @property
    def feature_groups(self) -> dict[str, str]:
        """Feature name -> the meta-dataset column it encodes (one-hot columns share their cfg_ column)."""
        self._check_fitted()
        return dict(self.feature_groups_)

    def feature_frame(self, meta_features: dict[str, float], candidates: pd.DataFrame) -> pd.DataFrame:
        """The exact model input for one dataset and its candidate configs (same index as ``candidates``).

        ``meta_features`` (names with or without the ``mf_`` prefix; unknown names are ignored) fill
        the mf_ columns; a meta-feature given by neither it nor ``candidates`` is NaN.
        """
        self._check_fitted()
        return self._features(candidates, self._meta_feature_values(meta_features))

    def feature_frame_from_rows(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Model input for rows that carry their own mf_ and cfg_ columns (e.g. a meta-dataset)."""
        self._check_fitted()
        return self._features(rows, {})

    def _features(self, rows: pd.DataFrame, meta_features: dict[str, float]) -> pd.DataFrame:
        n = len(rows)
        matrix = np.empty((n, len(self.feature_names_)), dtype=np.float64)
        position = 0
        for name in self.meta_feature_names_:
            value = meta_features.get(name)
            matrix[:, position] = value if value is not None else _numeric(rows, MF_PREFIX + name, n)
            position += 1
        for name in self.numeric_columns_:
            values = _numeric(rows, CFG_PREFIX + name, n)
            if name in self.log_scale:
                with np.errstate(divide="ignore", invalid="ignore"):
                    values = np.log10(np.maximum(values, LOG_FLOOR))
            matrix[:, position] = values
            position += 1
        for name, levels in self.categories_.items():
            column = CFG_PREFIX + name
            if column in rows.columns:
                raw = rows[column]
                missing = raw.isna().to_numpy()
                as_text = raw.astype(str).to_numpy(dtype=object)
            else:
                missing, as_text = np.ones(n, dtype=bool), np.full(n, None, dtype=object)
            for value in levels:
                matrix[:, position] = np.where(missing, np.nan, as_text == value)
                position += 1
        return pd.DataFrame(matrix, index=rows.index, columns=self.feature_names_)

    def _meta_feature_values(self, meta_features: dict[str, float]) -> dict[str, float]:
        if not isinstance(meta_features, dict):
            raise ConfigError(f"meta_features must be a dict of name -> number, got {type(meta_features).__name__}")
        out = {}
        for raw_name, value in meta_features.items():
            name = raw_name[len(MF_PREFIX):] if str(raw_name).startswith(MF_PREFIX) else str(raw_name)
            if name not in self.meta_feature_names_:
                continue
            try:
                out[name] = float(value) if value is not None else math.nan
            except (TypeError, ValueError):
                raise ConfigError(f"meta-feature {name!r} must be a number, got {value!r}") from None
        return out

    # -------------------------------------------------------------------- models
    @property
    def accuracy_model(self) -> xgb.Booster:
        """The XGBoost Booster predicting a run's accuracy as a fraction in [0, 1] (all statuses).

        Its raw output (and so every SHAP value of it) is in accuracy units: multiply by 100 for
        accuracy points. Its inputs are ``feature_frame(...)`` columns, named ``feature_names``.
        """
        self._check_fitted()
        if "accuracy" not in self._boosters:
            raise ConfigError("this MetaLearner was fitted with ranking_only=True and has no accuracy model")
        return self._boosters["accuracy"]

    @property
    def score_models(self) -> list[xgb.Booster]:
        """The Boosters whose mean output ranks candidates (units depend on ``objective``)."""
        self._check_fitted()
        return list(self._score_boosters)

    # ------------------------------------------------------------------- predict
    def predict(self, meta_features: dict[str, float], candidates: pd.DataFrame) -> pd.DataFrame:
        """Score candidate configs for one dataset.

        Returns a frame with ``candidates``' index and the columns score (higher = better pick),
        pred_accuracy, pred_accuracy_low, pred_accuracy_high (the calibrated 80% interval), pred_accuracy_std,
        p_fail and pred_cost_seconds (NaN when no run had a cost).
        """
        if not isinstance(candidates, pd.DataFrame):
            raise ConfigError(f"candidates must be a DataFrame of cfg_ columns, got {type(candidates).__name__}")
        features = self.feature_frame(meta_features, candidates)
        x = features.to_numpy(dtype=np.float32)
        if len(x) == 0:
            return pd.DataFrame(columns=PREDICTION_COLUMNS, index=candidates.index, dtype=float)
        missing = np.full(len(x), np.nan)
        accuracy = np.clip(self._predict("accuracy", x), 0.0, 1.0) if "accuracy" in self._boosters else missing
        if "interval" in self._boosters:
            bounds = np.sort(self._predict("interval", x).reshape(len(x), -1), axis=1)
            interval = np.clip(bounds + np.array([-1.0, 1.0]) * self.interval_correction_, 0.0, 1.0)
        else:
            interval = np.column_stack([missing, missing])
        p_fail = self._predict("fail", x) if "fail" in self._boosters else missing
        cost = np.exp(self._predict("cost", x)) if "cost" in self._boosters else missing
        learned = np.mean([_predict(b, x) for b in self._score_boosters], axis=0) if self._score_boosters else np.zeros(len(x))
        score = learned - self.fail_penalty * p_fail if self.fail_penalty > 0 else learned
        if self.portfolio_weight > 0:
            score = self._with_portfolio(score, candidates)
        return pd.DataFrame(
            {
                "score": score,
                "pred_accuracy": accuracy,
                "pred_accuracy_low": interval[:, 0],
                "pred_accuracy_high": interval[:, -1],
                "pred_accuracy_std": (interval[:, -1] - interval[:, 0]) / (2 * _Z_INTERVAL),
                "p_fail": p_fail,
                "pred_cost_seconds": cost,
            },
            index=candidates.index,
        )

    def _predict(self, model: str, x: np.ndarray) -> np.ndarray:
        return _predict(self._boosters[model], x)

    def _with_portfolio(self, score: np.ndarray, candidates: pd.DataFrame) -> np.ndarray:
        """(1 - w) z(score) + w z(portfolio) over these candidates (see ``portfolio_weight``)."""
        known = np.array(list(self.portfolio_.values()), dtype=float)
        ids = [config_id(row_config(row)) for row in candidates[[c for c in candidates.columns if c.startswith(CFG_PREFIX)]].to_dict("records")]
        portfolio = np.array([self.portfolio_.get(i, known.mean()) for i in ids], dtype=float)
        w = self.portfolio_weight
        return (1 - w) * _z(score) + w * _z(portfolio)

    def _check_fitted(self) -> None:
        if not hasattr(self, "_boosters"):
            raise ConfigError("this MetaLearner is not fitted; call fit(df) or MetaLearner.load(folder) first")

    # ---------------------------------------------------------------- save/load
    def save(self, folder: str | Path) -> Path:
        """Write the boosters (XGBoost UBJSON) and the encoders/settings (JSON) into ``folder``."""
        self._check_fitted()
        root = Path(folder)
        root.mkdir(parents=True, exist_ok=True)
        for name, booster in self._boosters.items():
            booster.save_model(str(root / MODEL_FILES[name]))
        for i, booster in enumerate(self._score_boosters):
            booster.save_model(str(root / SCORE_MODEL_FILE.format(i)))
        state = {
            "format_version": FORMAT_VERSION,
            "params": self.get_params(),
            "meta_feature_names": self.meta_feature_names_,
            "numeric_columns": self.numeric_columns_,
            "categories": self.categories_,
            "feature_names": self.feature_names_,
            "models": sorted(self._boosters),
            "n_training_runs": self.n_training_runs_,
            "n_training_datasets": self.n_training_datasets_,
            "unused_meta_features": self.unused_meta_features_,
            "n_score_models": len(self._score_boosters),
            "portfolio": self.portfolio_,
            "interval_correction": self.interval_correction_,
            "xgboost_version": xgb.__version__,
        }
        (root / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        return root

    @classmethod
    def load(cls, folder: str | Path) -> MetaLearner:
        """Read a meta-learner written by ``save``."""
        root = Path(folder)
        state_path = root / STATE_FILE
        if not state_path.is_file():
            raise ConfigError(f"{root} holds no {STATE_FILE}; give a folder written by MetaLearner.save")
        state = json.loads(state_path.read_text())
        if state.get("format_version") != FORMAT_VERSION:
            raise ConfigError(
                f"{state_path} has format_version {state.get('format_version')}, this metallmix reads {FORMAT_VERSION}; "
                "fit and save the meta-learner again"
            )
        params = dict(state["params"])
        learner = cls(params.pop("objective"), **{**params, "log_scale": tuple(params["log_scale"])})
        learner.meta_feature_names_ = list(state["meta_feature_names"])
        learner.unused_meta_features_ = dict(state.get("unused_meta_features", {}))
        learner.portfolio_ = {k: float(v) for k, v in state.get("portfolio", {}).items()}
        learner.interval_correction_ = float(state.get("interval_correction", 0.0))
        learner.numeric_columns_ = list(state["numeric_columns"])
        learner.categories_ = {k: list(v) for k, v in state["categories"].items()}
        learner._build_feature_names()
        if learner.feature_names_ != state["feature_names"]:
            raise ConfigError(f"{state_path}: stored feature names disagree with its encoders; the file is corrupt")
        learner._boosters = {name: _load_booster(root / MODEL_FILES[name], learner.n_jobs) for name in state["models"]}
        learner._score_boosters = [_load_booster(root / SCORE_MODEL_FILE.format(i), learner.n_jobs)
                                   for i in range(int(state.get("n_score_models", learner.n_ensemble)))]
        learner.n_training_runs_ = int(state["n_training_runs"])
        learner.n_training_datasets_ = int(state["n_training_datasets"])
        return learner


PREDICTION_COLUMNS = ["score", "pred_accuracy", "pred_accuracy_low", "pred_accuracy_high",
                      "pred_accuracy_std", "p_fail", "pred_cost_seconds"]


# Settings per search space, for the knowledge bases that ship with metallmix (others: the defaults),
# chosen among LEARNER_GRID of metallmix.evaluate by leave-one-dataset-out on that knowledge base and,
# where that disagrees with the figure of smaller training pools, by the latter: a pick must hold for
# datasets the knowledge base does not hold. Figures and commands: docs/recommender.md.
KNOWLEDGE_BASE_SETTINGS: dict[str, dict[str, Any]] = {
    # MedMNIST+ (9 datasets), mean regret leave-one-dataset-out: rank_pairwise 0.033, regression 0.066,
    # their 50/50 blends with the portfolio 0.042 / 0.055, the portfolio alone 0.052.
    "medmnistplus": {"objective": "rank_pairwise"},
    # Quick-Tune (18 datasets): regression 0.069 against rank_pairwise 0.083 on all 18, but fitted on 12
    # random others (10 draws, the same for both) 0.149 +- 0.036 against 0.100 +- 0.028, and rank_pairwise
    # won the inner leave-one-dataset-out of 10 of the 18 nested folds (on 17 datasets regression scored
    # 0.13 typically): regression's 0.069 holds only for this exact pool.
    "quicktune-extended": {"objective": "rank_pairwise"},
}


def default_params(df: pd.DataFrame) -> dict[str, Any]:
    """The MetaLearner settings for a meta-dataset: ``KNOWLEDGE_BASE_SETTINGS`` of its search space when
    it has exactly one listed there, else none (the class defaults)."""
    spaces = set(df["search_space"].dropna().unique()) if "search_space" in df else set()
    return dict(KNOWLEDGE_BASE_SETTINGS.get(spaces.pop(), {})) if len(spaces) == 1 else {}


def unused_meta_features(df: pd.DataFrame) -> dict[str, str]:
    """Meta-features (no prefix) the learner leaves out, with the reason (see the module docstring)."""
    out = {name: f"set by the config: equal to its {name!r} setting on every run"
           for name in config_set_meta_features(df)}
    per_dataset = df.groupby("dataset_id", sort=True)
    for column in meta_feature_columns(df):
        name = column[len(MF_PREFIX):]
        if name in out:
            continue
        known = per_dataset[column].apply(lambda values: values.notna().any())
        if (~known).mean() > MAX_MISSING_DATASET_SHARE:
            out[name] = f"too sparse: known for {int(known.sum())} of {len(known)} datasets"
    return out


def within_dataset_target(accuracy: np.ndarray, datasets: np.ndarray, kind: str = "minmax") -> np.ndarray:
    """Accuracy rescaled inside each dataset: min-max to [0, 1] ("minmax") or rank percentile ("rank").

    A dataset whose runs all share one accuracy gets 0.5 everywhere.
    """
    out = np.full(len(accuracy), 0.5)
    for dataset in np.unique(datasets):
        rows = datasets == dataset
        values = accuracy[rows]
        if kind == "rank":
            if len(values) > 1:
                out[rows] = (pd.Series(values).rank(method="average").to_numpy() - 1) / (len(values) - 1)
            continue
        low, high = values.min(), values.max()
        if high > low:
            out[rows] = (values - low) / (high - low)
    return out


def candidate_configs(df: pd.DataFrame) -> pd.DataFrame:
    """The distinct configs of a meta-dataset, one row each, sorted by ``candidate_id``.

    Columns: candidate_id (sha256 of the config's canonical JSON, 16 hex digits), the cfg_ columns,
    n_runs and n_datasets (how often the config was run, and on how many datasets).
    """
    columns = config_columns(df)
    if not columns:
        raise SchemaError("the meta-dataset has no cfg_ columns to take candidate configs from")
    ids = [config_id(row_config(row)) for row in df[columns].to_dict(orient="records")]
    table = df[columns].assign(candidate_id=ids, _dataset=df["dataset_id"].to_numpy() if "dataset_id" in df else None)
    counts = table.groupby("candidate_id").agg(n_runs=("candidate_id", "size"), n_datasets=("_dataset", "nunique"))
    first = table.drop_duplicates("candidate_id").set_index("candidate_id")[columns]
    out = first.join(counts).sort_index().reset_index()
    return out[["candidate_id", *columns, "n_runs", "n_datasets"]]


def config_id(config: dict[str, Any]) -> str:
    """Stable id of a config dict (keys without prefix): sha256 of its canonical JSON, 16 hex digits."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:16]


PORTFOLIO_NOT_APPLICABLE = ("no config of the meta-dataset was run on two datasets (Quick-Tune's are all distinct): a "
                            "portfolio, the config best on average over datasets, cannot be formed")


def portfolio_applicable(df: pd.DataFrame) -> bool:
    """Whether some config was run on at least two datasets of ``df`` (else a portfolio means nothing)."""
    return bool(len(df)) and int(portfolio_scores(df)["n_datasets"].max()) >= 2


def portfolio_scores(df: pd.DataFrame) -> pd.DataFrame:
    """Configs of a meta-dataset ranked by mean within-dataset min-max normalised accuracy.

    Columns: candidate_id (``config_id``), config (dict), mean_normalized_accuracy, n_datasets; best
    first (ties: more datasets, then the id). A run without accuracy counts as its dataset's worst.
    """
    runs = df[["dataset_id", "accuracy", *config_columns(df)]].copy()
    runs["accuracy"] = runs.groupby("dataset_id")["accuracy"].transform(lambda a: a.fillna(a.min()))
    runs = runs[runs["accuracy"].notna()]
    if runs.empty:
        raise SchemaError("no run has an accuracy; the portfolio has nothing to rank")
    runs["normalized"] = within_dataset_target(runs["accuracy"].to_numpy(float), runs["dataset_id"].to_numpy())
    configs = [row_config(row) for row in runs[config_columns(runs)].to_dict("records")]
    runs["candidate_id"] = [config_id(c) for c in configs]
    per_dataset = runs.groupby(["candidate_id", "dataset_id"])["normalized"].max().reset_index()
    table = per_dataset.groupby("candidate_id").agg(mean_normalized_accuracy=("normalized", "mean"),
                                                    n_datasets=("dataset_id", "nunique"))
    first = dict(zip(runs["candidate_id"], configs))
    table["config"] = [first[i] for i in table.index]
    table = table.reset_index().sort_values(["mean_normalized_accuracy", "n_datasets", "candidate_id"],
                                            ascending=[False, False, True], kind="stable")
    return table.reset_index(drop=True)


def _z(values: np.ndarray) -> np.ndarray:
    spread = values.std()
    return (values - values.mean()) / spread if spread > 0 else np.zeros_like(values)


def _predict(booster: xgb.Booster, x: np.ndarray) -> np.ndarray:
    return np.asarray(booster.inplace_predict(x, missing=np.nan), dtype=np.float64)


def _load_booster(path: Path, n_jobs: int) -> xgb.Booster:
    if not path.is_file():
        raise ConfigError(f"{path.parent} lacks {path.name}; save the meta-learner again")
    booster = xgb.Booster()
    booster.load_model(str(path))
    booster.set_param({"nthread": n_jobs})
    return booster


def _numeric(rows: pd.DataFrame, column: str, n: int) -> np.ndarray:
    if column not in rows.columns:
        return np.full(n, np.nan)
    values = rows[column]
    if pd.api.types.is_numeric_dtype(values):
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    converted = pd.to_numeric(values, errors="coerce")
    bad = converted.isna() & values.notna()
    if bad.any():
        raise ConfigError(f"column {column!r} must be numeric; got {values[bad].iloc[0]!r}")
    return converted.to_numpy(dtype=np.float64, na_value=np.nan)


def _safe_name(name: str) -> str:
    """A feature name XGBoost accepts (no '[', ']' or '<')."""
    for char, replacement in _FORBIDDEN_NAME_CHARS.items():
        name = name.replace(char, replacement)
    return name
