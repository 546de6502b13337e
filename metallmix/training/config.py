"""The training config: its keys, allowed values, defaults, and validation."""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping

from metallmix.errors import ConfigError
from metallmix.training.backbones import BACKBONES, WEIGHTS, get_spec

STRATEGIES = ("frozen", "partial", "full")
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
}
KNOWN_KEYS = ("backbone", *DEFAULTS)


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


def validate_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A normalised copy of ``config`` with defaults filled; ConfigError names any bad key or value."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"config must be a mapping of hyperparameters, got {type(config).__name__}")
    unknown = sorted(str(k) for k in config if k not in KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(unknown)}; known keys: {', '.join(KNOWN_KEYS)}")
    if "backbone" not in config:
        raise ConfigError(f"config needs a 'backbone'; choose one of {', '.join(BACKBONES)}")
    merged = {**DEFAULTS, **config}
    backbone = _choice("backbone", merged["backbone"], tuple(BACKBONES))
    spec = get_spec(backbone)
    input_size = spec.default_input_size if merged["input_size"] is None else merged["input_size"]
    input_size = _integer("input_size", input_size, spec.min_input_size, f" (the smallest input {backbone} accepts)")
    amp = merged["amp"]
    if not isinstance(amp, bool):
        raise ConfigError(f"config amp={amp!r} must be true or false")
    return {
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
    }
