"""A family of synthetic image-classification datasets set by config (kind ``generated``).

Every class draws its images from one pattern family, with a class-specific parameter:

- ``grating``:  a windowed sinusoidal grating; the class sets its orientation,
- ``blobs``:    Gaussian blobs at random places; the class sets how many (1, 2, 3, ...),
- ``rings``:    concentric rings in a disc; the class sets how many,
- ``checkers``: a rotated checkerboard texture; the class sets its frequency.

Classes are dealt to the families in turn (in a seeded order), so k <= 4 classes differ by family and
more classes also differ within a family. Each image gets random nuisances that carry no label:
position (shift up to 1/8 of the width), scale (0.75-1.25), contrast, brightness, phase, blob positions,
texture rotation and, with 3 channels, a random colour tint. ``difficulty`` in [0, 1] makes the task
harder in three ways at once: it blends each image with the pattern of another class (weight up to
difficulty / 2), jitters the class parameter towards the neighbouring class of the same family, and
adds pixel noise of standard deviation 0.03 + 0.35 * difficulty (intensities in [0, 1]).

Class sizes fall geometrically from class 0 to class k-1 so that largest / smallest = ``imbalance``
(up to rounding), in every split. Splits are drawn with separate seeded streams, so the images of one
split do not depend on the size of another.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from metallmix.data._config import check_float, check_int, format_number
from metallmix.data.base import SPLITS, ImageDataset
from metallmix.errors import ConfigError

FAMILIES = ("grating", "blobs", "rings", "checkers")
MAX_CLASSES = 32
CHUNK_PIXELS = 2**19  # pixels rendered at once (per channel): bounds memory at any resolution
Array = np.ndarray
ClassTable = list[tuple[int, int, int]]  # per class: (family, parameter index, classes in that family)


@dataclass(frozen=True)
class GeneratedOptions:
    """Options of kind ``generated`` (see conf/dataset/generated.yaml)."""

    n_classes: int = 4
    n_images: int | None = 600
    n_train: int | None = None
    n_val: int | None = None
    n_test: int | None = None
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    resolution: int = 32
    channels: int = 1
    imbalance: float = 1.0
    difficulty: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("n_classes", self.n_classes, 2, MAX_CLASSES)
        per_split = (self.n_train, self.n_val, self.n_test)
        if any(n is not None for n in per_split):
            if any(n is None for n in per_split):
                raise ConfigError("set all of n_train, n_val and n_test, or none of them (then n_images is split by fractions)")
            check_int("n_train", self.n_train, 2)
            check_int("n_val", self.n_val, 0)
            check_int("n_test", self.n_test, 0)
            if self.n_images is not None and self.n_images != sum(per_split):
                raise ConfigError(
                    f"n_images={self.n_images} but n_train+n_val+n_test={sum(per_split)}; set n_images=null or make them agree"
                )
        else:
            check_int("n_images", self.n_images, 3)
        check_float("val_fraction", self.val_fraction, 0.0, 0.9)
        check_float("test_fraction", self.test_fraction, 0.0, 0.9)
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError("val_fraction + test_fraction must be below 1 so that images are left for training")
        check_int("resolution", self.resolution, 8, 512)
        if self.channels not in (1, 3):
            raise ConfigError(f"dataset option channels must be 1 or 3, got {self.channels!r}")
        check_float("imbalance", self.imbalance, 1.0)
        check_float("difficulty", self.difficulty, 0.0, 1.0)
        check_int("seed", self.seed, 0)

    def split_sizes(self) -> dict[str, int]:
        if self.n_train is not None:
            return {"train": self.n_train, "val": self.n_val, "test": self.n_test}
        n_val = int(round(self.n_images * self.val_fraction))
        n_test = int(round(self.n_images * self.test_fraction))
        return {"train": self.n_images - n_val - n_test, "val": n_val, "test": n_test}

    def class_sizes(self) -> dict[str, np.ndarray]:
        """Images per class in each split: geometric from class 0 down to class k-1 by ``imbalance``."""
        weights = self.imbalance ** (-np.arange(self.n_classes) / (self.n_classes - 1))
        sizes = {split: _allocate(weights, n) for split, n in self.split_sizes().items()}
        if sizes["train"].min() < 1:
            raise ConfigError(
                f"a training split of {self.split_sizes()['train']} images leaves a class empty at n_classes="
                f"{self.n_classes}, imbalance={self.imbalance}; raise n_images (or n_train)"
            )
        return sizes


_DEFAULTS = GeneratedOptions()


def make_id(opts: GeneratedOptions) -> str:
    """e.g. ``generated-c4-n600-r32-ch1-ib1-d0.3-s0`` (every parameter, so ids never collide)."""
    if opts.n_train is not None:
        size = f"n{opts.n_train}+{opts.n_val}+{opts.n_test}"
    else:
        size = f"n{opts.n_images}"
        if opts.val_fraction != _DEFAULTS.val_fraction:
            size += f"-v{format_number(opts.val_fraction)}"
        if opts.test_fraction != _DEFAULTS.test_fraction:
            size += f"-t{format_number(opts.test_fraction)}"
    return (
        f"generated-c{opts.n_classes}-{size}-r{opts.resolution}-ch{opts.channels}"
        f"-ib{format_number(opts.imbalance)}-d{format_number(opts.difficulty)}-s{opts.seed}"
    )


def modality(opts: GeneratedOptions) -> str:
    return "synthetic"


def load(opts: GeneratedOptions) -> ImageDataset:
    """Generate the dataset of ``opts`` (deterministic in ``opts``)."""
    table = _class_table(opts.n_classes, np.random.default_rng([opts.seed, len(SPLITS)]))
    images, labels = {}, {}
    for split_index, (split, counts) in enumerate(opts.class_sizes().items()):
        rng = np.random.default_rng([opts.seed, split_index])
        y = rng.permutation(np.repeat(np.arange(opts.n_classes), counts))
        images[split] = _render(y, table, opts, rng)
        labels[split] = y.astype(np.int64)
    return ImageDataset(
        name=make_id(opts),
        images=images,
        labels=labels,
        n_classes=opts.n_classes,
        kind="generated",
        modality=modality(opts),
        class_names=[f"{FAMILIES[f]}-{p}" for f, p, _ in table],
        description={"generator": "metallmix.data.generated", **dataclasses.asdict(opts)},
    )


def _allocate(weights: np.ndarray, total: int) -> np.ndarray:
    """Integer counts summing to ``total`` in proportion to ``weights`` (largest remainder)."""
    exact = weights / weights.sum() * total
    counts = np.floor(exact).astype(np.int64)
    counts[np.argsort(-(exact - counts), kind="stable")[: total - counts.sum()]] += 1
    return counts


def _class_table(n_classes: int, rng: np.random.Generator) -> ClassTable:
    """(family, parameter index, classes in that family) of each class, dealt in a seeded order."""
    n_families = min(n_classes, len(FAMILIES))
    table: ClassTable = [(0, 0, 0)] * n_classes
    for rank, cls in enumerate(rng.permutation(n_classes)):
        family = rank % n_families
        table[cls] = (family, rank // n_families, len(range(family, n_classes, n_families)))
    return table


def _render(labels: Array, table: ClassTable, opts: GeneratedOptions, rng: np.random.Generator) -> Array:
    """uint8 images (N, R, R, C) of the given labels."""
    out = np.empty((len(labels), opts.resolution, opts.resolution, opts.channels), dtype=np.uint8)
    chunk = max(1, CHUNK_PIXELS // opts.resolution**2)
    for start in range(0, len(labels), chunk):
        out[start : start + chunk] = _render_chunk(labels[start : start + chunk], table, opts, rng)
    return out


def _render_chunk(labels: Array, table: ClassTable, opts: GeneratedOptions, rng: np.random.Generator) -> Array:
    n, d = len(labels), opts.difficulty
    pattern = _patterns(labels, table, opts.resolution, d, rng)
    if d > 0:
        others = (labels + rng.integers(1, opts.n_classes, n)) % opts.n_classes
        mix = rng.uniform(0.0, d / 2, n).astype(np.float32)[:, None, None]
        pattern = (1 - mix) * pattern + mix * _patterns(others, table, opts.resolution, d, rng)
    contrast = rng.uniform(0.6, 1.0, n).astype(np.float32)[:, None, None]
    brightness = rng.uniform(0.0, 0.3, n).astype(np.float32)[:, None, None]
    gray = brightness + contrast * pattern * (1 - brightness)
    if opts.channels == 3:
        tint = rng.uniform(0.4, 1.0, (n, 1, 1, 3)).astype(np.float32)
        image = gray[..., None] * tint
    else:
        image = gray[..., None]
    image = image + (0.03 + 0.35 * d) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def _patterns(labels: Array, table: ClassTable, res: int, d: float, rng: np.random.Generator) -> Array:
    """Float patterns in [0, 1], shape (N, res, res), in coordinates shifted and scaled per image."""
    n = len(labels)
    axis = np.linspace(-1.0, 1.0, res, dtype=np.float32)
    rows, cols = np.meshgrid(axis, axis, indexing="ij")
    shift = rng.uniform(-0.25, 0.25, (n, 2)).astype(np.float32)
    scale = rng.uniform(0.75, 1.25, n).astype(np.float32)[:, None, None]
    x = (cols[None] - shift[:, 0, None, None]) / scale
    y = (rows[None] - shift[:, 1, None, None]) / scale
    info = np.asarray(table)[labels]
    out = np.empty((n, res, res), dtype=np.float32)
    for family, draw in enumerate((_grating, _blobs, _rings, _checkers)):
        sel = info[:, 0] == family
        if sel.any():
            out[sel] = draw(x[sel], y[sel], info[sel, 1], info[sel, 2], d, rng)
    return out


def _jitter(n: int, d: float, rng: np.random.Generator) -> np.ndarray:
    """Class-parameter jitter in [-d/2, d/2] steps towards the neighbouring class."""
    return rng.uniform(-0.5, 0.5, n).astype(np.float32) * d


def _grating(x: Array, y: Array, param: Array, n_params: Array, d: float, rng: np.random.Generator) -> Array:
    theta = (np.pi * (param + _jitter(len(x), d, rng)) / n_params)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, len(x)).astype(np.float32)[:, None, None]
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * 2.5 * (x * np.cos(theta) + y * np.sin(theta)) + phase)
    return wave * np.exp(-(x**2 + y**2) / (2 * 0.6**2))


def _blobs(x: Array, y: Array, param: Array, n_params: Array, d: float, rng: np.random.Generator) -> Array:
    out = np.zeros_like(x)
    for j in range(int(n_params.max())):
        centre = rng.uniform(-0.6, 0.6, (len(x), 2)).astype(np.float32)
        blob = np.exp(-((x - centre[:, 0, None, None]) ** 2 + (y - centre[:, 1, None, None]) ** 2) / (2 * 0.12**2))
        out += blob * (j <= param)[:, None, None]
    return np.clip(out, 0.0, 1.0)


def _rings(x: Array, y: Array, param: Array, n_params: Array, d: float, rng: np.random.Generator) -> Array:
    radius = np.sqrt(x**2 + y**2)
    count = (param + 1 + _jitter(len(x), d, rng))[:, None, None]
    return (0.5 + 0.5 * np.cos(2 * np.pi * count * radius)) * np.clip((1.0 - radius) / 0.1, 0.0, 1.0)


def _checkers(x: Array, y: Array, param: Array, n_params: Array, d: float, rng: np.random.Generator) -> Array:
    freq = (1.5 + param + _jitter(len(x), d, rng))[:, None, None]
    angle = rng.uniform(0, np.pi / 2, len(x)).astype(np.float32)[:, None, None]
    u = x * np.cos(angle) - y * np.sin(angle)
    v = x * np.sin(angle) + y * np.cos(angle)
    return 0.5 + 0.5 * np.tanh(4.0 * np.sin(np.pi * freq * u) * np.sin(np.pi * freq * v))
