import re
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from metallmix.data import (
    MEDMNIST_2D,
    SPLITS,
    dataset_id,
    derive_family,
    describe_dataset,
    load_dataset,
)
from metallmix.data.derived import imbalance_counts
from metallmix.errors import ConfigError, DataError

CONF = Path(__file__).resolve().parents[1] / "conf" / "dataset"
BREAST = {"kind": "medmnist", "name": "breastmnist"}
RETINA = {"kind": "medmnist", "name": "retinamnist"}


def counts(labels):
    return dict(enumerate(np.bincount(labels).tolist()))


# --- MedMNIST -------------------------------------------------------------------------------------


def test_builtin_breastmnist():
    ds = load_dataset(BREAST)
    assert {s: ds.images[s].shape for s in SPLITS} == {
        "train": (546, 28, 28, 1), "val": (78, 28, 28, 1), "test": (156, 28, 28, 1)
    }
    assert counts(ds.labels["train"]) == {0: 147, 1: 399}
    assert (ds.n_classes, ds.kind, ds.name, ds.parent) == (2, "medmnist", "breastmnist", None)
    assert ds.modality == "breast ultrasound"
    assert ds.class_names == ["malignant", "normal, benign"]


def test_builtin_retinamnist_from_omegaconf_with_modality_override():
    ds = load_dataset(OmegaConf.create({**RETINA, "modality": "fundus"}))
    assert {s: ds.images[s].shape for s in SPLITS} == {
        "train": (1080, 28, 28, 3), "val": (120, 28, 28, 3), "test": (400, 28, 28, 3)
    }
    assert counts(ds.labels["train"]) == {0: 486, 1: 128, 2: 206, 3: 194, 4: 66}
    assert ds.n_classes == 5 and ds.modality == "fundus"


def test_medmnist_table_covers_the_2d_datasets():
    assert len(MEDMNIST_2D) == 12
    assert all(len(info.class_names) == info.n_classes for info in MEDMNIST_2D.values())


def write_npz(path: Path, n_classes: int = 4, size: int = 28, rgb: bool = False, **replace) -> None:
    """A test stand-in for a MedMNIST file: random images in the official layout."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in zip(SPLITS, (20, 6, 8)):
        shape = (n, size, size, 3) if rgb else (n, size, size)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % n_classes).astype(np.uint8)[:, None]
    arrays.update(replace)
    np.savez(path, **arrays)


def test_medmnist_from_root_at_size_64(tmp_path):
    write_npz(tmp_path / "octmnist_64.npz", n_classes=4, size=64)
    cfg = {"kind": "medmnist", "name": "octmnist", "root": str(tmp_path), "size": 64}
    ds = load_dataset(cfg)
    assert ds.images["train"].shape == (20, 64, 64, 1)
    assert ds.name == dataset_id(cfg) == "octmnist@64"
    assert ds.modality == "retinal oct"
    assert ds.description["file"] == str(tmp_path / "octmnist_64.npz")


def test_npz_with_wrong_keys(tmp_path):
    np.savez(tmp_path / "pneumoniamnist.npz", x_train=np.zeros((2, 28, 28), np.uint8), y_train=np.zeros(2))
    with pytest.raises(DataError, match=r"expected the arrays .*train_images.*found \['x_train', 'y_train'\]"):
        load_dataset({"kind": "medmnist", "name": "pneumoniamnist", "root": str(tmp_path)})


def test_npz_with_multilabel_or_wrong_size_arrays(tmp_path):
    write_npz(tmp_path / "pneumoniamnist.npz", n_classes=2, train_labels=np.zeros((20, 3), np.uint8))
    with pytest.raises(DataError, match="single-label"):
        load_dataset({"kind": "medmnist", "name": "pneumoniamnist", "root": str(tmp_path)})
    write_npz(tmp_path / "bloodmnist_128.npz", n_classes=8, size=64, rgb=True)
    with pytest.raises(DataError, match="expected 128x128"):
        load_dataset({"kind": "medmnist", "name": "bloodmnist", "root": str(tmp_path), "size": 128})


def test_unknown_and_multilabel_names():
    with pytest.raises(DataError, match="valid 2D names.*breastmnist.*pathmnist"):
        load_dataset({"kind": "medmnist", "name": "brainmnist"})
    with pytest.raises(DataError, match="multi-label"):
        load_dataset({"kind": "medmnist", "name": "chestmnist"})


def test_missing_file_names_file_folder_and_download(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=rf"dermamnist\.npz not found in {re.escape(str(tmp_path))}.*download=true"):
        load_dataset({"kind": "medmnist", "name": "dermamnist", "root": str(tmp_path)})
    with pytest.raises(DataError, match=r"pathmnist_224\.npz.*built-in copies are only breastmnist\.npz, retinamnist\.npz"):
        load_dataset({"kind": "medmnist", "name": "pathmnist", "size": 224})
    monkeypatch.setitem(sys.modules, "medmnist", None)  # as if the package were not installed
    with pytest.raises(DataError, match="pip install medmnist"):
        load_dataset({"kind": "medmnist", "name": "dermamnist", "root": str(tmp_path), "download": True})


def test_bad_config_values():
    with pytest.raises(ConfigError, match="kind"):
        load_dataset({"name": "breastmnist"})
    with pytest.raises(ConfigError, match=r"no option\(s\) \['nmae'\]"):
        dataset_id({"kind": "medmnist", "nmae": "breastmnist"})
    with pytest.raises(ConfigError, match="size must be one of"):
        dataset_id({**BREAST, "size": 32})


def test_conf_files_parse():
    ids = {p.stem: dataset_id(OmegaConf.load(p)) for p in sorted(CONF.glob("*.yaml")) if p.stem != "imagefolder"}
    assert ids == {
        "breastmnist": "breastmnist",
        "derived": "breastmnist~ib3-s0",
        "generated": "generated-c4-n600-r32-ch1-ib1-d0.3-s0",
        "medmnist": "breastmnist",
        "retinamnist": "retinamnist",
    }
    with pytest.raises(ConfigError, match="needs option 'root'"):
        dataset_id(OmegaConf.load(CONF / "imagefolder.yaml"))


def test_hydra_overrides_select_any_medmnist_dataset():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF.parent), version_base=None):
        cfg = compose(overrides=["+dataset=medmnist", "dataset.name=retinamnist", "dataset.modality=fundus"])
        derived = compose(overrides=["+dataset=derived", "dataset.parent.name=retinamnist", "dataset.classes=[0,4]"])
    assert describe_dataset(cfg.dataset).modality == "fundus" and dataset_id(cfg.dataset) == "retinamnist"
    assert load_dataset(derived.dataset).name == "retinamnist~cls0+4-ib3-s0"


# --- image folders --------------------------------------------------------------------------------


def write_png(path: Path, value, size=(10, 12), mode="L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)


def test_imagefolder_round_trip_random_split(tmp_path):
    for i in range(10):
        write_png(tmp_path / "benign" / f"{i}.png", 40)
        write_png(tmp_path / "malignant" / "sub" / f"{i}.png", 200)  # nested folders are found too
    (tmp_path / "benign" / "notes.txt").write_text("not an image")
    cfg = {"kind": "imagefolder", "root": str(tmp_path), "image_size": 8, "name": "busi", "modality": "ultrasound"}
    ds = load_dataset(cfg)
    assert ds.name == dataset_id(cfg) == "busi@8"
    assert ds.class_names == ["benign", "malignant"] and ds.channels == 1 and ds.resolution == 8
    assert ds.modality == "ultrasound" and ds.kind == "imagefolder"
    assert [len(ds.labels[s]) for s in SPLITS] == [12, 4, 4]
    for split in SPLITS:  # stratified, and pixel values survive the round trip
        n = len(ds.labels[split])
        assert np.bincount(ds.labels[split]).tolist() == [n // 2, n // 2]
        expected = np.where(ds.labels[split] == 0, 40, 200)
        assert np.array_equal(ds.images[split].reshape(n, -1).mean(axis=1), expected)
    assert dataset_id({**cfg, "seed": 1, "channels": 3}) == "busi@8-c3-s1"


def test_imagefolder_split_folders_and_colour(tmp_path):
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        for i in range(n):
            write_png(tmp_path / split / "a" / f"{i}.png", (255, 0, 0), mode="RGB")
            write_png(tmp_path / split / "b" / f"{i}.png", 90)
    ds = load_dataset({"kind": "imagefolder", "root": str(tmp_path), "image_size": 6})
    assert ds.channels == 3 and ds.description["layout"] == "split folders"
    assert [len(ds.labels[s]) for s in SPLITS] == [8, 4, 4]
    assert ds.images["train"][ds.labels["train"] == 0][0, 0, 0].tolist() == [255, 0, 0]
    gray = load_dataset({"kind": "imagefolder", "root": str(tmp_path), "image_size": 6, "channels": 1})
    assert gray.channels == 1 and gray.images["train"][gray.labels["train"] == 0][0, 0, 0, 0] == 76  # luminance of red


def test_imagefolder_carves_missing_test_split_from_train(tmp_path):
    for i in range(10):
        write_png(tmp_path / "train" / "a" / f"{i}.png", 10)
        write_png(tmp_path / "train" / "b" / f"{i}.png", 20)
    for i in range(2):
        write_png(tmp_path / "val" / "a" / f"{i}.png", 10)
        write_png(tmp_path / "val" / "b" / f"{i}.png", 20)
    ds = load_dataset({"kind": "imagefolder", "root": str(tmp_path), "image_size": 4, "test_fraction": 0.2})
    assert [len(ds.labels[s]) for s in SPLITS] == [16, 4, 4]
    assert ds.description["carved_from_train"] == ["test"]


def test_imagefolder_errors(tmp_path):
    def load(root, **extra):
        return load_dataset({"kind": "imagefolder", "root": str(root), "image_size": 8, **extra})

    with pytest.raises(DataError, match="does not exist"):
        load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class subfolders"):
        load(tmp_path / "empty")
    write_png(tmp_path / "loose" / "x.png", 1)
    with pytest.raises(DataError, match="holds images directly"):
        load(tmp_path / "loose")
    write_png(tmp_path / "one" / "only" / "x.png", 1)
    with pytest.raises(DataError, match="only the class"):
        load(tmp_path / "one")
    write_png(tmp_path / "hollow" / "a" / "x.png", 1)
    (tmp_path / "hollow" / "b").mkdir()
    with pytest.raises(DataError, match=r"class folder .*hollow/b has no images"):
        load(tmp_path / "hollow")
    for i in range(3):
        write_png(tmp_path / "corrupt" / "a" / f"{i}.png", 1)
        write_png(tmp_path / "corrupt" / "b" / f"{i}.png", 2)
    (tmp_path / "corrupt" / "b" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"broken\.png.*skip_corrupt=true"):
        load(tmp_path / "corrupt")
    ds = load(tmp_path / "corrupt", skip_corrupt=True)
    assert ds.n_images() == 6 and ds.description["n_skipped_corrupt"] == 1
    with pytest.raises(ConfigError, match="channels"):
        load(tmp_path / "corrupt", channels=2)


def test_imagefolder_reads_16_bit_images(tmp_path):
    for label, high in (("a", 1000), ("b", 60000)):
        for i in range(4):
            array = np.zeros((8, 8), np.uint16)
            array[:, 4:] = high
            path = tmp_path / label / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(path)
    ds = load_dataset({"kind": "imagefolder", "root": str(tmp_path), "image_size": 8, "val_fraction": 0, "test_fraction": 0})
    assert ds.images["train"][0, 0, :, 0].tolist() == [0] * 4 + [255] * 4  # min..max scaled per image


# --- generated ------------------------------------------------------------------------------------

GENERATED = {"kind": "generated", "n_classes": 5, "n_images": 1000, "resolution": 16, "imbalance": 4.0, "seed": 3}


def test_generated_properties():
    ds = load_dataset(GENERATED)
    assert ds.kind == "generated" and ds.modality == "synthetic"
    assert ds.name == "generated-c5-n1000-r16-ch1-ib4-d0.3-s3"
    assert ds.description["imbalance"] == 4.0 and ds.description["difficulty"] == 0.3
    assert [len(ds.labels[s]) for s in SPLITS] == [700, 150, 150]
    assert ds.images["train"].shape == (700, 16, 16, 1) and ds.images["train"].dtype == np.uint8
    sizes = np.bincount(ds.labels["train"])
    assert np.all(np.diff(sizes) < 0) and sizes.sum() == 700
    assert sizes[0] / sizes[-1] == pytest.approx(4.0, rel=0.05)
    assert ds.images["train"].std() > 10  # image-like, not blank


def test_generated_determinism_and_seeds():
    a, b = load_dataset(GENERATED), load_dataset(GENERATED)
    assert all(np.array_equal(a.images[s], b.images[s]) and np.array_equal(a.labels[s], b.labels[s]) for s in SPLITS)
    c = load_dataset({**GENERATED, "seed": 4})
    assert not np.array_equal(a.images["train"], c.images["train"])
    assert dataset_id({**GENERATED, "seed": 4}) != a.name


def test_generated_per_split_sizes_and_colour():
    cfg = {"kind": "generated", "n_images": None, "n_train": 40, "n_val": 10, "n_test": 12, "channels": 3, "resolution": 12}
    ds = load_dataset(cfg)
    assert [len(ds.labels[s]) for s in SPLITS] == [40, 10, 12]
    assert ds.images["test"].shape == (12, 12, 12, 3) and ds.name.startswith("generated-c4-n40+10+12-r12-ch3")
    assert np.bincount(ds.labels["train"]).tolist() == [10, 10, 10, 10]
    with pytest.raises(ConfigError, match="n_train, n_val and n_test"):
        dataset_id({"kind": "generated", "n_train": 40})
    with pytest.raises(ConfigError, match="leaves a class empty"):
        load_dataset({"kind": "generated", "n_classes": 10, "n_images": 12, "imbalance": 50})


def test_generated_difficulty_lowers_separability():
    from metallmix.data import compute_meta_features

    def landmark(difficulty):
        ds = load_dataset({"kind": "generated", "n_images": 800, "resolution": 16, "difficulty": difficulty})
        return compute_meta_features(ds)["centroid_accuracy"]

    assert landmark(0.0) > landmark(1.0)


# --- derived --------------------------------------------------------------------------------------


def test_derived_class_subset_is_remapped_and_records_parent():
    cfg = {"kind": "derived", "parent": RETINA, "classes": [4, 0, 2]}
    ds = load_dataset(cfg)
    assert ds.kind == "derived" and ds.parent == "retinamnist" and ds.n_classes == 3
    assert ds.name == dataset_id(cfg) == "retinamnist~cls0+2+4-s0"
    assert counts(ds.labels["train"]) == {0: 486, 1: 206, 2: 66}
    assert ds.class_names == ["0", "2", "4"] and ds.modality == "fundus photography"
    assert describe_dataset(cfg).parent == "retinamnist"


def test_derived_imbalance_size_and_resolution():
    cfg = {"kind": "derived", "parent": BREAST, "imbalance": 5, "resolution": 16, "max_eval": 50}
    ds = load_dataset(cfg)
    assert counts(ds.labels["train"]) == {0: 79, 1: 395}  # largest / smallest = 5 exactly
    assert ds.images["val"].shape == (50, 16, 16, 1) and len(ds.labels["test"]) == 50
    small = load_dataset({"kind": "derived", "parent": BREAST, "max_train": 100})
    assert counts(small.labels["train"]) == {0: 27, 1: 73}  # stratified
    assert len(load_dataset({"kind": "derived", "parent": BREAST, "train_fraction": 0.5}).labels["train"]) == 273


def test_imbalance_counts_keep_order_and_reach_ratio():
    result = imbalance_counts(np.array([50, 400, 100, 300]), 8.0)
    assert result.tolist() == [50, 400, 100, 200]
    assert result.max() / result.min() == 8.0
    with pytest.raises(DataError, match="cannot reach imbalance"):
        imbalance_counts(np.array([1, 3]), 5.0)


def test_derived_n_classes_by_seed_and_chains():
    first = load_dataset({"kind": "derived", "parent": RETINA, "n_classes": 3, "seed": 1})
    again = load_dataset({"kind": "derived", "parent": RETINA, "n_classes": 3, "seed": 1})
    assert first.description["kept_parent_classes"] == again.description["kept_parent_classes"]
    assert first.n_classes == 3 and set(np.unique(first.labels["test"])) <= {0, 1, 2}
    chain = {"kind": "derived", "parent": {"kind": "derived", "parent": RETINA, "n_classes": 3}, "max_train": 60}
    ds = load_dataset(chain)
    assert ds.parent == "retinamnist" and ds.description["derived_from"] == "retinamnist~k3-s0"
    assert ds.name == "retinamnist~k3-s0~n60-s0"


def test_derived_bad_configs():
    with pytest.raises(ConfigError, match="at least one of"):
        dataset_id({"kind": "derived", "parent": BREAST})
    with pytest.raises(ConfigError, match="not classes of the parent"):
        load_dataset({"kind": "derived", "parent": BREAST, "classes": [0, 7]})
    with pytest.raises(ConfigError, match="either classes or n_classes"):
        dataset_id({"kind": "derived", "parent": BREAST, "classes": [0, 1], "n_classes": 2})


def test_derive_family():
    family = derive_family(RETINA, 8, seed=0)
    assert family == derive_family(RETINA, 8, seed=0)
    ids = [dataset_id(cfg) for cfg in family]
    assert len(set(ids)) == 8 and all(i.startswith("retinamnist~") for i in ids)
    for cfg in family[:3]:
        ds = load_dataset(cfg)
        assert ds.parent == "retinamnist" and np.bincount(ds.labels["train"]).min() >= 5
