"""The in-memory image-classification dataset every loader returns and every trainer reads."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from metallmix.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass
class ImageDataset:
    """Images and labels for the train/val/test splits of one classification task.

    images[split] is a uint8 array of shape (N, H, W, C) (C = 1 or 3); labels[split] is an int64
    array of shape (N,) with values in [0, n_classes). ``kind`` says where the data came from
    ("medmnist", "imagefolder", "generated", "derived"); a derived dataset names its ``parent``.
    ``modality`` is the imaging modality given by config (e.g. "ultrasound", "fundus"), not inferred.
    ``description`` records how the dataset was made (file, generator parameters, derivation).
    """

    name: str
    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    n_classes: int
    kind: str
    modality: str = "unknown"
    parent: str | None = None
    class_names: list[str] | None = None
    description: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for split in SPLITS:
            if split not in self.images or split not in self.labels:
                raise DataError(f"dataset {self.name!r} has no {split!r} split; every dataset needs train, val and test")
            x, y = self.images[split], self.labels[split]
            if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
                raise DataError(
                    f"dataset {self.name!r}: {split} images must be uint8 (N, H, W, C) with C in (1, 3), "
                    f"got {x.dtype} {x.shape}"
                )
            if y.ndim != 1 or len(y) != len(x):
                raise DataError(f"dataset {self.name!r}: {split} labels must be shape ({len(x)},), got {y.shape}")
            if len(y) and (y.min() < 0 or y.max() >= self.n_classes):
                raise DataError(f"dataset {self.name!r}: {split} labels outside [0, {self.n_classes})")
        if len(self.labels["train"]) == 0:
            raise DataError(f"dataset {self.name!r} has an empty training split")
        if self.n_classes < 2 or len(np.unique(self.labels["train"])) < 2:
            raise DataError(f"dataset {self.name!r} has fewer than 2 classes in its training split; classification needs at least 2")

    @property
    def channels(self) -> int:
        return int(self.images["train"].shape[-1])

    @property
    def resolution(self) -> int:
        return int(self.images["train"].shape[1])

    def n_images(self) -> int:
        return sum(len(self.labels[s]) for s in SPLITS)
