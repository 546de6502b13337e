"""Training throughput of train_run on this CPU with one thread: images per second, frozen vs full.

    .venv/bin/python benchmarks/training_throughput.py [--n-train 512] [--threads 1]

For each backbone (mobilenet_v3_small, resnet18, efficientnet_lite0) and input size (32, 64), on a
generated 28 px grayscale dataset (random images, 2 classes; throughput does not depend on content):
- full:    all weights train; images/s over 2 epochs (forward + backward + optimizer step, no augmentation),
           and seconds per epoch (training + validation on 64 images);
- frozen:  epoch 1 computes the frozen features (no_grad) and trains the head: images/s of that epoch,
           which is also the per-epoch speed whenever augmentation forces features to be recomputed;
- cached:  epochs 2-3 of the same frozen run reuse the cached features (augmentation "none"): images/s.
Weights are random for resnet18 and mobilenet_v3_small (no torchvision weights offline) and ImageNet for
efficientnet_lite0; the cost is the same either way.
"""

from __future__ import annotations

import argparse
import functools
import os

import numpy as np
import torch

from metallmix.data.base import ImageDataset
from metallmix.training import train_run

BACKBONES = ("mobilenet_v3_small", "resnet18", "efficientnet_lite0")
INPUT_SIZES = (32, 64)


def generated_dataset(n_train: int, seed: int = 0) -> ImageDataset:
    rng = np.random.default_rng(seed)
    sizes = {"train": n_train, "val": 64, "test": 64}
    images = {s: rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8) for s, n in sizes.items()}
    labels = {s: (np.arange(n) % 2).astype(np.int64) for s, n in sizes.items()}
    return ImageDataset("throughput-random", images, labels, n_classes=2, kind="generated")


def cpu_name() -> str:
    with open("/proc/cpuinfo") as cpuinfo:
        names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    return names[0] if names else "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    dataset = generated_dataset(args.n_train)
    base = {"batch_size": 32, "optimizer": "adam", "lr": 1e-3, "augmentation": "none"}
    run = functools.partial(train_run, dataset=dataset, device="cpu", num_threads=args.threads)

    print(f"torch {torch.__version__}, {cpu_name()}, {args.threads} thread(s), {args.n_train} training images, "
          f"batch 32, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'backbone':20s} {'px':>4s} {'full img/s':>11s} {'full s/epoch':>13s} {'frozen img/s':>13s} "
          f"{'cached img/s':>13s}")
    for backbone in BACKBONES:
        weights = "imagenet" if backbone == "efficientnet_lite0" else "none"
        for size in INPUT_SIZES:
            common = {**base, "backbone": backbone, "weights": weights, "input_size": size}
            full = run({**common, "strategy": "full", "epochs": 2})
            frozen = run({**common, "strategy": "frozen", "epochs": 3})["curve"]
            frozen_ips = args.n_train / frozen[0]["epoch_seconds"]
            cached_ips = 2 * args.n_train / (frozen[1]["epoch_seconds"] + frozen[2]["epoch_seconds"])
            print(f"{backbone:20s} {size:4d} {full['images_per_second']:11.0f} {full['seconds_per_epoch']:13.2f} "
                  f"{frozen_ips:13.0f} {cached_ips:13.0f}", flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
