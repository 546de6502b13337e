"""The MedMNIST+ grid as a sweep space (conf/space/medmnistplus.yaml): expansion in the knowledge base's
vocabulary, its translation into training configs, the resolution rule, the weights check, and a real
Tune sweep whose rows compare with the imported ones."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir

from metallmix.errors import ConfigError, WeightsUnavailableError
from metallmix.metadataset import load_meta_dataset, row_config, run_key
from metallmix.metadataset import medmnistplus_space as translation
from metallmix.metadataset.medmnistplus import FIXED_SETTINGS, KNN_SETTINGS
from metallmix.sweep import (
    check_space_weights,
    expand_space,
    expand_space_points,
    plan_sweep,
    prepare_datasets,
    run_sweep,
)
from metallmix.training import BACKBONES
from metallmix.training import backbones as backbones_module

REPO = Path(__file__).resolve().parent.parent
SPACE = yaml.safe_load((REPO / "conf" / "space" / "medmnistplus.yaml").read_text())
# Test data: a tiny generated dataset of 32 px images (labelled generated everywhere).
TINY_DATASET = {"kind": "generated", "n_classes": 2, "n_images": 120, "resolution": 32, "channels": 1,
                "imbalance": 1.0, "difficulty": 0.1, "seed": 3}


def point_key(config: dict) -> tuple:
    return config["model"], config["scheme"], int(config["resolution"])


@pytest.fixture(scope="module")
def imported_configs() -> dict[tuple, dict]:
    """The config of every medmnistplus:builtin row, by (model, scheme, resolution)."""
    df = load_meta_dataset("medmnistplus:builtin")
    return {point_key(config): config for config in (row_config(row) for _, row in df.iterrows())}


def test_the_space_is_the_benchmarks_grid_with_the_importers_configs(imported_configs, monkeypatch):
    def no_building(*args, **kwargs):  # expanding must build no model and read no weights
        raise AssertionError("expanding the space built a model or looked for weights")

    monkeypatch.setattr(backbones_module, "_build_features", no_building)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", no_building)
    points = expand_space_points(SPACE)

    assert len(points) == 120 and len(imported_configs) == 120
    ours = {point_key(p.config): p.config for p in points}
    assert set(ours) == set(imported_configs)
    for key, config in ours.items():
        # Equal values (the imported frame holds knn's empty batch_size etc. as NaN, so its ints are floats)
        # and the same keys in the importer's order.
        assert config == imported_configs[key], key
        assert list(config) == ["model", "scheme", "resolution",
                                *(KNN_SETTINGS if key[1] == "knn" else FIXED_SETTINGS)]
    assert expand_space(SPACE) == [p.config for p in points]
    assert {p.training["backbone"] for p in points} == set(translation.BACKBONE_OF_MODEL.values())
    assert set(translation.BACKBONE_OF_MODEL.values()) <= set(BACKBONES)


def test_hydra_loads_the_space_as_written():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="sweep", overrides=["space=medmnistplus"])
    assert expand_space(cfg.space) == expand_space(SPACE)


def test_points_translate_into_the_benchmarks_training_set_up():
    by_key = {point_key(p.config): p.training for p in expand_space_points(SPACE)}
    assert by_key[("vit_base_patch16_224.dino", "end_to_end", 28)] == {
        "backbone": "timm/vit_base_patch16_224.dino", "weights": "imagenet", "strategy": "full", "lr": 1e-4,
        "batch_size": 64, "optimizer": "adamw", "epochs": 100, "weight_decay": 0.01, "dropout": 0.0,
        "augmentation": "none", "input_size": 28, "scheduler": "cosine", "label_smoothing": 0.0, "amp": False,
        "pad_to": 224, "early_stopping_patience": 5}
    linear_probing = by_key[("alexnet", "linear_probing", 128)]
    assert (linear_probing["backbone"], linear_probing["strategy"]) == ("alexnet", "frozen")
    assert linear_probing["input_size"] == 128
    assert by_key[("samvit_base_patch16", "knn", 64)] == {
        "backbone": "timm/samvit_base_patch16", "weights": "imagenet", "strategy": "knn", "input_size": 64,
        "amp": False, "pad_to": 224, "knn_k": 11}


@pytest.mark.parametrize("point, message", [
    ({"model": "resnet50", "scheme": "knn", "resolution": 28}, "not one of the benchmark's models"),
    ({"model": "alexnet", "scheme": "fine_tune", "resolution": 28}, "scheme='fine_tune'"),
    ({"model": "alexnet", "scheme": "knn", "resolution": 28, "max_epochs": 5}, "max_epochs do(es) not apply"),
    ({"model": "alexnet", "scheme": "end_to_end", "resolution": 28, "batch_size": 6.5},
     "batch_size=6.5 must be an integer"),
    ({"model": "alexnet", "scheme": "end_to_end"}, "lacks ['resolution']"),
    ({"model": "alexnet", "scheme": "end_to_end", "resolution": 28, "pad_to": 16},
     "pad_to=16 must be an integer >= 63"),
])
def test_bad_points_are_named(point, message):
    space = {"name": "medmnistplus", "translation": SPACE["translation"], "grid": [{k: [v] for k, v in point.items()}]}
    with pytest.raises(ConfigError) as error:
        expand_space(space)
    assert message in str(error.value)


@pytest.mark.parametrize("path, message", [
    ("metallmix.no_such_translation", "cannot be imported"),
    ("metallmix.errors", "lacks recorded_config, training_config, skip_reason, row_meta_features"),
])
def test_a_bad_translation_is_named(path, message):
    with pytest.raises(ConfigError, match=message):
        expand_space({**SPACE, "translation": path})


def test_points_above_the_datasets_resolution_are_left_out_and_rows_record_the_run_resolution():
    datasets = prepare_datasets([{**TINY_DATASET, "resolution": 64, "n_images": 40}])
    points = expand_space_points(SPACE)
    plan = plan_sweep(datasets, points, [0], set(), translation)

    assert len(plan.trials) == 60 and not plan.skipped  # 10 models x 3 schemes x resolutions 28 and 64
    assert plan.left_out == {translation.SKIP_REASON: 60}  # 128 and 224 would be upsampled
    for trial in plan.trials:
        assert trial.meta_features["resolution"] == trial.config["resolution"] in (28, 64)
        assert trial.meta_features["n_images"] == 40
        assert trial.run_id == run_key(trial.dataset_id, trial.config, 0)


def test_missing_weights_stop_the_sweep_before_any_trial(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "torch"))
    try:
        cfg = {"space": SPACE, "datasets": [TINY_DATASET], "store": str(tmp_path / "store")}
        with pytest.raises(WeightsUnavailableError) as error:
            run_sweep(cfg)
    finally:
        torch.hub.set_dir(previous)
    message = str(error.value)
    assert message.startswith("10 backbones of the space lack their weights (or pass allow_download=true)")
    assert "alexnet-owt-7be5be79.pth" in message and "timm/vgg16.tv_in1k" in message
    assert str(tmp_path / "hf" / "models--timm--samvit_base_patch16.sa1b") in message
    assert not (tmp_path / "store").exists()
    check_space_weights(expand_space_points(SPACE), allow_download=True)  # a cluster may download them


def test_real_tune_sweep_records_rows_comparable_with_the_imported_ones(tmp_path, capsys, imported_configs):
    # Test-only variant of the space: random weights and padding to 64 px (not 224) keep it fast on a CPU,
    # and two epochs at most; rows record those settings, the rest as the importer writes it.
    overrides = {"weights": "none", "pad_to": 64}
    space = {**SPACE, "fixed": overrides, "grid": [
        {"model": ["densenet121"], "scheme": ["linear_probing"], "resolution": [28, 64], "max_epochs": [2]},
        {"model": ["densenet121"], "scheme": ["knn"], "resolution": [28]},
    ]}
    cfg = {"space": space, "datasets": [TINY_DATASET], "seeds": [0], "store": str(tmp_path / "store"),
           "resources": {"cpu": 1, "gpu": 0}, "ray": {"num_cpus": 2}}
    result = run_sweep(cfg)

    out = capsys.readouterr().out
    assert f"1 runs left out: {translation.SKIP_REASON} (1)" in out  # 64 px on 32 px images
    df = load_meta_dataset(result.store)
    assert len(df) == 2 and (df["status"] == "ok").all(), df["error"].tolist()
    assert (df["search_space"] == "medmnistplus").all()
    rows = {row["cfg_scheme"]: row for _, row in df.iterrows()}
    expected = {
        "linear_probing": {**imported_configs[("densenet121", "linear_probing", 28)], **overrides, "max_epochs": 2},
        "knn": {**imported_configs[("densenet121", "knn", 28)], **overrides},
    }
    for scheme, row in rows.items():
        assert row_config(row) == expected[scheme]
        assert row["mf_resolution"] == 28.0 and row["mf_n_images"] == 120  # the run's side; the dataset's size
        assert 0.0 <= row["accuracy"] <= 1.0 and row["cost_seconds"] > 0
        recorded = next(p.config for p in expand_space_points(space) if p.config["scheme"] == scheme)
        assert row["run_id"] == run_key(row["dataset_id"], recorded, 0)
        training = json.loads(row["metrics_json"])["config"]
        assert training == json.loads(row["provenance_json"])["training_config"]
        assert (training["backbone"], training["input_size"], training["pad_to"]) == ("timm/densenet121", 28, 64)
    assert rows["knn"]["n_epochs"] == 0 and json.loads(rows["knn"]["metrics_json"])["config"]["knn_k"] == 11
    linear = json.loads(rows["linear_probing"]["metrics_json"])
    assert linear["config"]["strategy"] == "frozen" and linear["config"]["early_stopping_patience"] == 5
    assert 1 <= rows["linear_probing"]["n_epochs"] <= 2 and linear["evaluated_epoch"] >= 1
