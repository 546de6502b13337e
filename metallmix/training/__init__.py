"""The training box: backbones by name, config validation, and ``train_run`` (one run = one meta-dataset row)."""

from metallmix.training.backbones import (
    BACKBONES,
    TIMM_PREFIX,
    WEIGHTS,
    BackboneInfo,
    backbone_info,
    build_model,
    check_weights_available,
    mean_std,
)
from metallmix.training.config import (
    AUGMENTATIONS,
    DEFAULTS,
    KNOWN_KEYS,
    OPTIMIZERS,
    SCHEDULERS,
    STRATEGIES,
    validate_config,
)
from metallmix.training.train import train_run

__all__ = [
    "AUGMENTATIONS",
    "BACKBONES",
    "DEFAULTS",
    "KNOWN_KEYS",
    "OPTIMIZERS",
    "SCHEDULERS",
    "STRATEGIES",
    "TIMM_PREFIX",
    "WEIGHTS",
    "BackboneInfo",
    "backbone_info",
    "build_model",
    "check_weights_available",
    "mean_std",
    "train_run",
    "validate_config",
]
