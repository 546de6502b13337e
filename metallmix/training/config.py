"""The training config: its keys, allowed values, defaults, and validation."""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping

from metallmix.errors import ConfigError
from metallmix.training.backbones import BACKBONES, WEIGHTS, get_spec

STRATEGIES = ("frozen", "partial", "full", "knn")
OPTIMIZERS = ("sgd", "adam", "adamw")
AUGMENTATIONS = ("none", "light", "strong")
SCHEDULERS = ("none", "cosine")

# Every key but "backbone" has a default; input_size defaults to the backbone's native size.
DEFAULTS: dict[str, Any] = {
    "weights": "imagenet",
    "strategy": "frozen",
    "lr": 1e-3,
    "batch_size": 32,
    "optimizer": "adam",
    "epochs": 10,
    "weight_decay": 0.0,
    "dropout": 0.0,
    "augmentation": "none",
    "input_size": None,
    "scheduler": "none",
    "label_smoothing": 0.0,
    "amp": False,
    "pad_to": None,
    "early_stopping_patience": None,
    "knn_k": 11,
}
KNOWN_KEYS = ("backbone", *DEFAULTS)
# Keys added after sweeps had been recorded: a validated config holds them only where they apply and
# are set, so that every earlier config validates to the same dict and keeps its run id.
LATER_KEYS = ("pad_to", "early_stopping_patience", "knn_k")
# What strategy "knn" does not use (it trains nothing): left out of its validated config, so that knn
# configs differing only there are one run. knn_k is used by "knn" only and left out of the others.
TRAINING_KEYS = ("lr", "batch_size", "optimizer", "epochs", "weight_decay", "dropout", "augmentation",
                 "scheduler", "label_smoothing", "early_stopping_patience")


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value.lower() not in allowed:
        raise ConfigError(f"config {key}={value!r} is not allowed; choose one of {', '.join(allowed)}")
    return value.lower()


def _integer(key: str, value: Any, minimum: int, why: str = "") -> int:
    integral = isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not integral or int(value) < minimum:
        raise ConfigError(f"config {key}={value!r} must be an integer >= {minimum}{why}")
    return int(value)


def _real(key: str, value: Any, *, low: float, high: float = math.inf, low_open: bool, rule: str) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and value < high
    if not ok:
        raise ConfigError(f"config {key}={value!r} must be a finite number {rule}")
    return float(value)


def _model_input(backbone: str, input_size: Any, pad_to: Any) -> tuple[int, int | None]:
    """(input_size, pad_to), checked against the smallest (and, for some, the multiple of) input the
    backbone accepts: the side the model sees is pad_to where images are padded, else input_size."""
    spec = get_spec(backbone)
    why = f" (the smallest input {backbone} accepts)"
    if pad_to is None:
        size = _integer("input_size", input_size, spec.min_input_size, why)
        key, side = "input_size", size
    else:
        size = _integer("input_size", input_size, 1)
        floor = f" (at least input_size={size} and {spec.min_input_size}, the smallest input {backbone} accepts)"
        pad_to = _integer("pad_to", pad_to, max(size, spec.min_input_size), floor)
        key, side = "pad_to", pad_to
    if side % spec.input_multiple:
        raise ConfigError(f"config {key}={side} must be a multiple of {spec.input_multiple} for {backbone}")
    return size, pad_to


def validate_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A normalised copy of ``config`` with defaults filled; ConfigError names any bad key or value.

    Equal configs give equal dicts: keys a strategy does not use are left out (strategy "knn" trains
    nothing, so it keeps no optimiser settings; only "knn" keeps knn_k), and so are pad_to and
    early_stopping_patience while unset (see LATER_KEYS).
    """
    if not isinstance(config, Mapping):
        raise ConfigError(f"config must be a mapping of hyperparameters, got {type(config).__name__}")
    unknown = sorted(str(k) for k in config if k not in KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(unknown)}; known keys: {', '.join(KNOWN_KEYS)}")
    if "backbone" not in config:
        raise ConfigError(f"config needs a 'backbone'; choose one of {', '.join(BACKBONES)}")
    merged = {**DEFAULTS, **config}
    backbone = _choice("backbone", merged["backbone"], tuple(BACKBONES))
    input_size = get_spec(backbone).default_input_size if merged["input_size"] is None else merged["input_size"]
    input_size, pad_to = _model_input(backbone, input_size, merged["pad_to"])
    amp = merged["amp"]
    if not isinstance(amp, bool):
        raise ConfigError(f"config amp={amp!r} must be true or false")
    patience = merged["early_stopping_patience"]
    validated = {
        "backbone": backbone,
        "weights": _choice("weights", merged["weights"], WEIGHTS),
        "strategy": _choice("strategy", merged["strategy"], STRATEGIES),
        "lr": _real("lr", merged["lr"], low=0.0, low_open=True, rule="> 0"),
        "batch_size": _integer("batch_size", merged["batch_size"], 1),
        "optimizer": _choice("optimizer", merged["optimizer"], OPTIMIZERS),
        "epochs": _integer("epochs", merged["epochs"], 1),
        "weight_decay": _real("weight_decay", merged["weight_decay"], low=0.0, low_open=False, rule=">= 0"),
        "dropout": _real("dropout", merged["dropout"], low=0.0, high=1.0, low_open=False, rule="in [0, 1)"),
        "augmentation": _choice("augmentation", merged["augmentation"], AUGMENTATIONS),
        "input_size": input_size,
        "scheduler": _choice("scheduler", merged["scheduler"], SCHEDULERS),
        "label_smoothing": _real(
            "label_smoothing", merged["label_smoothing"], low=0.0, high=1.0, low_open=False, rule="in [0, 1)"
        ),
        "amp": amp,
        "pad_to": pad_to,
        "early_stopping_patience": None if patience is None else _integer("early_stopping_patience", patience, 1),
        "knn_k": _integer("knn_k", merged["knn_k"], 1),
    }
    knn = validated["strategy"] == "knn"
    unused = set(TRAINING_KEYS) if knn else {"knn_k"}
    return {k: v for k, v in validated.items() if k not in unused and not (k in LATER_KEYS and v is None)}
