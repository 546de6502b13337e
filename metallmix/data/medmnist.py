"""MedMNIST v2 2D datasets from their standard ``.npz`` files (kind ``medmnist``).

A file holds the arrays train_images, train_labels, val_images, val_labels, test_images and
test_labels (uint8; images (N, H, W) grayscale or (N, H, W, 3) RGB; labels (N, 1)). It is named
``{name}.npz`` at size 28 and ``{name}_{size}.npz`` at 64, 128 and 224, and is read from ``root``.
With ``root`` unset the copies shipped in ``metallmix/data/builtin/medmnist`` are used: BreastMNIST and
RetinaMNIST at size 28 (CC BY 4.0, see SOURCE.md there). Files are downloaded only when
``download: true``, through the official ``medmnist`` package (into ``root``, or ``~/.medmnist``).

ChestMNIST is multi-label (14 findings per image); metallmix trains single-label classifiers only, so
it is rejected. RetinaMNIST's 5 ordinal grades are treated as 5 classes.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metallmix.data._config import check_int
from metallmix.data.base import SPLITS, ImageDataset
from metallmix.errors import ConfigError, DataError, DatasetNotFoundError

BUILTIN_DIR = Path(__file__).parent / "builtin" / "medmnist"
SIZES = (28, 64, 128, 224)
EXPECTED_KEYS = tuple(f"{split}_{part}" for split in SPLITS for part in ("images", "labels"))
DEFAULT_DOWNLOAD_ROOT = Path("~/.medmnist")


@dataclass(frozen=True)
class MedMNISTInfo:
    """What MedMNIST v2 documents about one 2D dataset."""

    modality: str
    task: str
    n_classes: int
    channels: int
    class_names: tuple[str, ...]
    licence: str = "CC BY 4.0"


_ORGAN_CLASSES = (
    "bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right",
    "liver", "lung-left", "lung-right", "pancreas", "spleen",
)

MEDMNIST_2D: dict[str, MedMNISTInfo] = {
    "pathmnist": MedMNISTInfo(
        "colon pathology", "multi-class", 9, 3,
        ("adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
         "normal colon mucosa", "cancer-associated stroma", "colorectal adenocarcinoma epithelium"),
    ),
    "chestmnist": MedMNISTInfo(
        "chest x-ray", "multi-label", 14, 1,
        ("atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia",
         "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural", "hernia"),
    ),
    "dermamnist": MedMNISTInfo(
        "dermatoscopy", "multi-class", 7, 3,
        ("actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
         "benign keratosis-like lesions", "dermatofibroma", "melanoma", "melanocytic nevi", "vascular lesions"),
        licence="CC BY-NC 4.0",
    ),
    "octmnist": MedMNISTInfo(
        "retinal oct", "multi-class", 4, 1,
        ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
    ),
    "pneumoniamnist": MedMNISTInfo("chest x-ray", "binary-class", 2, 1, ("normal", "pneumonia")),
    "retinamnist": MedMNISTInfo("fundus photography", "ordinal-regression", 5, 3, ("0", "1", "2", "3", "4")),
    "breastmnist": MedMNISTInfo("breast ultrasound", "binary-class", 2, 1, ("malignant", "normal, benign")),
    "bloodmnist": MedMNISTInfo(
        "blood cell microscopy", "multi-class", 8, 3,
        ("basophil", "eosinophil", "erythroblast", "immature granulocytes", "lymphocyte", "monocyte",
         "neutrophil", "platelet"),
    ),
    "tissuemnist": MedMNISTInfo(
        "kidney cortex microscopy", "multi-class", 8, 1,
        ("collecting duct, connecting tubule", "distal convoluted tubule", "glomerular endothelial cells",
         "interstitial endothelial cells", "leukocytes", "podocytes", "proximal tubule segments",
         "thick ascending limb"),
    ),
    "organamnist": MedMNISTInfo("abdominal ct (axial)", "multi-class", 11, 1, _ORGAN_CLASSES),
    "organcmnist": MedMNISTInfo("abdominal ct (coronal)", "multi-class", 11, 1, _ORGAN_CLASSES),
    "organsmnist": MedMNISTInfo("abdominal ct (sagittal)", "multi-class", 11, 1, _ORGAN_CLASSES),
}


@dataclass(frozen=True)
class MedMNISTOptions:
    """Options of kind ``medmnist`` (see conf/dataset/medmnist.yaml)."""

    name: str
    root: str | None = None
    size: int = 28
    download: bool = False
    modality: str | None = None

    def __post_init__(self) -> None:
        if self.name not in MEDMNIST_2D:
            raise DatasetNotFoundError(f"unknown MedMNIST dataset {self.name!r}; valid 2D names: {sorted(MEDMNIST_2D)}")
        if MEDMNIST_2D[self.name].task == "multi-label":
            raise DataError(
                f"{self.name} is multi-label ({MEDMNIST_2D[self.name].n_classes} findings per image); metallmix "
                "trains single-label classifiers only: pick another dataset"
            )
        check_int("size", self.size, 28)
        if self.size not in SIZES:
            raise ConfigError(f"MedMNIST size must be one of {list(SIZES)}, got {self.size!r}")
        if not isinstance(self.download, bool):
            raise ConfigError(f"dataset option download must be true or false, got {self.download!r}")


def file_name(name: str, size: int) -> str:
    return f"{name}.npz" if size == 28 else f"{name}_{size}.npz"


def make_id(opts: MedMNISTOptions) -> str:
    return opts.name if opts.size == 28 else f"{opts.name}@{opts.size}"


def modality(opts: MedMNISTOptions) -> str:
    return opts.modality or MEDMNIST_2D[opts.name].modality


def locate(opts: MedMNISTOptions) -> Path:
    """The npz file for ``opts``; downloads it first when ``opts.download`` is set and it is missing."""
    name = file_name(opts.name, opts.size)
    if opts.root is None:
        builtin = BUILTIN_DIR / name
        if builtin.is_file():
            return builtin
        folder = DEFAULT_DOWNLOAD_ROOT.expanduser()
    else:
        folder = Path(opts.root).expanduser()
    path = folder / name
    if path.is_file():
        return path
    if opts.download:
        _download(opts.name, opts.size, folder)
        if path.is_file():
            return path
        raise DataError(f"the medmnist package ran but {path} is still missing; download {name} by hand into {folder}")
    shipped = ", ".join(sorted(p.name for p in BUILTIN_DIR.glob("*.npz")))
    where = (
        f"root is unset and the built-in copies are only {shipped}; set dataset.root=DIR"
        if opts.root is None
        else f"place it in {folder}"
    )
    raise DatasetNotFoundError(
        f"MedMNIST file {name} not found in {folder}: {where} (a folder holding {name}), "
        "or set dataset.download=true to fetch it with the medmnist package"
    )


def _download(name: str, size: int, folder: Path) -> None:
    try:
        import medmnist
    except ImportError as exc:
        raise DataError(f"downloading {file_name(name, size)} needs the medmnist package: pip install medmnist") from exc
    folder.mkdir(parents=True, exist_ok=True)
    data_class = getattr(medmnist, medmnist.INFO[name]["python_class"])
    data_class(split="train", root=str(folder), download=True, size=size)


def load(opts: MedMNISTOptions) -> ImageDataset:
    """Read the npz of ``opts`` into an ImageDataset (grayscale images get a channel axis of 1)."""
    path = locate(opts)
    info = MEDMNIST_2D[opts.name]
    images, labels = {}, {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            found = sorted(npz.files)
            missing = [k for k in EXPECTED_KEYS if k not in found]
            if missing:
                raise DataError(
                    f"{path} is not a MedMNIST npz: expected the arrays {list(EXPECTED_KEYS)}, found {found}"
                )
            for split in SPLITS:
                images[split] = _images(npz[f"{split}_images"], path, split, opts.size)
                labels[split] = _labels(npz[f"{split}_labels"], path, split, len(images[split]), info.n_classes)
    except DataError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise DataError(f"cannot read {path} as an npz file ({exc}); replace it with the official {path.name}") from exc
    return ImageDataset(
        name=make_id(opts),
        images=images,
        labels=labels,
        n_classes=info.n_classes,
        kind="medmnist",
        modality=modality(opts),
        class_names=list(info.class_names),
        description={
            "source": "MedMNIST v2",
            "dataset": opts.name,
            "size": opts.size,
            "file": str(path),
            "task": info.task,
            "licence": info.licence,
        },
    )


def _images(array: np.ndarray, path: Path, split: str, size: int) -> np.ndarray:
    if array.dtype != np.uint8 or array.ndim not in (3, 4) or (array.ndim == 4 and array.shape[-1] != 3):
        raise DataError(
            f"{path}: {split}_images must be uint8 (N, H, W) or (N, H, W, 3), got {array.dtype} {array.shape}"
        )
    if array.shape[1:3] != (size, size):
        raise DataError(f"{path}: {split}_images are {array.shape[1]}x{array.shape[2]}, expected {size}x{size} for size={size}")
    return array[..., None] if array.ndim == 3 else array


def _labels(array: np.ndarray, path: Path, split: str, n_images: int, n_classes: int) -> np.ndarray:
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1 or len(array) != n_images or not np.issubdtype(array.dtype, np.integer):
        raise DataError(
            f"{path}: {split}_labels must be integers of shape ({n_images}, 1) (single-label), got {array.dtype} {array.shape}"
        )
    if len(array) and (array.min() < 0 or array.max() >= n_classes):
        raise DataError(f"{path}: {split}_labels hold values outside 0..{n_classes - 1}")
    return array.astype(np.int64)
