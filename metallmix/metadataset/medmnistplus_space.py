"""The MedMNIST+ grid as a sweep space: points in the benchmark's vocabulary, run as metallmix training.

``conf/space/medmnistplus.yaml`` names this module as its ``translation`` (the protocol
:class:`metallmix.sweep.SpaceTranslation`). A point is written as the importer writes a MedMNIST+ row's
config: ``model`` (the benchmark's timm name), ``scheme`` (end_to_end | linear_probing | knn) and
``resolution``, completed by the settings the benchmark shared (``FIXED_SETTINGS`` of
:mod:`metallmix.metadataset.medmnistplus`, or ``KNN_SETTINGS`` for k-NN; a point may override them).
So a row recorded by the sweep carries exactly the cfg_ columns and values of the imported rows for the
same point, and the two compare.

A point runs as a metallmix training config: the model's backbone (``timm/<model>``; AlexNet is
torchvision's), strategy full / frozen / knn, the dataset's images resized to ``resolution`` and
zero-padded to ``pad_to``, AdamW with timm's default weight decay (0.01), cross-entropy with no label
smoothing, no augmentation or extra dropout, early stopping on the validation loss. The row's
``resolution`` meta-feature is the point's resolution (the side the run trained at, as in the imported
rows), and a point whose resolution exceeds the dataset's images is not run: the benchmark never upsampled.
"""

from __future__ import annotations

import numbers
from typing import Any, Mapping

from metallmix.errors import ConfigError
from metallmix.metadataset.medmnistplus import FIXED_SETTINGS, KNN_SETTINGS

# The benchmark's models and the training box's backbones that are them.
BACKBONE_OF_MODEL: dict[str, str] = {
    "alexnet": "alexnet",
    **{model: f"timm/{model}" for model in (
        "vgg16", "resnet18", "densenet121", "efficientnet_b4", "vit_base_patch16_224", "vit_base_patch16_clip_224",
        "eva02_base_patch16_clip_224", "vit_base_patch16_224.dino", "samvit_base_patch16",
    )},
}
STRATEGY_OF_SCHEME = {"end_to_end": "full", "linear_probing": "frozen", "knn": "knn"}
POINT_KEYS = ("model", "scheme", "resolution")
# How the benchmark trained beyond what its rows record: timm's AdamW default weight decay, its
# models' fresh heads without dropout, plain cross-entropy, no augmentation.
IMPLIED_SETTINGS: dict[str, Any] = {"weight_decay": 0.01, "dropout": 0.0, "label_smoothing": 0.0,
                                    "augmentation": "none"}
# The training config's names of the benchmark's settings, where they differ.
TRAINING_NAME = {"max_epochs": "epochs"}
SKIP_REASON = "resolution above the dataset's image side (MedMNIST+ never upsampled)"


def _settings(scheme: str) -> dict[str, Any]:
    return KNN_SETTINGS if scheme == "knn" else FIXED_SETTINGS


def _normalised(key: str, value: Any, like: Any) -> Any:
    """``value`` with the type of the benchmark's own value ``like`` (so equal points give equal dicts)."""
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if isinstance(like, str) and isinstance(value, str):
        return value.lower()
    if isinstance(like, int) and real and float(value).is_integer():
        return int(value)
    if isinstance(like, float) and real:
        return float(value)
    kind = {str: "a string", int: "an integer", float: "a number"}[type(like)]
    raise ConfigError(f"MedMNIST+ point: {key}={value!r} must be {kind} (the benchmark's value is {like!r})")


def recorded_config(point: Mapping[str, Any]) -> dict[str, Any]:
    """The config a row records for ``point``: model, scheme, resolution and the scheme's settings (the
    point's own values where it gives them), keyed and ordered as the MedMNIST+ importer writes them."""
    missing = [key for key in POINT_KEYS if key not in point]
    if missing:
        raise ConfigError(f"MedMNIST+ point {dict(point)} lacks {missing}; a point needs {list(POINT_KEYS)}")
    model, scheme = point["model"], point["scheme"]
    if model not in BACKBONE_OF_MODEL:
        raise ConfigError(f"MedMNIST+ point: model={model!r} is not one of the benchmark's models "
                          f"{', '.join(BACKBONE_OF_MODEL)}")
    if scheme not in STRATEGY_OF_SCHEME:
        raise ConfigError(f"MedMNIST+ point: scheme={scheme!r} is not one of {', '.join(STRATEGY_OF_SCHEME)}")
    settings = _settings(scheme)
    unknown = sorted(set(point) - set(POINT_KEYS) - set(settings))
    if unknown:
        raise ConfigError(f"MedMNIST+ point: {', '.join(unknown)} do(es) not apply to scheme {scheme!r}; "
                          f"its settings are {', '.join(settings)}")
    resolution = _normalised("resolution", point["resolution"], 0)
    return {"model": model, "scheme": scheme, "resolution": resolution,
            **{key: _normalised(key, point.get(key, value), value) for key, value in settings.items()}}


def training_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The metallmix training config that runs a recorded MedMNIST+ config."""
    scheme = config["scheme"]
    training: dict[str, Any] = {
        "backbone": BACKBONE_OF_MODEL[config["model"]],
        "strategy": STRATEGY_OF_SCHEME[scheme],
        "input_size": config["resolution"],
    }
    if scheme != "knn":
        training.update(IMPLIED_SETTINGS)
    for key in _settings(scheme):
        training[TRAINING_NAME.get(key, key)] = config[key]
    return training


def skip_reason(config: Mapping[str, Any], meta_features: Mapping[str, float]) -> str | None:
    """Why ``config`` is not run on a dataset with these meta-features (None: it is run)."""
    return SKIP_REASON if config["resolution"] > meta_features["resolution"] else None


def row_meta_features(config: Mapping[str, Any], meta_features: Mapping[str, float]) -> dict[str, float]:
    """The row's meta-features: the dataset's, with ``resolution`` the side the run trained at."""
    return {**meta_features, "resolution": float(config["resolution"])}
