"""Turning a dataset config (plain mapping or OmegaConf DictConfig) into checked, typed options."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from metallmix.errors import ConfigError

OptionsT = TypeVar("OptionsT")

HYDRA_MISSING = "???"


def plain_config(cfg: Any) -> dict[str, Any]:
    """A plain, resolved dict copy of ``cfg`` (a Mapping or an OmegaConf DictConfig)."""
    try:
        from omegaconf import DictConfig, OmegaConf
    except ImportError:  # omegaconf comes with hydra-core; plain dicts work without it
        DictConfig = None
    if DictConfig is not None and isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"a dataset config must be a mapping with a 'kind' key, got {type(cfg).__name__}")
    return {str(k): (plain_config(v) if isinstance(v, Mapping) else v) for k, v in cfg.items()}


def config_kind(cfg: Mapping[str, Any], kinds: tuple[str, ...]) -> str:
    kind = cfg.get("kind")
    if kind not in kinds:
        raise ConfigError(f"dataset config has kind={kind!r}; set 'kind' to one of {list(kinds)}")
    return str(kind)


def parse_options(options_cls: type[OptionsT], cfg: Mapping[str, Any], kind: str) -> OptionsT:
    """Build ``options_cls`` (a dataclass) from ``cfg``, rejecting unknown and missing keys.

    The dataclass's ``__post_init__`` checks the values themselves.
    """
    data = {k: v for k, v in plain_config(cfg).items() if k != "kind"}
    fields = {f.name: f for f in dataclasses.fields(options_cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"dataset kind {kind!r} has no option(s) {unknown}; its options are {sorted(fields)}")
    for name, field in fields.items():
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        if data.get(name, HYDRA_MISSING if required else None) == HYDRA_MISSING:
            raise ConfigError(f"dataset kind {kind!r} needs option {name!r} (e.g. dataset.{name}=...)")
    return options_cls(**data)


def check_int(name: str, value: Any, low: int, high: int | None = None, *, optional: bool = False) -> None:
    """Raise ConfigError unless ``value`` is an int in [low, high] (or None when ``optional``)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise ConfigError(f"dataset option {name} must be {bound}, got {value!r}")


def check_float(
    name: str, value: Any, low: float, high: float | None = None, *, optional: bool = False, low_open: bool = False
) -> None:
    """Raise ConfigError unless ``value`` is a number in [low, high] ((low, high] when ``low_open``)."""
    if value is None and optional:
        return
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or value < low or (low_open and value == low) or (high is not None and value > high):
        left = "(" if low_open else "["
        bound = f"a number in {left}{low}, {high}]" if high is not None else f"a number {'>' if low_open else '>='} {low}"
        raise ConfigError(f"dataset option {name} must be {bound}, got {value!r}")


def format_number(value: float) -> str:
    """Short, stable text for a number in a dataset id: 3 -> '3', 0.25 -> '0.25', 2.5e-05 -> '2.5e-05'."""
    return f"{float(value):g}"
