"""Datasets (MedMNIST, image folders, generated, derived) and their meta-features."""

from metallmix.data.base import SPLITS, ImageDataset
from metallmix.data.derived import derive_family
from metallmix.data.medmnist import MEDMNIST_2D
from metallmix.data.metafeatures import META_FEATURE_NAMES, compute_meta_features
from metallmix.data.registry import DatasetInfo, dataset_id, describe_dataset, load_dataset

__all__ = [
    "MEDMNIST_2D",
    "META_FEATURE_NAMES",
    "SPLITS",
    "DatasetInfo",
    "ImageDataset",
    "compute_meta_features",
    "dataset_id",
    "derive_family",
    "describe_dataset",
    "load_dataset",
]
