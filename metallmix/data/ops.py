"""Array operations the loaders share: resizing, class counts and seeded stratified sampling."""

from __future__ import annotations

import numpy as np
from PIL import Image


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 images (N, H, W, C) to (N, size, size, C) with PIL's antialiased bilinear filter."""
    if images.shape[1] == size and images.shape[2] == size:
        return images
    out = np.empty((len(images), size, size, images.shape[-1]), dtype=np.uint8)
    for i, image in enumerate(images):
        out[i] = to_array(Image.fromarray(to_pil_array(image)).resize((size, size), Image.Resampling.BILINEAR))
    return out


def to_pil_array(image: np.ndarray) -> np.ndarray:
    """(H, W, 1) -> (H, W) so that PIL reads it as mode L; (H, W, 3) stays RGB."""
    return image[..., 0] if image.shape[-1] == 1 else image


def to_array(image: Image.Image) -> np.ndarray:
    """A PIL image in mode L or RGB as a uint8 (H, W, C) array."""
    array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array


def class_counts(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Number of labels equal to each class 0..n_classes-1."""
    return np.bincount(labels, minlength=n_classes)[:n_classes]


def sample_per_class(labels: np.ndarray, counts: dict[int, int], rng: np.random.Generator) -> np.ndarray:
    """Sorted indices holding ``counts[c]`` randomly chosen items of each class c (without replacement)."""
    chosen = []
    for cls, count in counts.items():
        members = np.flatnonzero(labels == cls)
        chosen.append(rng.choice(members, size=min(int(count), len(members)), replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def proportional_counts(sizes: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` over groups in proportion to ``sizes`` (largest remainder), never above a size."""
    total = min(int(total), int(sizes.sum()))
    exact = sizes * (total / sizes.sum())
    counts = np.floor(exact).astype(np.int64)
    remainder_order = np.argsort(-(exact - counts), kind="stable")
    counts[remainder_order[: total - counts.sum()]] += 1
    return np.minimum(counts, sizes)


def stratified_split(
    labels: np.ndarray, fractions: tuple[float, ...], rng: np.random.Generator
) -> list[np.ndarray]:
    """Split indices into len(fractions)+1 parts per class: part i gets round(n_c * fractions[i]) of each
    class c, the last part the rest. Every part is sorted."""
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        start = 0
        for i, fraction in enumerate(fractions):
            take = int(round(len(members) * fraction))
            parts[i].append(members[start : start + take])
            start += take
        parts[-1].append(members[start:])
    return [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
