"""Why a config scores high: SHAP (TreeExplainer) on the meta-learner's accuracy model.

Local explanations use TreeSHAP in its path-dependent form: the expected value and the attributions
come from the trees and the training covers recorded in them, i.e. from the fitting data only, and
for every row ``sum(shap values) == model output - expected value`` (SHAP's local accuracy). Global
importance is the mean |SHAP value| over a background sample of the fitting data, which is also what
``save_summary_plot`` draws.

``contrast`` answers "why this config rather than that one" for two configs on the same dataset: the
difference of their SHAP values, summed per config setting (the one-hot columns of a setting count as
one), puts the predicted gap on the settings in which they differ; the meta-features, equal for both,
add only what their interactions with those settings move ("dataset context").

Attributions are in the units of the model's output; ``points_per_unit`` converts them to accuracy
points (100 when the model predicts accuracy as a fraction in [0, 1]).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import shap
import xgboost as xgb

from metallmix.data.descriptors import DESCRIPTOR_FEATURES
from metallmix.errors import ConfigError
from metallmix.metadataset.schema import CFG_PREFIX, MF_PREFIX

BACKGROUND_FILE = "background.parquet"
STATE_FILE = "explainer.json"
FORMAT_VERSION = 1


LOG10_SUFFIX = "_log10"


def readable_feature(name: str) -> str:
    """'mf_n_classes' -> 'n_classes' (dataset), 'cfg_lr' -> 'lr' (config); other names unchanged."""
    for prefix in (MF_PREFIX, CFG_PREFIX):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def display_feature(name: str, value: Any) -> str:
    """How a feature and its value read in a sentence, following the meta-learner's encoding.

    One-hot columns ``cfg_<name>=<level>`` read "model is vit" (1) or "model is not vit" (0), and so do
    the modality and task meta-features ("modality is ultrasound");
    log-encoded ``cfg_<name>_log10`` columns read "lr = 0.001"; others "n_classes = 40".
    """
    short = readable_feature(name)
    missing = value is None or (isinstance(value, (float, np.floating)) and np.isnan(value))
    if short in DESCRIPTOR_FEATURES:  # the 0/1 modality and task features of metallmix.data.descriptors
        group, _, level = short.partition("_")
        if missing:
            return f"{group} unknown"
        return f"{group} is {level}" if float(value) >= 0.5 else f"{group} is not {level}"
    if name.startswith(CFG_PREFIX) and "=" in short:
        column, _, level = short.partition("=")
        if missing:
            return f"{column} unset"
        return f"{column} is {level}" if float(value) >= 0.5 else f"{column} is not {level}"
    if name.startswith(CFG_PREFIX) and short.endswith(LOG10_SUFFIX):
        short = short[: -len(LOG10_SUFFIX)]
        return f"{short} = missing" if missing else f"{short} = {_format_value(10.0 ** float(value))}"
    return f"{short} = {'missing' if missing else _format_value(value)}"


def feature_kind(name: str) -> str:
    """'dataset' for meta-features, 'config' for hyperparameters, 'other' for anything else."""
    if name.startswith(MF_PREFIX):
        return "dataset"
    if name.startswith(CFG_PREFIX):
        return "config"
    return "other"


def _format_value(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return "missing"
        if float(value).is_integer() and abs(value) < 1e12:
            return str(int(value))
        return f"{float(value):.3g}"
    return str(value)


class ShapExplainer:
    """SHAP explanations of a tree model's predictions, in accuracy points.

    Args:
        model: the fitted tree model (an XGBoost regressor or Booster) that the explanations are of.
        feature_names: the model's input columns, in order.
        background: rows of the model's input built from the fitting data only (global importance and
            the summary plot use them; local explanations do not need them).
        points_per_unit: accuracy points per unit of model output (100 for accuracy in [0, 1]).
        max_background: rows kept from ``background`` (a seeded sample when it is larger).
        random_state: seed of that sample.
    """

    def __init__(
        self,
        model: Any,
        feature_names: list[str],
        background: pd.DataFrame,
        *,
        points_per_unit: float = 100.0,
        max_background: int = 500,
        random_state: int = 0,
    ):
        missing = [f for f in feature_names if f not in background.columns]
        if missing:
            raise ConfigError(f"background lacks the model's features {missing}; build it with the meta-learner's feature_frame")
        if len(background) == 0:
            raise ConfigError("background is empty; give at least one row of the fitting data")
        if len(background) > max_background:
            background = background.sample(n=max_background, random_state=random_state)
        self.model = model
        self.feature_names = list(feature_names)
        self.background = background[self.feature_names].reset_index(drop=True)
        self.points_per_unit = float(points_per_unit)
        self._explainer = shap.TreeExplainer(model, feature_perturbation="tree_path_dependent")
        self._background_shap: np.ndarray | None = None
        self._global_importance: list[dict[str, Any]] | None = None

    @property
    def expected_value(self) -> float:
        """The model's expected output over its training data (model units)."""
        value = self._explainer.expected_value
        return float(np.asarray(value).reshape(-1)[0])

    def shap_values(self, rows: pd.DataFrame) -> np.ndarray:
        """SHAP values (n_rows, n_features), model units; each row sums to output - expected_value."""
        missing = [f for f in self.feature_names if f not in rows.columns]
        if missing:
            raise ConfigError(f"rows lack the model's features {missing}")
        matrix = rows[self.feature_names].to_numpy(dtype=np.float32)
        if isinstance(self.model, xgb.Booster):
            # one thread: building a DMatrix with every core costs more than the SHAP of a few rows
            matrix = xgb.DMatrix(matrix, feature_names=self.feature_names, missing=np.nan, nthread=1)
        values = self._explainer.shap_values(matrix, check_additivity=False)
        return np.asarray(values, dtype=np.float64).reshape(len(rows), len(self.feature_names))

    def explain(self, rows: pd.DataFrame, top_n: int = 5) -> list[dict[str, Any]]:
        """One structured explanation per row (see ``explanation_from_values``)."""
        values = self.shap_values(rows)
        frame = rows[self.feature_names].reset_index(drop=True)
        return [
            self.explanation_from_values(values[i], frame.iloc[i], top_n=top_n)
            for i in range(len(frame))
        ]

    def explanation_from_values(self, values: np.ndarray, row: pd.Series, top_n: int = 5) -> dict[str, Any]:
        """Evidence for one prediction: base value, prediction, top features by |SHAP|, and a text.

        Each top feature is {feature, name, kind, value, display, shap, points, direction}: ``value``
        is the model's input, ``display`` a readable "lr = 0.001", ``shap`` in model units,
        ``points`` in accuracy points, ``direction`` "raises" or "lowers".
        """
        base = self.expected_value
        order = np.argsort(-np.abs(values), kind="stable")[:top_n]
        top = []
        for j in order:
            name = self.feature_names[int(j)]
            value = row[name]
            top.append(
                {
                    "feature": name,
                    "name": readable_feature(name),
                    "kind": feature_kind(name),
                    "value": _json_value(value),
                    "display": display_feature(name, value),
                    "shap": float(values[j]),
                    "points": float(values[j] * self.points_per_unit),
                    "direction": "raises" if values[j] >= 0 else "lowers",
                }
            )
        shown = float(sum(values[j] for j in order))
        return {
            "base_value": base,
            "prediction": float(base + values.sum()),
            "top_features": top,
            "other_features_points": float((values.sum() - shown) * self.points_per_unit),
            "text": self.render_text(top),
        }

    @staticmethod
    def render_text(top_features: list[dict[str, Any]]) -> str:
        """'lr = 0.001 raises predicted accuracy by 2.3 points; n_classes = 40 lowers it by 1.1 points.'"""
        parts = []
        for i, item in enumerate(top_features):
            what = "predicted accuracy" if i == 0 else "it"
            parts.append(f"{item['display']} {item['direction']} {what} by {abs(item['points']):.1f} points")
        return ("; ".join(parts) + ".") if parts else "no feature moves the prediction."

    def contrast(self, rows: pd.DataFrame, groups: dict[str, str], configs: tuple[dict[str, Any], dict[str, Any]],
                 top_n: int = 4) -> dict[str, Any]:
        """Why the first of two rows (one dataset, two configs) is predicted above or below the second.

        Args:
            rows: the model's input for the two configs (first: the pick, second: its rival).
            groups: feature name -> the meta-dataset column it encodes (``MetaLearner.feature_groups``).
            configs: the two configs (keys without prefix), to name the settings that differ.

        Returns {gap_points, settings: [{setting, pick, rival, points}] (settings that differ, largest
        |points| first, at most ``top_n``), other_settings_points, dataset_context_points, text}; the
        parts sum to the gap.
        """
        values = self.shap_values(rows)
        difference = (values[0] - values[1]) * self.points_per_unit
        by_column: dict[str, float] = {}
        for name, points in zip(self.feature_names, difference):
            column = groups.get(name, name)
            by_column[column] = by_column.get(column, 0.0) + float(points)
        pick, rival = configs
        settings, other, context = [], 0.0, 0.0
        for column, points in by_column.items():
            if column.startswith(MF_PREFIX):
                context += points
                continue
            key = readable_feature(column)
            if column.startswith(CFG_PREFIX) and pick.get(key) != rival.get(key):
                settings.append({"setting": key, "pick": _json_value(pick.get(key)), "rival": _json_value(rival.get(key)),
                                 "points": points})
            else:
                other += points
        settings.sort(key=lambda item: -abs(item["points"]))
        other += sum(item["points"] for item in settings[top_n:])
        settings = settings[:top_n]
        gap = float(difference.sum())
        parts = [f"{s['setting']} {_format_value(s['pick'])} instead of {_format_value(s['rival'])}: {s['points']:+.1f} points"
                 for s in settings]
        if abs(context) >= 0.05:
            parts.append(f"this dataset's meta-features, through their interplay with those settings: {context:+.1f} points")
        if abs(other) >= 0.05:
            parts.append(f"the settings they share, through their interplay: {other:+.1f} points")
        text = "; ".join(parts) + f" (predicted gap {gap:+.1f} points)" if parts else f"predicted gap {gap:+.1f} points"
        return {"gap_points": gap, "settings": settings, "other_settings_points": other,
                "dataset_context_points": context, "text": text}

    def global_importance(self) -> list[dict[str, Any]]:
        """Mean |SHAP| over the background, in accuracy points, most important first (computed once)."""
        if self._global_importance is None:
            self._global_importance = self._compute_global_importance()
        return [dict(item) for item in self._global_importance]

    def _compute_global_importance(self) -> list[dict[str, Any]]:
        mean_abs = np.abs(self._background_values()).mean(axis=0) * self.points_per_unit
        order = np.argsort(-mean_abs, kind="stable")
        return [
            {
                "feature": self.feature_names[int(j)],
                "name": readable_feature(self.feature_names[int(j)]),
                "kind": feature_kind(self.feature_names[int(j)]),
                "mean_abs_points": float(mean_abs[j]),
            }
            for j in order
        ]

    def _background_values(self) -> np.ndarray:
        if self._background_shap is None:
            self._background_shap = self.shap_values(self.background)
        return self._background_shap

    def save_summary_plot(self, path: str | Path, max_display: int = 15) -> Path:
        """Write a SHAP summary (beeswarm) plot of the background as a PNG; returns the path."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        shown = self.background.astype(float)
        shown.columns = [readable_feature(c) for c in self.feature_names]
        plt.figure()
        shap.summary_plot(self._background_values() * self.points_per_unit, shown, max_display=max_display, show=False)
        figure = plt.gcf()
        figure.axes[0].set_xlabel("SHAP value (accuracy points)")
        figure.axes[0].set_title(f"Accuracy model: SHAP over {len(self.background)} fitting runs")
        figure.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(figure)
        return path

    def save_waterfall_plot(self, row: pd.DataFrame, path: str | Path, title: str = "", max_display: int = 12) -> Path:
        """Write a SHAP waterfall plot of one row's prediction (accuracy points) as a PNG; returns the path."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        values = self.shap_values(row)[0] * self.points_per_unit
        explanation = shap.Explanation(values=values, base_values=self.expected_value * self.points_per_unit,
                                       data=row[self.feature_names].to_numpy(dtype=float)[0],
                                       feature_names=[readable_feature(c) for c in self.feature_names])
        plt.figure()
        shap.plots.waterfall(explanation, max_display=max_display, show=False)
        figure = plt.gcf()
        figure.suptitle(title or "Predicted accuracy (points): SHAP waterfall", fontsize=10)
        figure.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(figure)
        return path

    def save(self, folder: str | Path) -> Path:
        """Write the background (Parquet) and the settings (JSON); the model is saved by its owner."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.background.to_parquet(folder / BACKGROUND_FILE, index=False)
        state = {
            "format_version": FORMAT_VERSION,
            "feature_names": self.feature_names,
            "points_per_unit": self.points_per_unit,
            "global_importance": self.global_importance(),
        }
        (folder / STATE_FILE).write_text(json.dumps(state, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path, model: Any) -> ShapExplainer:
        """Rebuild the explainer of ``model`` from what ``save`` wrote."""
        folder = Path(folder)
        if not (folder / STATE_FILE).is_file() or not (folder / BACKGROUND_FILE).is_file():
            raise ConfigError(f"{folder} holds no saved ShapExplainer (needs {STATE_FILE} and {BACKGROUND_FILE})")
        state = json.loads((folder / STATE_FILE).read_text())
        if state.get("format_version") != FORMAT_VERSION:
            raise ConfigError(f"{folder / STATE_FILE} has format_version {state.get('format_version')}, expected {FORMAT_VERSION}; refit")
        background = pd.read_parquet(folder / BACKGROUND_FILE)
        explainer = cls(
            model,
            state["feature_names"],
            background,
            points_per_unit=state["points_per_unit"],
            max_background=max(len(background), 1),
        )
        explainer._global_importance = state["global_importance"]
        return explainer


def _json_value(value: Any) -> Any:
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if np.isnan(value) else float(value)
    return str(value)
