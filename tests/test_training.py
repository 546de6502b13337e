"""Tests of metallmix.training: real (short) training runs on tiny synthetic test datasets, CPU, 1 thread."""

from __future__ import annotations

import copy

import huggingface_hub
import numpy as np
import pytest
import timm
import torch
import torchvision
from matplotlib import cbook
from PIL import Image
from safetensors.torch import save_file

from metallmix.data.base import ImageDataset
from metallmix.errors import ConfigError, DataError, WeightsUnavailableError
from metallmix.metadataset.schema import canonical_json
from metallmix.training import (
    BACKBONES,
    TIMM_PREFIX,
    backbone_info,
    build_model,
    check_weights_available,
    mean_std,
    train_run,
    validate_config,
)
from metallmix.training import train as train_module
from metallmix.training.backbones import weights_location
from metallmix.training.inputs import AUGMENT_POLICIES, augment, prepare_images, to_model_input
from metallmix.training.metrics import balanced_accuracy, macro_f1

TIMING_KEYS = {"train_seconds", "seconds_per_epoch", "images_per_second", "peak_memory_mb", "epoch_seconds"}


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_test_blobs(n_train: int, n_eval: int = 60, size: int = 28, seed: int = 0) -> ImageDataset:
    """Test data: grayscale noise with one bright blob, class 0 = blob in the top half, class 1 = bottom half.

    Invariant to horizontal flips, so every augmentation policy keeps it learnable.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    images, labels = {}, {}
    for split, n in (("train", n_train), ("val", n_eval), ("test", n_eval)):
        y = np.arange(n) % 2
        rng.shuffle(y)
        cy = np.where(y == 0, rng.uniform(0.18, 0.35, n), rng.uniform(0.65, 0.82, n)) * size
        cx = rng.uniform(0.2, 0.8, n) * size
        blob = 200 * np.exp(-((xx - cx[:, None, None]) ** 2 + (yy - cy[:, None, None]) ** 2) / (0.015 * size**2))
        noisy = blob + rng.normal(30, 15, (n, size, size))
        images[split] = np.clip(noisy, 0, 255).astype(np.uint8)[..., None]
        labels[split] = y.astype(np.int64)
    return ImageDataset("test-blobs", images, labels, n_classes=2, kind="generated")


def without_timings(result: dict) -> dict:
    out = {k: v for k, v in result.items() if k not in TIMING_KEYS}
    out["curve"] = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in result["curve"]]
    return out


# ---------------------------------------------------------------- real training


def test_frozen_imagenet_run_learns_and_reports_every_epoch():
    dataset = make_test_blobs(n_train=200)
    records = []
    config = {"backbone": "efficientnet_lite0", "strategy": "frozen", "lr": 1e-2, "epochs": 8, "input_size": 32}
    result = train_run(config, dataset, seed=0, device="cpu", report=records.append)

    assert result["test_accuracy"] >= 0.85, result
    assert result["diverged"] is False and result["device"] == "cpu"
    assert [r["epoch"] for r in records] == list(range(1, 9))
    assert records == result["curve"]
    assert set(records[0]) == {"epoch", "train_loss", "val_loss", "val_accuracy", "epoch_seconds"}
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert result["best_val_accuracy"] == max(r["val_accuracy"] for r in records)
    assert result["val_accuracy"] == records[-1]["val_accuracy"]
    assert 0 <= result["balanced_accuracy"] <= 1 and 0 <= result["macro_f1"] <= 1
    assert result["n_epochs"] == 8 and result["feature_cache"] is True
    assert result["memory_measure"] == "process_peak_rss" and result["peak_memory_mb"] > 0
    assert result["images_per_second"] > 0 and result["train_seconds"] >= sum(r["epoch_seconds"] for r in records)
    # Only the new head trains: 1280 features x 2 classes + 2 biases.
    assert result["n_trainable_parameters"] == 1280 * 2 + 2
    assert result["n_parameters"] == backbone_info("efficientnet_lite0").n_parameters + 1280 * 2 + 2


def test_same_seed_same_metrics_and_different_seed_differs():
    dataset = make_test_blobs(n_train=48, n_eval=24)
    config = {
        "backbone": "mobilenet_v3_small",
        "weights": "none",
        "strategy": "full",
        "augmentation": "strong",
        "dropout": 0.2,
        "epochs": 2,
        "batch_size": 16,
        "input_size": 32,
    }
    first = without_timings(train_run(config, dataset, seed=3, device="cpu"))
    again = without_timings(train_run(config, dataset, seed=3, device="cpu"))
    other = without_timings(train_run(config, dataset, seed=4, device="cpu"))
    assert first == again
    assert [r["train_loss"] for r in first["curve"]] != [r["train_loss"] for r in other["curve"]]


def test_frozen_strategy_changes_only_the_head(monkeypatch):
    built = []

    def spy_build_model(*args, **kwargs):  # test spy around the real build_model
        model = build_model(*args, **kwargs)
        built.append((model, copy.deepcopy(model.state_dict())))
        return model

    monkeypatch.setattr(train_module, "build_model", spy_build_model)
    config = {"backbone": "mobilenet_v3_small", "weights": "none", "strategy": "frozen", "lr": 1e-2, "epochs": 2}
    result = train_run({**config, "input_size": 32}, make_test_blobs(n_train=40, n_eval=10), device="cpu")

    (model, before), = built
    after = model.state_dict()
    feature_keys = [k for k in before if k.startswith("features.")]
    assert feature_keys and all(torch.equal(before[k], after[k]) for k in feature_keys)  # incl. BatchNorm stats
    assert not torch.equal(before["head.1.weight"], after["head.1.weight"])
    assert result["n_trainable_parameters"] == 1024 * 2 + 2


def test_partial_strategy_trains_last_stage_and_head():
    result = train_run(
        {"backbone": "mobilenet_v3_small", "weights": "none", "strategy": "partial", "epochs": 1, "input_size": 32},
        make_test_blobs(n_train=32, n_eval=8),
        device="cpu",
    )
    model = build_model("mobilenet_v3_small", weights="none", n_classes=2, dropout=0.0, input_size=32)
    last_stage = BACKBONES["mobilenet_v3_small"].last_stage
    expected = sum(p.numel() for name in last_stage for p in model.features.get_submodule(name).parameters())
    expected += sum(p.numel() for p in model.head.parameters())
    assert result["n_trainable_parameters"] == expected < result["n_parameters"]


def test_diverged_run_is_flagged_not_raised():
    config = {"backbone": "mobilenet_v3_small", "weights": "none", "strategy": "full", "optimizer": "sgd", "lr": 1e10}
    result = train_run({**config, "epochs": 3, "input_size": 32}, make_test_blobs(n_train=32, n_eval=8), device="cpu")
    assert result["diverged"] is True
    assert result["n_epochs"] < 3 and result["test_accuracy"] is None


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("key", "value", "expected_in_message"),
    [
        ("backbone", "vgg16", "resnet18"),
        ("weights", "coco", "imagenet"),
        ("strategy", "half", "partial"),
        ("lr", 0, "> 0"),
        ("lr", float("nan"), "> 0"),
        ("batch_size", 0, ">= 1"),
        ("batch_size", 8.5, "integer"),
        ("optimizer", "rmsprop", "adamw"),
        ("epochs", 0, ">= 1"),
        ("weight_decay", -0.1, ">= 0"),
        ("dropout", 1.0, "[0, 1)"),
        ("augmentation", "heavy", "strong"),
        ("input_size", 8, ">= 16"),
        ("scheduler", "step", "cosine"),
        ("label_smoothing", 1.5, "[0, 1)"),
        ("amp", "yes", "true or false"),
    ],
)
def test_each_bad_config_value_is_named(key, value, expected_in_message):
    with pytest.raises(ConfigError) as error:
        validate_config({"backbone": "resnet18", key: value})
    assert key in str(error.value) and expected_in_message in str(error.value)


def test_unknown_and_missing_keys():
    with pytest.raises(ConfigError, match="unknown config key.*momentum.*known keys: backbone, weights"):
        validate_config({"backbone": "resnet18", "momentum": 0.9})
    with pytest.raises(ConfigError, match="needs a 'backbone'"):
        validate_config({"lr": 0.1})
    with pytest.raises(ConfigError, match="input_size=28 must be an integer >= 32"):
        validate_config({"backbone": "convnext_tiny", "input_size": 28})


def test_defaults_filled_and_values_normalised():
    config = validate_config({"backbone": "resnet18", "optimizer": "SGD", "batch_size": 64.0, "lr": 1})
    assert config["optimizer"] == "sgd" and config["batch_size"] == 64 and isinstance(config["lr"], float)
    assert config["input_size"] == 224 and config["strategy"] == "frozen" and config["amp"] is False
    assert validate_config(config) == config


def test_train_run_rejects_bad_inputs():
    dataset = make_test_blobs(n_train=8, n_eval=4)
    with pytest.raises(ConfigError, match="num_threads"):
        train_run({"backbone": "resnet18", "weights": "none"}, dataset, num_threads=0)
    with pytest.raises(ConfigError, match="device='tpu'"):
        train_run({"backbone": "resnet18", "weights": "none"}, dataset, device="tpu")
    empty_test = ImageDataset(
        "test-empty",
        {**dataset.images, "test": dataset.images["test"][:0]},
        {**dataset.labels, "test": dataset.labels["test"][:0]},
        n_classes=2,
        kind="generated",
    )
    with pytest.raises(DataError, match="empty 'test' split"):
        train_run({"backbone": "resnet18", "weights": "none"}, empty_test)


# ---------------------------------------------------------------- weights


@pytest.fixture
def empty_hub_dir(tmp_path):
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    yield tmp_path
    torch.hub.set_dir(previous)


def test_missing_torchvision_weights_name_the_file_and_folder(empty_hub_dir):
    folder = str(empty_hub_dir / "checkpoints")
    with pytest.raises(WeightsUnavailableError) as error:
        check_weights_available("resnet18", "imagenet")
    message = str(error.value)
    assert "resnet18-f37072fd.pth" in message and folder in message and "allow_download=True" in message
    with pytest.raises(WeightsUnavailableError, match="resnet18-f37072fd.pth"):
        train_run({"backbone": "resnet18", "epochs": 1, "input_size": 32}, make_test_blobs(n_train=8, n_eval=4))
    check_weights_available("resnet18", "none")
    info = backbone_info("resnet18")
    assert (info.weights_file, info.weights_folder, info.offline_weights) == ("resnet18-f37072fd.pth", folder, False)


def test_weights_placed_in_hub_cache_load_offline(empty_hub_dir):
    checkpoints = empty_hub_dir / "checkpoints"
    checkpoints.mkdir()
    stand_in = torchvision.models.resnet18().state_dict()  # random weights standing in for the official file
    torch.save(stand_in, checkpoints / "resnet18-f37072fd.pth")
    check_weights_available("resnet18", "imagenet")
    model = build_model("resnet18", weights="imagenet", n_classes=3, dropout=0.0, input_size=32)
    assert torch.equal(model.features.conv1.weight, stand_in["conv1.weight"])
    assert model.head[1].out_features == 3


def test_efficientnet_lite0_imagenet_weights_load_offline_and_classify_a_photo():
    # Grace Hopper's portrait in uniform, shipped with matplotlib (a metallmix dependency).
    with cbook.get_sample_data("grace_hopper.jpg") as file:
        photo = np.asarray(Image.open(file).convert("RGB"))
    file_name, folder = weights_location("efficientnet_lite0")
    imagenet_state = torch.load(f"{folder}/{file_name}", map_location="cpu", weights_only=True)
    model = build_model("efficientnet_lite0", weights="imagenet", n_classes=1000, dropout=0.0, input_size=224).eval()
    model.head[1].load_state_dict({"weight": imagenet_state["_fc.weight"], "bias": imagenet_state["_fc.bias"]})
    mean, std = BACKBONES["efficientnet_lite0"].mean_std
    x = prepare_images(photo[None], 224).float() / 255
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model(x)
    assert torch.isfinite(logits).all()
    assert logits.argmax().item() == 652  # ImageNet class "military uniform"
    assert backbone_info("efficientnet_lite0").offline_weights


@pytest.mark.parametrize("name", list(BACKBONES))
def test_backbone_info_for_every_backbone(name):
    info = backbone_info(name)
    assert info.n_parameters > 1_000_000 and info.feature_dim > 0 and info.default_input_size == 224
    assert info.weights_file.endswith((".pth", ".safetensors")) and info.min_input_size <= 64


def test_resnet18_parameter_count_matches_torchvision():
    imagenet_head = 512 * 1000 + 1000
    assert backbone_info("resnet18").n_parameters == 11_689_512 - imagenet_head


# ---------------------------------------------------------------- inputs and metrics


def test_prepare_images_resizes_and_keeps_uint8():
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)
    prepared = prepare_images(images, 32)
    assert prepared.shape == (5, 1, 32, 32) and prepared.dtype == torch.uint8
    assert prepare_images(images, 28).numpy().transpose(0, 2, 3, 1).tolist() == images.tolist()


@pytest.mark.parametrize("policy", list(AUGMENT_POLICIES))
def test_augmentation_is_seeded_and_keeps_shape_and_range(policy):
    images = torch.rand(4, 3, 32, 32)
    first = augment(images, AUGMENT_POLICIES[policy], torch.Generator().manual_seed(0))
    again = augment(images, AUGMENT_POLICIES[policy], torch.Generator().manual_seed(0))
    other = augment(images, AUGMENT_POLICIES[policy], torch.Generator().manual_seed(1))
    assert first.shape == images.shape and torch.equal(first, again) and not torch.equal(first, other)
    assert first.min() >= 0 and first.max() <= 1


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_metrics_match_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 4, 200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 5, 200))
    assert balanced_accuracy(y_true, y_pred, 5) == pytest.approx(metrics.balanced_accuracy_score(y_true, y_pred))
    assert macro_f1(y_true, y_pred, 5) == pytest.approx(metrics.f1_score(y_true, y_pred, average="macro"))


# ---------------------------------------------------------------- MedMNIST+ backbones (timm + AlexNet)

MEDMNISTPLUS_FEATURE_DIMS = {  # pooled pre-logits features, the embeddings MedMNIST+'s k-NN used
    "alexnet": 4096, "timm/vgg16": 4096, "timm/resnet18": 512, "timm/densenet121": 1024,
    "timm/efficientnet_b4": 1792, "timm/vit_base_patch16_224": 768, "timm/vit_base_patch16_clip_224": 768,
    "timm/eva02_base_patch16_clip_224": 768, "timm/vit_base_patch16_224.dino": 768,
    "timm/samvit_base_patch16": 256,
}


def test_the_medmnistplus_backbones_are_alexnet_and_timm_models():
    assert set(MEDMNISTPLUS_FEATURE_DIMS) == {"alexnet"} | {n for n in BACKBONES if n.startswith(TIMM_PREFIX)}
    assert BACKBONES["alexnet"].source == "torchvision" and BACKBONES["resnet18"].source == "torchvision"
    assert BACKBONES["timm/resnet18"].source == "timm"


@pytest.mark.parametrize("name", list(MEDMNISTPLUS_FEATURE_DIMS))
def test_each_medmnistplus_backbone_builds_and_gives_its_features(name):
    """Built on the meta device (shapes, no memory or compute) at its smallest input and at 224 px."""
    spec = BACKBONES[name]
    smallest = -(-spec.min_input_size // spec.input_multiple) * spec.input_multiple
    for side in (smallest, 224):
        with torch.device("meta"):
            model = build_model(name, weights="none", n_classes=3, dropout=0.0, input_size=side)
            features = model.features(torch.empty(2, 3, side, side))
            logits = model(torch.empty(2, 3, side, side))
        assert features.shape == (2, MEDMNISTPLUS_FEATURE_DIMS[name]) and logits.shape == (2, 3)
    for stage in spec.last_stage:  # what strategy "partial" trains exists
        model.features.get_submodule(stage)
    info = backbone_info(name)
    assert info.feature_dim == MEDMNISTPLUS_FEATURE_DIMS[name] and not info.offline_weights


def test_timm_backbones_keep_timm_sizes_and_normalisation():
    imagenet_head = 512 * 1000 + 1000
    assert backbone_info("timm/resnet18").n_parameters == 11_689_512 - imagenet_head
    assert mean_std("timm/vit_base_patch16_clip_224") == (
        (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))  # OpenAI CLIP's
    assert mean_std("timm/vit_base_patch16_224") == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert mean_std("alexnet") == mean_std("timm/vgg16") == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    return tmp_path


def test_missing_timm_weights_name_the_hub_repo_and_cache_folder(empty_hf_cache):
    folder = str(empty_hf_cache / "models--timm--resnet18.a1_in1k")
    with pytest.raises(WeightsUnavailableError) as error:
        check_weights_available("timm/resnet18", "imagenet")
    message = str(error.value)
    assert "timm/resnet18.a1_in1k" in message and folder in message and "allow_download=True" in message
    with pytest.raises(WeightsUnavailableError, match="timm/resnet18.a1_in1k"):
        train_run({"backbone": "timm/resnet18", "epochs": 1, "input_size": 32}, make_test_blobs(n_train=8, n_eval=4))
    check_weights_available("timm/resnet18", "none")
    check_weights_available("timm/resnet18", "imagenet", allow_download=True)
    info = backbone_info("timm/resnet18")
    assert (info.weights_file, info.weights_folder, info.offline_weights) == ("model.safetensors", folder, False)


def test_timm_weights_in_the_hub_cache_load_offline(empty_hf_cache):
    repo = empty_hf_cache / "models--timm--resnet18.a1_in1k"
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    stand_in = timm.create_model("resnet18").state_dict()  # random weights standing in for timm's file
    save_file(stand_in, repo / "snapshots" / "0123abcd" / "model.safetensors")
    check_weights_available("timm/resnet18", "imagenet")
    model = build_model("timm/resnet18", weights="imagenet", n_classes=3, dropout=0.0, input_size=32)
    assert torch.equal(model.features.conv1.weight, stand_in["conv1.weight"])
    assert model.head[1].out_features == 3 and backbone_info("timm/resnet18").offline_weights


def test_vit_backbones_are_built_for_the_input_side():
    """A ViT's position embedding fixes its input side: the model is built for the side it will see."""
    with torch.device("meta"):
        model = build_model("timm/vit_base_patch16_224", weights="none", n_classes=2, dropout=0.0, input_size=48)
    assert model.features.patch_embed.img_size == (48, 48) and model.features.pos_embed.shape[1] == 1 + 3 * 3


# ---------------------------------------------------------------- padding, early stopping, k-NN


def test_padding_puts_normalised_zeros_around_the_centred_image():
    white = torch.full((1, 1, 3, 3), 255, dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.25, 0.5, 1.0)
    padded = to_model_input(white, (mean, std), torch.device("cpu"), pad_to=8)
    assert padded.shape == (1, 3, 8, 8)
    # A margin of 5: 2 pixels before, 3 after (MedMNIST+'s transforms.Pad put the odd one right and bottom).
    image = padded[:, :, 2:5, 2:5]
    expected = torch.tensor([(1 - m) / s for m, s in zip(mean, std)]).view(1, 3, 1, 1).expand(1, 3, 3, 3)
    assert torch.allclose(image, expected)
    assert torch.equal(image, to_model_input(white, (mean, std), torch.device("cpu")))
    border = padded.clone()
    border[:, :, 2:5, 2:5] = 0
    assert torch.count_nonzero(border) == 0  # zeros after normalisation: the mean colour
    even = to_model_input(white, (mean, std), torch.device("cpu"), pad_to=7)
    assert torch.equal(even[:, :, 2:5, 2:5], image) and torch.count_nonzero(even) == 3 * 9


def test_config_keys_of_padding_early_stopping_and_knn():
    config = validate_config({"backbone": "timm/resnet18", "input_size": 28, "pad_to": 224.0,
                              "early_stopping_patience": 5})
    assert config["pad_to"] == 224 and config["early_stopping_patience"] == 5 and "knn_k" not in config
    knn = validate_config({"backbone": "timm/resnet18", "strategy": "knn", "input_size": 28, "lr": 0.5, "epochs": 7})
    assert knn == {"backbone": "timm/resnet18", "weights": "imagenet", "strategy": "knn", "input_size": 28,
                   "amp": False, "knn_k": 11}  # it trains nothing: no optimiser settings
    assert validate_config({**knn, "lr": 0.1, "knn_k": 11.0}) == knn
    with pytest.raises(ConfigError, match=r"pad_to=24 must be an integer >= 28 \(at least input_size=28"):
        validate_config({"backbone": "timm/resnet18", "input_size": 28, "pad_to": 24})
    with pytest.raises(ConfigError, match="pad_to=48 must be an integer >= 63"):
        validate_config({"backbone": "alexnet", "input_size": 28, "pad_to": 48})
    validate_config({"backbone": "alexnet", "input_size": 28, "pad_to": 64})  # the model sees 64 px
    with pytest.raises(ConfigError, match="input_size=40 must be a multiple of 16"):
        validate_config({"backbone": "timm/samvit_base_patch16", "input_size": 40})
    with pytest.raises(ConfigError, match="early_stopping_patience=0 must be an integer >= 1"):
        validate_config({"backbone": "resnet18", "early_stopping_patience": 0})
    with pytest.raises(ConfigError, match="knn_k=0 must be an integer >= 1"):
        validate_config({"backbone": "resnet18", "strategy": "knn", "knn_k": 0})


def test_a_config_of_the_recorded_sweeps_validates_to_the_same_dict_as_before():
    """Run ids hash the validated config: keys added later must not appear in earlier configs."""
    point = {"backbone": "efficientnet_lite0", "weights": "imagenet", "strategy": "frozen", "lr": 0.001,
             "optimizer": "adam", "epochs": 3, "batch_size": 64, "input_size": 32, "weight_decay": 0.0001,
             "dropout": 0.2, "augmentation": "none", "scheduler": "cosine"}  # conf/space/default.yaml's first
    before = ('{"amp":false,"augmentation":"none","backbone":"efficientnet_lite0","batch_size":64,"dropout":0.2,'
              '"epochs":3,"input_size":32,"label_smoothing":0.0,"lr":0.001,"optimizer":"adam","scheduler":"cosine",'
              '"strategy":"frozen","weight_decay":0.0001,"weights":"imagenet"}')
    assert canonical_json(validate_config(point)) == before


def test_knn_predict_is_a_majority_vote_of_the_nearest_with_ties_to_the_smaller_class():
    support = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0], [12.0]])
    labels = torch.tensor([2, 2, 0, 1, 1, 0])
    queries = torch.tensor([[0.5], [11.2], [1.6]])
    assert train_module.knn_predict(support, labels, queries, 3, 3).tolist() == [2, 1, 2]
    # k = 2 at 6.0: nearest 2.0 (class 0) and 10.0 (class 1), one vote each: the smaller class wins.
    assert train_module.knn_predict(support, labels, torch.tensor([[6.0]]), 2, 3).tolist() == [0]
    metrics = pytest.importorskip("sklearn.neighbors")
    rng = np.random.default_rng(0)
    x, y, q = rng.normal(size=(200, 8)), rng.integers(0, 4, 200), rng.normal(size=(50, 8))
    expected = metrics.KNeighborsClassifier(n_neighbors=11).fit(x, y).predict(q)
    ours = train_module.knn_predict(torch.tensor(x), torch.tensor(y), torch.tensor(q), 11, 4)
    assert ours.tolist() == expected.tolist()


def test_tiny_knn_run_embeds_with_the_frozen_backbone_and_trains_nothing():
    dataset = make_test_blobs(n_train=60, n_eval=30)
    config = {"backbone": "timm/densenet121", "weights": "none", "strategy": "knn", "input_size": 20, "pad_to": 32}
    result = train_run(config, dataset, seed=0, device="cpu")

    assert result["n_epochs"] == 0 and result["curve"] == [] and result["evaluated_epoch"] == 0
    assert result["n_trainable_parameters"] == 0 and result["feature_cache"] is True
    assert result["n_parameters"] == backbone_info("timm/densenet121").n_parameters  # no head counted
    assert result["config"]["knn_k"] == 11 and "lr" not in result["config"]
    # The same embeddings, computed here from the same seeded random weights, and scikit-learn's k-NN.
    torch.manual_seed(0)
    model = build_model("timm/densenet121", weights="none", n_classes=2, dropout=0.0, input_size=32).eval()
    with torch.no_grad():
        embed = {split: model.features(to_model_input(prepare_images(dataset.images[split], 20),
                                                      mean_std("timm/densenet121"), torch.device("cpu"), pad_to=32))
                 for split in ("train", "val", "test")}
    neighbours = pytest.importorskip("sklearn.neighbors").KNeighborsClassifier(n_neighbors=11)
    neighbours.fit(embed["train"].numpy(), dataset.labels["train"])
    for split, key in (("test", "test_accuracy"), ("val", "val_accuracy")):
        expected = float(np.mean(neighbours.predict(embed[split].numpy()) == dataset.labels[split]))
        assert result[key] == pytest.approx(expected)
    assert result["test_accuracy"] >= 0.8  # random DenseNet features still separate the blobs
    with pytest.raises(DataError, match="knn_k=61 needs at least 61 training images"):
        train_run({**config, "knn_k": 61}, dataset, device="cpu")


def test_tiny_linear_probing_run_pads_its_inputs_and_trains_only_the_head(monkeypatch):
    seen_sides, built = set(), []

    def spy_build_model(*args, **kwargs):  # test spy around the real build_model
        model = build_model(*args, **kwargs)
        model.features.register_forward_pre_hook(lambda module, inputs: seen_sides.add(inputs[0].shape[-1]))
        built.append((model, copy.deepcopy(model.state_dict())))
        return model

    monkeypatch.setattr(train_module, "build_model", spy_build_model)
    config = {"backbone": "timm/densenet121", "weights": "none", "strategy": "frozen", "input_size": 20,
              "pad_to": 32, "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01, "epochs": 8, "batch_size": 16}
    result = train_run(config, make_test_blobs(n_train=60, n_eval=30), seed=0, device="cpu")

    assert seen_sides == {32}  # every image reached the backbone padded to 32 px
    (model, before), = built
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("features."))
    assert result["n_trainable_parameters"] == 1024 * 2 + 2 and result["feature_cache"] is True
    assert result["n_epochs"] == 8 and result["evaluated_epoch"] == 8 and result["stopped_early"] is False
    assert result["test_accuracy"] >= 0.8, result  # random DenseNet features, padded, are linearly separable


def test_early_stopping_stops_and_tests_the_lowest_validation_loss_weights(monkeypatch):
    val_losses = iter([1.0, 0.5, 0.7, 0.6, 0.9, 0.4])  # scripted: the best is epoch 2, then 2 worse epochs
    heads = {"val": [], "test": []}  # the head's weights at each evaluation
    real_predict = train_module._Run.predict

    def scripted_predict(self, split):  # test stand-in for the validation loss; predictions are real
        loss, predictions = real_predict(self, split)
        heads[split].append(copy.deepcopy(self.model.head.state_dict()))
        return (next(val_losses) if split == "val" else loss), predictions

    monkeypatch.setattr(train_module._Run, "predict", scripted_predict)
    config = {"backbone": "mobilenet_v3_small", "weights": "none", "strategy": "frozen", "lr": 1e-2,
              "epochs": 6, "input_size": 32, "early_stopping_patience": 2}
    result = train_run(config, make_test_blobs(n_train=40, n_eval=10), device="cpu")

    assert result["n_epochs"] == 4 and result["stopped_early"] is True  # epochs 3 and 4 did not beat epoch 2
    assert result["best_epoch"] == result["evaluated_epoch"] == 2
    assert result["val_accuracy"] == result["curve"][1]["val_accuracy"]
    (tested,) = heads["test"]
    assert torch.equal(tested["1.weight"], heads["val"][1]["1.weight"])  # epoch 2's weights, restored
    assert not torch.equal(tested["1.weight"], heads["val"][3]["1.weight"])
