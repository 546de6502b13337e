"""Any folder of class subfolders, ``root/<class>/<image>`` (kind ``imagefolder``).

If ``root`` holds a ``train/`` folder, its ``train/``, ``val/`` and ``test/`` folders (each laid out as
``<split>/<class>/<image>``) are the splits; a missing ``val/`` or ``test/`` is carved out of train with
``val_fraction`` / ``test_fraction``. Otherwise every class is split at random, stratified and seeded,
into train/val/test by those fractions. Images are read with PIL, resized (bilinear, antialiased) to
``image_size`` x ``image_size`` and given 1 or 3 channels: ``channels: auto`` keeps 3 if any image has
colour, else 1. 16-bit and float images are scaled per image to 0..255 (min to max). Files are found
recursively under each class folder by extension; hidden files and other files are ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from metallmix.data._config import check_float, check_int, format_number
from metallmix.data.base import SPLITS, ImageDataset
from metallmix.data.ops import stratified_split
from metallmix.errors import ConfigError, DataError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm", ".pgm"})
HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
MAX_LISTED_SKIPS = 20


@dataclass(frozen=True)
class ImageFolderOptions:
    """Options of kind ``imagefolder`` (see conf/dataset/imagefolder.yaml)."""

    root: str
    name: str | None = None
    image_size: int = 64
    channels: str | int = "auto"
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    skip_corrupt: bool = False
    modality: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.root, str) or not self.root:
            raise ConfigError(f"dataset option root must be a folder path, got {self.root!r}")
        check_int("image_size", self.image_size, 4, 1024)
        if self.channels not in ("auto", 1, 3):
            raise ConfigError(f"dataset option channels must be auto, 1 or 3, got {self.channels!r}")
        check_float("val_fraction", self.val_fraction, 0.0, 0.9)
        check_float("test_fraction", self.test_fraction, 0.0, 0.9)
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError("val_fraction + test_fraction must be below 1 so that images are left for training")
        check_int("seed", self.seed, 0)
        if not isinstance(self.skip_corrupt, bool):
            raise ConfigError(f"dataset option skip_corrupt must be true or false, got {self.skip_corrupt!r}")


_DEFAULTS = ImageFolderOptions(root="-")


def make_id(opts: ImageFolderOptions) -> str:
    """``{name}@{image_size}``, plus the options that differ from their defaults."""
    base = opts.name or Path(opts.root).expanduser().resolve().name
    parts = [re.sub(r"\s+", "_", base) + f"@{opts.image_size}"]
    if opts.channels != "auto":
        parts.append(f"c{opts.channels}")
    if opts.val_fraction != _DEFAULTS.val_fraction:
        parts.append(f"v{format_number(opts.val_fraction)}")
    if opts.test_fraction != _DEFAULTS.test_fraction:
        parts.append(f"t{format_number(opts.test_fraction)}")
    if opts.seed != _DEFAULTS.seed:
        parts.append(f"s{opts.seed}")
    return "-".join(parts)


def modality(opts: ImageFolderOptions) -> str:
    return opts.modality or "unknown"


def load(opts: ImageFolderOptions) -> ImageDataset:
    """Read, resize and split the images under ``opts.root``."""
    root = Path(opts.root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; set dataset.root to a folder laid out as root/<class>/<image>")
    has_split_folders = (root / "train").is_dir()
    folders = {s: root / s for s in SPLITS if (root / s).is_dir()} if has_split_folders else {"train": root}
    files = {split: _list_class_files(folder) for split, folder in folders.items()}
    class_names = sorted(files["train"])
    if len(class_names) < 2:
        raise DataError(
            f"{folders['train']} holds only the class {class_names}; classification needs at least 2 class subfolders"
        )
    for split, per_class in files.items():
        extra = sorted(set(per_class) - set(class_names))
        if extra:
            raise DataError(f"{folders[split]} has classes {extra} that {folders['train']} lacks; every class must have training images")

    skipped: list[str] = []
    images: dict[str, list[np.ndarray]] = {s: [] for s in folders}
    labels: dict[str, list[int]] = {s: [] for s in folders}
    for split, per_class in files.items():
        for label, class_name in enumerate(class_names):
            for path in per_class.get(class_name, []):
                image = _read_image(path, opts.image_size, opts.skip_corrupt)
                if image is None:
                    skipped.append(str(path))
                    continue
                images[split].append(image)
                labels[split].append(label)
    present = set(labels["train"])
    empty = [name for i, name in enumerate(class_names) if i not in present]
    if empty:
        raise DataError(f"classes {empty} in {folders['train']} have no readable images; add images or remove the folders")

    empty_split = np.empty((0, opts.image_size, opts.image_size, 3), np.uint8)
    rgb = {s: np.stack(images[s]) if images[s] else empty_split for s in folders}
    y = {s: np.asarray(labels[s], dtype=np.int64) for s in folders}
    channels = _choose_channels(opts.channels, rgb)
    x = {s: _to_channels(a, channels) for s, a in rgb.items()}
    x, y = _fill_missing_splits(x, y, opts)
    return ImageDataset(
        name=make_id(opts),
        images=x,
        labels=y,
        n_classes=len(class_names),
        kind="imagefolder",
        modality=modality(opts),
        class_names=class_names,
        description={
            "root": str(root.resolve()),
            "layout": "split folders" if has_split_folders else "stratified random split",
            "carved_from_train": [s for s in ("val", "test") if s not in folders],
            "image_size": opts.image_size,
            "channels": channels,
            "n_skipped_corrupt": len(skipped),
            "skipped_files": skipped[:MAX_LISTED_SKIPS],
        },
    )


def _list_class_files(folder: Path) -> dict[str, list[Path]]:
    """{class name: sorted image files} for the class subfolders of ``folder``."""
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        loose = any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir())
        hint = " (it holds images directly: move them into one subfolder per class)" if loose else ""
        raise DataError(f"{folder} has no class subfolders{hint}; lay images out as {folder}/<class>/<image>")
    per_class = {}
    for class_dir in class_dirs:
        found = sorted(
            p for p in class_dir.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        )
        if not found:
            raise DataError(
                f"class folder {class_dir} has no images (extensions {sorted(IMAGE_EXTENSIONS)}); add images or remove it"
            )
        per_class[class_dir.name] = found
    return per_class


def _read_image(path: Path, size: int, skip_corrupt: bool) -> np.ndarray | None:
    """The image at ``path`` as uint8 RGB (size, size, 3); None if it is unreadable and ``skip_corrupt``."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in HIGH_DEPTH_MODES:
                img = Image.fromarray(_scale_to_uint8(np.asarray(img, dtype=np.float64)))
            rgb = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        if skip_corrupt:
            return None
        raise DataError(
            f"cannot read image {path} ({exc}); fix or delete it, or set dataset.skip_corrupt=true to skip unreadable files"
        ) from exc


def _scale_to_uint8(array: np.ndarray) -> np.ndarray:
    low, high = float(array.min()), float(array.max())
    scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
    return np.round(scaled).astype(np.uint8)


def _choose_channels(requested: str | int, rgb: dict[str, np.ndarray]) -> int:
    if requested != "auto":
        return int(requested)
    any_colour = any(bool(np.any(a[..., 0] != a[..., 1]) or np.any(a[..., 1] != a[..., 2])) for a in rgb.values())
    return 3 if any_colour else 1


def _to_channels(rgb: np.ndarray, channels: int) -> np.ndarray:
    if channels == 3:
        return rgb
    luminance = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.clip(np.round(luminance), 0, 255).astype(np.uint8)[..., None]


def _fill_missing_splits(
    x: dict[str, np.ndarray], y: dict[str, np.ndarray], opts: ImageFolderOptions
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Carve the splits that have no folder out of train, stratified and seeded."""
    missing = [s for s in ("val", "test") if s not in x]
    if not missing:
        return x, y
    fractions = {"val": opts.val_fraction, "test": opts.test_fraction}
    rng = np.random.default_rng(opts.seed)
    *carved, rest = stratified_split(y["train"], tuple(fractions[s] for s in missing), rng)
    train_x, train_y = x["train"], y["train"]
    for split, idx in zip(missing, carved):
        x[split], y[split] = train_x[idx], train_y[idx]
    x["train"], y["train"] = train_x[rest], train_y[rest]
    return x, y
