import math

import numpy as np
import pytest

from metallmix.data import META_FEATURE_NAMES, ImageDataset, compute_meta_features, load_dataset
from metallmix.data.metafeatures import centroid_accuracy, class_statistics, image_statistics


def make_dataset(train_labels, n_classes, image=None, val_labels=(), test_labels=()):
    """A hand-made dataset whose every image is ``image`` (default: constant gray 128, 8x8x1)."""
    image = np.full((8, 8, 1), 128, np.uint8) if image is None else image
    labels = {"train": train_labels, "val": val_labels, "test": test_labels}
    return ImageDataset(
        name="hand-made",
        images={s: np.repeat(image[None], len(y), axis=0) for s, y in labels.items()},
        labels={s: np.asarray(y, dtype=np.int64) for s, y in labels.items()},
        n_classes=n_classes,
        kind="generated",
    )


def test_class_statistics_exact_values():
    ds = make_dataset([0, 0, 0, 1, 1, 2], 3, val_labels=[0, 1], test_labels=[2])
    mf = compute_meta_features(ds)
    assert list(mf) == list(META_FEATURE_NAMES)
    assert all(isinstance(v, float) for v in mf.values())
    assert (mf["n_images"], mf["n_train"], mf["n_val"], mf["n_test"]) == (9, 6, 2, 1)
    assert (mf["n_classes"], mf["resolution"], mf["channels"]) == (3, 8, 1)
    assert mf["class_size_mean"] == 2.0
    assert mf["class_size_std"] == pytest.approx(math.sqrt(2 / 3))
    assert (mf["class_size_min"], mf["class_size_max"]) == (1.0, 3.0)
    assert mf["imbalance_ratio"] == 3.0
    entropy = -(0.5 * math.log(0.5) + 1 / 3 * math.log(1 / 3) + 1 / 6 * math.log(1 / 6))
    assert mf["class_entropy"] == pytest.approx(entropy)
    assert mf["normalized_class_entropy"] == pytest.approx(entropy / math.log(3))
    assert mf["minority_fraction"] == pytest.approx(1 / 6)


def test_balanced_classes_have_full_entropy_and_unit_ratio():
    stats = class_statistics(np.array([0, 1, 2, 3] * 5), 4)
    assert stats["imbalance_ratio"] == 1.0
    assert stats["class_size_std"] == 0.0
    assert stats["class_entropy"] == pytest.approx(math.log(4))
    assert stats["normalized_class_entropy"] == pytest.approx(1.0)


def test_class_absent_from_train_counts_as_size_zero_but_not_in_ratio():
    stats = class_statistics(np.array([0, 0, 0, 0, 1]), 3)
    assert stats["class_size_min"] == 0.0
    assert stats["imbalance_ratio"] == 4.0
    assert stats["minority_fraction"] == 0.0


def test_constant_gray_images():
    mf = compute_meta_features(make_dataset([0, 1, 0, 1], 2, val_labels=[0, 1]))
    assert mf["pixel_mean"] == pytest.approx(128 / 255)
    for name in ("pixel_std", "contrast_mean", "gradient_mean", "edge_density", "high_freq_energy", "colorfulness"):
        assert mf[name] == 0.0, name
    assert mf["channel_correlation"] == 1.0


def test_alternating_columns_have_unit_gradient_and_only_high_frequencies():
    stripes = np.zeros((1, 8, 8, 1), np.float32)
    stripes[:, :, 1::2] = 1.0
    stats = image_statistics(stripes)
    assert stats["pixel_mean"] == pytest.approx(0.5)
    assert stats["pixel_std"] == pytest.approx(0.5)
    assert stats["contrast_mean"] == pytest.approx(0.5)
    assert stats["gradient_mean"] == pytest.approx(1.0)
    assert stats["edge_density"] == 1.0
    assert stats["high_freq_energy"] == pytest.approx(1.0)


def test_ramp_gradient_and_low_frequency_wave():
    ramp = np.tile(np.linspace(0, 1, 16, dtype=np.float32), (16, 1))[None, ..., None]
    stats = image_statistics(ramp)
    assert stats["gradient_mean"] == pytest.approx(1 / 15, rel=1e-5)
    assert stats["edge_density"] == 0.0
    wave = 0.5 + 0.5 * np.cos(2 * np.pi * np.arange(16) / 16)  # 1/16 cycle per pixel
    assert image_statistics(np.tile(wave, (1, 16, 1))[..., None])["high_freq_energy"] == pytest.approx(0.0, abs=1e-9)


def test_colour_statistics():
    ramp = np.linspace(0, 1, 64, dtype=np.float32).reshape(1, 8, 8)
    rgb = np.stack([ramp, ramp, 1 - ramp], axis=-1)  # R = G, B opposite
    stats = image_statistics(rgb)
    assert stats["channel_correlation"] == pytest.approx(-1 / 3, abs=1e-5)
    pure_red = np.zeros((2, 4, 4, 3), np.float32)
    pure_red[..., 0] = 1.0
    stats = image_statistics(pure_red)
    assert stats["colorfulness"] == pytest.approx(0.3 * math.sqrt(1.0 + 0.25))
    assert stats["channel_correlation"] == pytest.approx(1.0)  # all channels constant


def test_centroid_accuracy_separable_and_chance():
    dark, bright = np.zeros((4, 8, 8, 1), np.float32), np.ones((4, 8, 8, 1), np.float32)
    images = np.concatenate([dark, bright])
    labels = np.array([0] * 4 + [1] * 4)
    assert centroid_accuracy(images, labels, images, labels) == 1.0
    assert centroid_accuracy(images, labels, images, 1 - labels) == 0.0
    assert math.isnan(centroid_accuracy(images, labels, images[:0], labels[:0]))


def test_centroid_accuracy_falls_back_to_test_then_nan():
    image = np.full((8, 8, 1), 50, np.uint8)
    assert compute_meta_features(make_dataset([0, 1], 2, image, test_labels=[0, 1]))["centroid_accuracy"] == 0.5
    assert math.isnan(compute_meta_features(make_dataset([0, 1], 2, image))["centroid_accuracy"])


def test_deterministic_on_10k_images():
    rng = np.random.default_rng(0)
    labels = {"train": rng.integers(0, 5, 10_000), "val": rng.integers(0, 5, 1_000), "test": rng.integers(0, 5, 1_000)}
    ds = ImageDataset(
        name="random-stand-in",
        images={s: rng.integers(0, 256, (len(y), 28, 28, 3), dtype=np.uint8) for s, y in labels.items()},
        labels=labels,
        n_classes=5,
        kind="generated",
    )
    first = compute_meta_features(ds)
    assert first == compute_meta_features(ds)
    assert first["channel_correlation"] == pytest.approx(0.0, abs=0.01)  # independent channels
    assert first["pixel_mean"] == pytest.approx(127.5 / 255, abs=0.01)


def test_breastmnist_values():
    mf = compute_meta_features(load_dataset({"kind": "medmnist", "name": "breastmnist"}))
    assert mf["imbalance_ratio"] == pytest.approx(399 / 147)
    assert mf["class_size_std"] == 126.0
    assert 0.0 < mf["pixel_mean"] < 1.0 and 0.0 < mf["edge_density"] < 1.0
