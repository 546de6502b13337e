"""Estimated training compute of a config, for knowledge bases that published no training time.

The MedMNIST+ benchmark reports accuracies only. metallmix gives each of its configs a cost
**estimate** in floating-point operations (FLOP), from this documented model -- never a measured
time, and printed as an estimate everywhere:

    forward = FLOPs of one forward pass of the real architecture on one 224 x 224 image, counted by
              PyTorch's FLOP counter (torch.utils.flop_counter.FlopCounterMode: matrix multiplications
              and convolutions, 2 FLOP per multiply-add) on the model built without weights on the
              meta device (timm, or torchvision for names timm lacks, e.g. alexnet);
    end_to_end      = EXPECTED_EPOCHS x (3 x n_train + n_val) x forward
                      (forward + backward, about twice the forward, on the training images; a forward
                      pass on the validation images each epoch for early stopping);
    linear_probing  = EXPECTED_EPOCHS x (n_train + n_val) x forward
                      (the frozen backbone runs forward only; the linear head's backward is negligible);
    knn             = n_train x forward
                      (one pass to embed the training images; a k-NN classifier needs no training).

**Resolution does not change the estimate**: the benchmark zero-padded every image smaller than 224 px
to 224 x 224 before the model, so each image costs the same at 28, 64, 128 and 224 px.

EXPECTED_EPOCHS is an assumption: the benchmark trains for up to 100 epochs and stops after 5 epochs
without a better validation loss, and the number of epochs its runs took was not published. It
scales both trained schemes alike, so it changes neither the order of configs within a scheme nor
end-to-end against linear probing; it does set how much cheaper k-NN looks.

Forward FLOPs of the MedMNIST+ models are shipped in ``forward_flops.csv`` (written by
``python -m metallmix.compute_cost``; a test recounts some of them); other models are counted on first
use, which needs timm or torchvision, and no weights.
"""

from __future__ import annotations

import argparse
import csv
import functools
import math
from pathlib import Path

import numpy as np

from metallmix.errors import ConfigError

SCHEMES = ("end_to_end", "linear_probing", "knn")
MODEL_INPUT_SIZE = 224
EXPECTED_EPOCHS = 20
TRAINING_PASS_FACTOR = {"end_to_end": 3.0, "linear_probing": 1.0}
FLOP_UNIT = "FLOP"
FORWARD_FLOPS_FILE = Path(__file__).resolve().parent / "data" / "builtin" / "medmnistplus" / "forward_flops.csv"
ESTIMATE_NOTE = (
    f"estimate, not a measurement: forward FLOPs at {MODEL_INPUT_SIZE} px (images are zero-padded to "
    f"{MODEL_INPUT_SIZE}, so resolution does not change it) x training passes x images x an assumed "
    f"{EXPECTED_EPOCHS} epochs; see metallmix.compute_cost"
)


@functools.cache
def shipped_forward_flops() -> dict[str, float]:
    """model name -> forward FLOPs at 224 px, from the shipped table."""
    with open(FORWARD_FLOPS_FILE, newline="") as fh:
        return {row["model"]: float(row["forward_flops"]) for row in csv.DictReader(fh)}


@functools.cache
def forward_flops(model: str) -> float:
    """Forward FLOPs of ``model`` on one 224 x 224 image: the shipped table, else counted now."""
    table = shipped_forward_flops()
    return table[model] if model in table else count_forward_flops(model)


def count_forward_flops(model: str, input_size: int = MODEL_INPUT_SIZE) -> float:
    """Count the forward FLOPs of ``model`` (timm or torchvision name) on one RGB image, without weights."""
    # torch, timm and torchvision are imported here, not at module level: the shipped table serves every
    # MedMNIST+ model, and loading a knowledge base should not pay for importing them.
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        network = _build_without_weights(model)
        network.eval()
        image = torch.zeros(1, 3, input_size, input_size)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            network(image)
    return float(counter.get_total_flops())


def _build_without_weights(model: str):
    import timm
    import torchvision

    if timm.is_model(model.split(".")[0]):
        return timm.create_model(model, pretrained=False)
    if model in torchvision.models.list_models():
        return torchvision.models.get_model(model, weights=None)
    raise ConfigError(f"model {model!r} is neither a timm nor a torchvision model; its compute cannot be counted")


def flops_per_image(model: str, scheme: str, expected_epochs: float = EXPECTED_EPOCHS) -> tuple[float, float]:
    """(FLOPs per training image, FLOPs per validation image) of a trained ``model`` with ``scheme``:
    the estimate is ``per_train x n_train + per_val x n_val``. NaN for a model that cannot be counted."""
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown training scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    try:
        forward = forward_flops(model)
    except ConfigError:
        return math.nan, math.nan
    if scheme == "knn":
        return forward, 0.0
    return expected_epochs * TRAINING_PASS_FACTOR[scheme] * forward, expected_epochs * forward


def estimate_training_flops(model: str, scheme: str, n_train: float, n_val: float,
                            expected_epochs: float = EXPECTED_EPOCHS) -> float:
    """Estimated FLOPs to obtain a trained ``model`` with ``scheme`` (see the module docstring).

    NaN when the model's FLOPs cannot be counted (an unknown name) or a dataset size is unknown.
    """
    if not (_finite(n_train) and _finite(n_val)):
        return math.nan
    per_train, per_val = flops_per_image(model, scheme, expected_epochs)
    return per_train * n_train + per_val * n_val


def training_flops_estimates(configs: list[dict], n_train: float | None, n_val: float | None) -> np.ndarray:
    """The estimate of every config (dicts with ``model`` and ``scheme``) for a dataset of these sizes;
    NaN for configs without those keys, and everywhere when a size is unknown."""
    n_train = math.nan if n_train is None else n_train
    n_val = math.nan if n_val is None else n_val
    return np.array([estimate_training_flops(c["model"], c["scheme"], n_train, n_val)
                     if c.get("scheme") in SCHEMES and isinstance(c.get("model"), str) else math.nan
                     for c in configs], dtype=float)


def _finite(value: float) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def write_forward_flops_table(models: list[str], path: Path = FORWARD_FLOPS_FILE) -> list[dict]:
    """Count every model and write the shipped table (model, input_size, forward_flops, counted_with)."""
    import timm
    import torch

    rows = [{"model": m, "input_size": MODEL_INPUT_SIZE, "forward_flops": int(count_forward_flops(m)),
             "counted_with": f"torch {torch.__version__} FlopCounterMode, timm {timm.__version__}"} for m in models]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Count forward FLOPs and write the shipped table.")
    parser.add_argument("models", nargs="*", help="model names (default: the models of the shipped table)")
    args = parser.parse_args(argv)
    models = args.models or list(shipped_forward_flops())
    for row in write_forward_flops_table(models):
        print(f"{row['model']:<32} {row['forward_flops'] / 1e9:8.2f} GFLOP")
    print(f"written: {FORWARD_FLOPS_FILE}")


if __name__ == "__main__":
    main()
