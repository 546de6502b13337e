"""Meta-features of an image-classification dataset, computed from its data.

The meta-dataset stores each as a column ``mf_<name>``. Class statistics use the training split;
"class sizes" are the training images per class over all ``n_classes`` classes.

=========================  ===========================================================================
name                       meaning
=========================  ===========================================================================
n_images                   images in train + val + test
n_train, n_val, n_test     images per split
n_classes                  number of classes
resolution                 image height (= width) in pixels
channels                   1 (grayscale) or 3 (RGB)
class_size_mean            mean class size
class_size_std             population standard deviation of class sizes (ddof=0)
class_size_min             smallest class size
class_size_max             largest class size
imbalance_ratio            largest / smallest class size, over classes with at least one image
class_entropy              entropy of the training label distribution, in nats
normalized_class_entropy   class_entropy / ln(n_classes): 1 when balanced
minority_fraction          class_size_min / n_train
pixel_mean                 mean intensity, all pixels and channels, intensities scaled to [0, 1]
pixel_std                  standard deviation of those intensities
contrast_mean              mean over images of the standard deviation of the image's luminance
                           (RMS contrast)
gradient_mean              mean luminance gradient magnitude, sqrt(dx^2 + dy^2) of forward differences
edge_density               fraction of those gradient magnitudes above 0.1
high_freq_energy           share of the luminance power spectrum (image mean removed) at radial
                           frequencies above 0.25 cycles/pixel (half the Nyquist frequency)
colorfulness               Hasler-Suesstrunk colourfulness on [0, 1] intensities, mean over images
                           (0 for grayscale)
channel_correlation        mean Pearson correlation of the 3 channel pairs over all pixels (1 for
                           grayscale; a pair with one constant channel counts 0, two constant 1)
centroid_accuracy          accuracy of a nearest-class-centroid classifier on 8x8 luminance thumbnails:
                           centroids from the training sample, scored on up to 1,000 validation images
                           (test images if val is empty; NaN if both are empty). A cheap landmarker
                           of how separable the classes are
=========================  ===========================================================================

Image statistics use at most MAX_SAMPLE training images drawn with a fixed seed, so that the whole
computation takes well under a second on any MedMNIST dataset and is deterministic.
"""

from __future__ import annotations

import math

import numpy as np

from metallmix.data.base import ImageDataset
from metallmix.data.ops import class_counts

META_FEATURE_NAMES: tuple[str, ...] = (
    "n_images",
    "n_train",
    "n_val",
    "n_test",
    "n_classes",
    "resolution",
    "channels",
    "class_size_mean",
    "class_size_std",
    "class_size_min",
    "class_size_max",
    "imbalance_ratio",
    "class_entropy",
    "normalized_class_entropy",
    "minority_fraction",
    "pixel_mean",
    "pixel_std",
    "contrast_mean",
    "gradient_mean",
    "edge_density",
    "high_freq_energy",
    "colorfulness",
    "channel_correlation",
    "centroid_accuracy",
)

MAX_SAMPLE = 2000
MAX_EVAL_SAMPLE = 1000
SAMPLE_SEED = 0
EDGE_THRESHOLD = 0.1
HIGH_FREQUENCY = 0.25
THUMBNAIL = 8
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def compute_meta_features(ds: ImageDataset) -> dict[str, float]:
    """All META_FEATURE_NAMES of ``ds`` as floats, in that order."""
    rng = np.random.default_rng(SAMPLE_SEED)
    features = {
        "n_images": ds.n_images(),
        "n_train": len(ds.labels["train"]),
        "n_val": len(ds.labels["val"]),
        "n_test": len(ds.labels["test"]),
        "n_classes": ds.n_classes,
        "resolution": ds.resolution,
        "channels": ds.channels,
        **class_statistics(ds.labels["train"], ds.n_classes),
    }
    sample = _sample(len(ds.labels["train"]), MAX_SAMPLE, rng)
    images = ds.images["train"][sample].astype(np.float32) / 255.0
    features.update(image_statistics(images))
    eval_split = "val" if len(ds.labels["val"]) else "test"
    eval_sample = _sample(len(ds.labels[eval_split]), MAX_EVAL_SAMPLE, rng)
    features["centroid_accuracy"] = centroid_accuracy(
        images,
        ds.labels["train"][sample],
        ds.images[eval_split][eval_sample].astype(np.float32) / 255.0,
        ds.labels[eval_split][eval_sample],
    )
    return {name: float(features[name]) for name in META_FEATURE_NAMES}


def class_statistics(labels: np.ndarray, n_classes: int) -> dict[str, float]:
    """Class-size and label-distribution features of one split's labels."""
    sizes = class_counts(labels, n_classes).astype(np.float64)
    present = sizes[sizes > 0]
    shares = present / present.sum()
    entropy = float(-(shares * np.log(shares)).sum())
    return {
        "class_size_mean": sizes.mean(),
        "class_size_std": sizes.std(),
        "class_size_min": sizes.min(),
        "class_size_max": sizes.max(),
        "imbalance_ratio": present.max() / present.min(),
        "class_entropy": entropy,
        "normalized_class_entropy": entropy / math.log(n_classes),
        "minority_fraction": sizes.min() / sizes.sum(),
    }


def image_statistics(images: np.ndarray) -> dict[str, float]:
    """Intensity, contrast, edge, frequency and colour features of float images (N, H, W, C) in [0, 1]."""
    luminance = images[..., 0] if images.shape[-1] == 1 else images @ LUMA
    dx = luminance[:, :-1, 1:] - luminance[:, :-1, :-1]
    dy = luminance[:, 1:, :-1] - luminance[:, :-1, :-1]
    gradient = np.sqrt(dx**2 + dy**2)
    return {
        "pixel_mean": images.mean(),
        "pixel_std": images.std(),
        "contrast_mean": luminance.std(axis=(1, 2)).mean(),
        "gradient_mean": gradient.mean(),
        "edge_density": (gradient > EDGE_THRESHOLD).mean(),
        "high_freq_energy": _high_freq_energy(luminance),
        "colorfulness": _colorfulness(images),
        "channel_correlation": _channel_correlation(images),
    }


def centroid_accuracy(
    train_images: np.ndarray, train_labels: np.ndarray, eval_images: np.ndarray, eval_labels: np.ndarray
) -> float:
    """Accuracy of the nearest class centroid of 8x8 luminance thumbnails (NaN without eval images)."""
    if len(eval_labels) == 0:
        return math.nan
    train = _thumbnails(train_images)
    classes = np.unique(train_labels)
    centroids = np.stack([train[train_labels == c].mean(axis=0) for c in classes])
    evaluated = _thumbnails(eval_images)
    distances = ((evaluated[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=-1)
    return float((classes[distances.argmin(axis=1)] == eval_labels).mean())


def _sample(n: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= limit else np.sort(rng.choice(n, size=limit, replace=False))


def _high_freq_energy(luminance: np.ndarray) -> float:
    centred = luminance - luminance.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.rfft2(centred)) ** 2
    fy = np.fft.fftfreq(luminance.shape[1])[:, None]
    fx = np.fft.rfftfreq(luminance.shape[2])[None, :]
    high = np.sqrt(fx**2 + fy**2) > HIGH_FREQUENCY
    # rfft2 holds each column 1..W/2-1 once for two conjugate frequencies: weight them twice
    weight = np.full(fx.shape, 2.0)
    weight[:, 0] = 1.0
    if luminance.shape[2] % 2 == 0:
        weight[:, -1] = 1.0
    power = power * weight
    total = power.sum()
    return float(power[:, high].sum() / total) if total > 0 else 0.0


def _colorfulness(images: np.ndarray) -> float:
    if images.shape[-1] == 1:
        return 0.0
    red, green, blue = images[..., 0], images[..., 1], images[..., 2]
    rg = red - green
    yb = 0.5 * (red + green) - blue
    spread = np.sqrt(rg.std(axis=(1, 2)) ** 2 + yb.std(axis=(1, 2)) ** 2)
    offset = np.sqrt(rg.mean(axis=(1, 2)) ** 2 + yb.mean(axis=(1, 2)) ** 2)
    return float((spread + 0.3 * offset).mean())


def _channel_correlation(images: np.ndarray) -> float:
    if images.shape[-1] == 1:
        return 1.0
    pixels = images.reshape(-1, 3)
    centred = pixels - pixels.mean(axis=0)
    covariance = (centred.T @ centred).astype(np.float64) / len(pixels)
    std = np.sqrt(np.diag(covariance))
    pairs = []
    for a, b in ((0, 1), (0, 2), (1, 2)):
        if std[a] > 0 and std[b] > 0:
            pairs.append(covariance[a, b] / (std[a] * std[b]))
        else:
            pairs.append(1.0 if std[a] == std[b] == 0 else 0.0)
    return float(np.mean(pairs))


def _thumbnails(images: np.ndarray) -> np.ndarray:
    """Flattened THUMBNAIL x THUMBNAIL luminance thumbnails by block averaging (fewer blocks below 8 pixels)."""
    luminance = images[..., 0] if images.shape[-1] == 1 else images @ LUMA
    rows = _block_starts(luminance.shape[1])
    cols = _block_starts(luminance.shape[2])
    sums = np.add.reduceat(np.add.reduceat(luminance, rows, axis=1), cols, axis=2)
    areas = np.outer(np.diff(np.append(rows, luminance.shape[1])), np.diff(np.append(cols, luminance.shape[2])))
    return (sums / areas).reshape(len(images), -1)


def _block_starts(length: int) -> np.ndarray:
    """Start indices of min(THUMBNAIL, length) nearly equal blocks covering 0..length-1."""
    blocks = min(THUMBNAIL, length)
    return np.arange(blocks) * length // blocks
