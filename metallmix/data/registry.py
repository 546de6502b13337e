"""Dispatch from a dataset config (``kind: ...``) to its loader, id and description."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from metallmix.data import derived, generated, imagefolder, medmnist
from metallmix.data._config import config_kind, parse_options, plain_config
from metallmix.data.base import ImageDataset


@dataclass(frozen=True)
class DatasetKind:
    """How one ``kind`` of dataset config is parsed, named, described and loaded."""

    options: type
    make_id: Callable[[Any], str]
    modality: Callable[[Any], str]
    load: Callable[[Any], ImageDataset]


KINDS: dict[str, DatasetKind] = {
    "medmnist": DatasetKind(medmnist.MedMNISTOptions, medmnist.make_id, medmnist.modality, medmnist.load),
    "imagefolder": DatasetKind(
        imagefolder.ImageFolderOptions, imagefolder.make_id, imagefolder.modality, imagefolder.load
    ),
    "generated": DatasetKind(generated.GeneratedOptions, generated.make_id, generated.modality, generated.load),
    "derived": DatasetKind(derived.DerivedOptions, derived.make_id, derived.modality, derived.load),
}


@dataclass(frozen=True)
class DatasetInfo:
    """What is known about a dataset config without loading its images."""

    dataset_id: str
    kind: str
    parent: str | None
    modality: str


def _resolve(cfg: Mapping[str, Any]) -> tuple[DatasetKind, Any]:
    plain = plain_config(cfg)
    kind = config_kind(plain, tuple(KINDS))
    return KINDS[kind], parse_options(KINDS[kind].options, plain, kind)


def load_dataset(cfg: Mapping[str, Any]) -> ImageDataset:
    """Load the dataset a config describes (a plain mapping or an OmegaConf DictConfig)."""
    kind, opts = _resolve(cfg)
    return kind.load(opts)


def dataset_id(cfg: Mapping[str, Any]) -> str:
    """The stable, readable id of a dataset config (the meta-dataset's dataset_id); loads nothing."""
    kind, opts = _resolve(cfg)
    return kind.make_id(opts)


def describe_dataset(cfg: Mapping[str, Any]) -> DatasetInfo:
    """Id, kind, root parent (derived datasets only) and modality of a config; loads nothing."""
    kind, opts = _resolve(cfg)
    name = plain_config(cfg)["kind"]
    parent = derived.root_parent(opts) if name == "derived" else None
    return DatasetInfo(dataset_id=kind.make_id(opts), kind=name, parent=parent, modality=kind.modality(opts))
