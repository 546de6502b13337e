"""New tasks derived from any parent dataset config (kind ``derived``).

The parent is any dataset config, nested under ``parent:`` (a derived one too). The derivation, in
this order:

1. ``classes: [i, j, ...]`` keeps those parent classes, or ``n_classes: k`` keeps k picked by ``seed``
   (every split); labels are renumbered 0..k-1 in the parent's order.
2. ``max_train: n`` or ``train_fraction: f`` subsamples the training split, stratified; every class
   keeps at least one image (step 3 may then take fewer).
3. ``imbalance: r`` downsamples training classes so that largest / smallest = r (up to rounding): the
   classes keep their size order, sizes fall geometrically from the largest to the smallest, and the
   smallest is as large as the parent allows.
4. ``max_eval: n`` caps the val and test splits at n images each, stratified.
5. ``resolution: r`` resizes every image to r x r.

Random choices use ``seed``. The dataset's ``parent`` is the id of the real (non-derived) dataset at
the root of the chain, so that every task made from one dataset can be left out together; the
description names the immediate parent. :func:`derive_family` makes many varied derivations at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from metallmix.data._config import check_float, check_int, format_number, plain_config
from metallmix.data.base import SPLITS, ImageDataset
from metallmix.data.ops import class_counts, proportional_counts, resize_images, sample_per_class
from metallmix.errors import ConfigError, DataError

DERIVATION_KEYS = ("classes", "n_classes", "max_train", "train_fraction", "imbalance", "max_eval", "resolution")
FAMILY_RESOLUTIONS = (16, 24, 32, 48, 64, 96, 128, 224)


@dataclass(frozen=True)
class DerivedOptions:
    """Options of kind ``derived`` (see conf/dataset/derived.yaml)."""

    parent: Mapping[str, Any]
    classes: tuple[int, ...] | None = None
    n_classes: int | None = None
    max_train: int | None = None
    train_fraction: float | None = None
    imbalance: float | None = None
    max_eval: int | None = None
    resolution: int | None = None
    seed: int = 0
    modality: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.parent, Mapping) or "kind" not in self.parent:
            raise ConfigError(f"dataset option parent must be a dataset config with a 'kind' key, got {self.parent!r}")
        if self.classes is not None:
            classes = self.classes
            if not _is_int_list(classes):
                raise ConfigError(f"dataset option classes must be a list of parent class indices, got {classes!r}")
            if len(set(classes)) < 2 or len(set(classes)) != len(classes):
                raise ConfigError(f"dataset option classes needs at least 2 distinct class indices, got {list(classes)}")
            object.__setattr__(self, "classes", tuple(sorted(classes)))
            if self.n_classes is not None:
                raise ConfigError("set either classes or n_classes, not both")
        check_int("n_classes", self.n_classes, 2, optional=True)
        if self.max_train is not None and self.train_fraction is not None:
            raise ConfigError("set either max_train or train_fraction, not both")
        check_int("max_train", self.max_train, 2, optional=True)
        check_float("train_fraction", self.train_fraction, 0.0, 1.0, optional=True, low_open=True)
        check_float("imbalance", self.imbalance, 1.0, optional=True)
        check_int("max_eval", self.max_eval, 1, optional=True)
        check_int("resolution", self.resolution, 4, 1024, optional=True)
        check_int("seed", self.seed, 0)
        if all(getattr(self, key) is None for key in DERIVATION_KEYS):
            raise ConfigError(f"a derived dataset needs at least one of {list(DERIVATION_KEYS)}")

    def derivation(self) -> dict[str, Any]:
        """The derivation options that are set."""
        out = {key: getattr(self, key) for key in DERIVATION_KEYS if getattr(self, key) is not None}
        if "classes" in out:
            out["classes"] = list(out["classes"])
        return {**out, "seed": self.seed}


def _is_int_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(c, int) and not isinstance(c, bool) for c in value)


def make_id(opts: DerivedOptions) -> str:
    """``{parent id}~{derivation}``, e.g. ``breastmnist~n200-ib3-r16-s0``."""
    from metallmix.data.registry import dataset_id  # registry imports this module

    parts = []
    if opts.classes is not None:
        parts.append("cls" + "+".join(str(c) for c in opts.classes))
    if opts.n_classes is not None:
        parts.append(f"k{opts.n_classes}")
    if opts.max_train is not None:
        parts.append(f"n{opts.max_train}")
    if opts.train_fraction is not None:
        parts.append(f"f{format_number(opts.train_fraction)}")
    if opts.imbalance is not None:
        parts.append(f"ib{format_number(opts.imbalance)}")
    if opts.max_eval is not None:
        parts.append(f"e{opts.max_eval}")
    if opts.resolution is not None:
        parts.append(f"r{opts.resolution}")
    parts.append(f"s{opts.seed}")
    return f"{dataset_id(opts.parent)}~{'-'.join(parts)}"


def modality(opts: DerivedOptions) -> str:
    from metallmix.data.registry import describe_dataset

    return opts.modality or describe_dataset(opts.parent).modality


def root_parent(opts: DerivedOptions) -> str:
    """Id of the real dataset at the root of the derivation chain."""
    from metallmix.data.registry import describe_dataset

    info = describe_dataset(opts.parent)
    return info.parent if info.kind == "derived" else info.dataset_id


def load(opts: DerivedOptions) -> ImageDataset:
    """Load the parent and apply the derivation."""
    from metallmix.data.registry import load_dataset

    parent = load_dataset(opts.parent)
    kept, indices = plan(parent.labels, parent.n_classes, opts)
    relabel = np.full(parent.n_classes, -1, dtype=np.int64)
    relabel[kept] = np.arange(len(kept))
    images, labels = {}, {}
    for split in SPLITS:
        x = parent.images[split][indices[split]]
        images[split] = x if opts.resolution is None else resize_images(x, opts.resolution)
        labels[split] = relabel[parent.labels[split][indices[split]]]
    return ImageDataset(
        name=make_id(opts),
        images=images,
        labels=labels,
        n_classes=len(kept),
        kind="derived",
        modality=opts.modality or parent.modality,
        parent=parent.parent if parent.kind == "derived" else parent.name,
        class_names=[parent.class_names[c] for c in kept] if parent.class_names else None,
        description={
            "derived_from": parent.name,
            "parent_kind": parent.kind,
            "derivation": opts.derivation(),
            "kept_parent_classes": [int(c) for c in kept],
        },
    )


def plan(
    parent_labels: Mapping[str, np.ndarray], parent_n_classes: int, opts: DerivedOptions
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The parent classes kept and, per split, the sorted parent indices the derived dataset holds.

    Works on labels only, so a derivation can be checked without touching images.
    """
    rng = np.random.default_rng(opts.seed)
    kept = _kept_classes(parent_labels["train"], parent_n_classes, opts, rng)
    indices = {s: np.flatnonzero(np.isin(parent_labels[s], kept)) for s in SPLITS}

    train = indices["train"]
    target = opts.max_train if opts.train_fraction is None else int(round(opts.train_fraction * len(train)))
    if target is not None and target < len(train):
        train = _stratified_subset(train, parent_labels["train"], kept, target, rng)
    if opts.imbalance is not None:
        train = _impose_imbalance(train, parent_labels["train"], kept, opts.imbalance, rng)
    indices["train"] = train
    if opts.max_eval is not None:
        for split in ("val", "test"):
            if len(indices[split]) > opts.max_eval:
                indices[split] = _stratified_subset(
                    indices[split], parent_labels[split], kept, opts.max_eval, rng, keep_every_class=False
                )
    return kept, indices


def _kept_classes(
    train_labels: np.ndarray, n_classes: int, opts: DerivedOptions, rng: np.random.Generator
) -> np.ndarray:
    present = np.flatnonzero(class_counts(train_labels, n_classes))
    if opts.classes is not None:
        absent = [c for c in opts.classes if c not in present]
        if absent:
            raise ConfigError(
                f"classes {absent} are not classes of the parent's training split; choose among {present.tolist()}"
            )
        return np.asarray(opts.classes, dtype=np.int64)
    if opts.n_classes is not None:
        if opts.n_classes > len(present):
            raise ConfigError(f"n_classes={opts.n_classes} but the parent has only {len(present)} classes with training images")
        return np.sort(rng.choice(present, size=opts.n_classes, replace=False))
    return present


def _stratified_subset(
    indices: np.ndarray,
    labels: np.ndarray,
    kept: np.ndarray,
    target: int,
    rng: np.random.Generator,
    *,
    keep_every_class: bool = True,
) -> np.ndarray:
    """About ``target`` of ``indices``, classes in proportion; with ``keep_every_class`` none drops to 0."""
    sizes = np.array([np.sum(labels[indices] == c) for c in kept])
    counts = proportional_counts(sizes, target)
    if keep_every_class:
        counts = np.maximum(counts, np.minimum(sizes, 1))
    chosen = sample_per_class(labels[indices], dict(zip(kept.tolist(), counts.tolist())), rng)
    return indices[chosen]


def imbalance_counts(sizes: np.ndarray, ratio: float) -> np.ndarray:
    """Per-class counts <= ``sizes`` with largest / smallest ~= ``ratio``: classes keep their size order and
    sizes fall geometrically from the largest to the smallest, the smallest being as large as possible."""
    k = len(sizes)
    order = np.argsort(-sizes, kind="stable")
    exponents = (k - 1 - np.arange(k)) / (k - 1)  # 1 for the largest class, 0 for the smallest
    factors = ratio**exponents
    smallest = math.floor(float(np.min(sizes[order] / factors)) + 1e-9)
    if smallest < 1:
        raise DataError(f"cannot reach imbalance {ratio}: class sizes {sizes.tolist()} are too small")
    counts = np.empty(k, dtype=np.int64)
    counts[order] = np.minimum(sizes[order], np.round(smallest * factors).astype(np.int64))
    return counts


def _impose_imbalance(
    indices: np.ndarray, labels: np.ndarray, kept: np.ndarray, ratio: float, rng: np.random.Generator
) -> np.ndarray:
    sizes = np.array([np.sum(labels[indices] == c) for c in kept])
    counts = imbalance_counts(sizes, ratio)
    chosen = sample_per_class(labels[indices], dict(zip(kept.tolist(), counts.tolist())), rng)
    return indices[chosen]


def derive_family(
    parent_cfg: Mapping[str, Any],
    n: int,
    seed: int = 0,
    *,
    min_class_size: int = 5,
    max_eval: int | None = None,
) -> list[dict[str, Any]]:
    """``n`` varied derived configs of ``parent_cfg`` with distinct ids, deterministic in ``seed``.

    Each draws (independently): a class subset (half the time, when the parent has > 2 classes), a
    training size (log-uniform between 20 images per class and all), an imbalance ratio (log-uniform in
    [1, 10]) and a resolution (from FAMILY_RESOLUTIONS, between a quarter and twice the parent's). A draw
    whose smallest training class would hold fewer than ``min_class_size`` images is redrawn. ``max_eval``
    caps val/test in every config (useful for large parents).
    """
    from metallmix.data.registry import dataset_id, load_dataset

    check_int("n", n, 1)
    parent_cfg = plain_config(parent_cfg)
    parent = load_dataset(parent_cfg)
    rng = np.random.default_rng(seed)
    res = parent.resolution
    resolutions = [r for r in FAMILY_RESOLUTIONS if r != res and res / 4 <= r <= 2 * res]
    configs: dict[str, dict[str, Any]] = {}
    attempts = 0
    while len(configs) < n:
        attempts += 1
        if attempts > 50 * n:
            raise DataError(
                f"found only {len(configs)} distinct feasible derivations of {parent.name} out of {n}; "
                "the parent is too small for so many (lower n or min_class_size)"
            )
        cfg = _draw_derivation(parent, rng, resolutions, max_eval)
        cfg["parent"] = parent_cfg
        opts = DerivedOptions(**{k: v for k, v in cfg.items() if k != "kind"})
        try:
            kept, indices = plan(parent.labels, parent.n_classes, opts)
        except DataError:
            continue
        train_sizes = class_counts(parent.labels["train"][indices["train"]], parent.n_classes)[kept]
        if train_sizes.min() >= min_class_size:
            configs.setdefault(dataset_id(cfg), cfg)
    return list(configs.values())


def _draw_derivation(
    parent: ImageDataset, rng: np.random.Generator, resolutions: list[int], max_eval: int | None
) -> dict[str, Any]:
    cfg: dict[str, Any] = {"kind": "derived", "seed": int(rng.integers(1000))}
    parent_k = len(np.unique(parent.labels["train"]))
    k = parent_k
    if k > 2 and rng.random() < 0.5:
        k = int(rng.integers(2, k))
        cfg["n_classes"] = k
    n_kept = len(parent.labels["train"]) * k / parent_k  # expected training images of k classes
    high = max(2, int(0.9 * n_kept))
    low = min(20 * k, high)
    size_drawn = rng.random() < 0.6
    if rng.random() < 0.5:
        cfg["imbalance"] = round(float(math.exp(rng.uniform(0.0, math.log(10.0)))), 1)
    if resolutions and rng.random() < 0.3:
        cfg["resolution"] = int(rng.choice(resolutions))
    if size_drawn or len(cfg) == 2:  # always derive something
        cfg["max_train"] = int(round(math.exp(rng.uniform(math.log(low), math.log(high)))))
    if max_eval is not None:
        cfg["max_eval"] = max_eval
    return cfg
