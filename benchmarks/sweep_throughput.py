"""Sweep throughput: trials per hour, Ray Tune's overhead against a plain loop, data-loading cost.

    .venv/bin/python benchmarks/sweep_throughput.py [--trials 8] [--epochs 2]

The same trials (one dataset, mobilenet_v3_small at 32 px, lr varied) run three ways in one process,
side by side: (1) a plain Python loop calling train_run, one at a time, one thread; (2) the metallmix
sweep (Ray Tune) with one trial at a time on one CPU, which isolates Ray's own overhead; (3) the
sweep with every CPU busy, which gives the throughput a user sees. Data loading (dataset + meta-features,
done once per dataset by the driver) is timed separately.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from metallmix.data import compute_meta_features, load_dataset
from metallmix.sweep import expand_space, run_sweep
from metallmix.training import train_run

DATASET = {"kind": "medmnist", "name": "breastmnist"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    lrs = [round(0.0005 * (i + 1), 6) for i in range(args.trials)]
    space = {"name": "throughput", "grid": [{"backbone": ["mobilenet_v3_small"], "lr": lrs}],
             "fixed": {"weights": "none", "strategy": "full", "optimizer": "adam", "epochs": args.epochs,
                       "batch_size": 64, "input_size": 32, "augmentation": "none"}}
    configs = expand_space(space)
    n_cpus = os.cpu_count() or 1

    t0 = time.perf_counter()
    ds = load_dataset(DATASET)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    compute_meta_features(ds)
    t_mf = time.perf_counter() - t0

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    for config in configs:
        train_run(config, ds, seed=0, num_threads=1)
    t_loop = time.perf_counter() - t0

    def sweep(concurrent: int | None) -> float:
        with tempfile.TemporaryDirectory() as store:
            cfg = {"space": space, "datasets": [DATASET], "store": store, "resources": {"cpu": 1, "gpu": 0},
                   "max_concurrent_trials": concurrent, "ray": {"num_cpus": n_cpus}}
            t = time.perf_counter()
            run_sweep(cfg)
            return time.perf_counter() - t

    t_ray_serial = sweep(1)
    t_ray_parallel = sweep(None)

    n = len(configs)
    print()
    print(f"sweep throughput: {n} trials of mobilenet_v3_small, {args.epochs} epochs, BreastMNIST at 32 px; "
          f"{n_cpus} CPUs")
    print(f"{'way':40s} {'wall s':>8s} {'s/trial':>8s} {'trials/h':>9s}")
    for name, t in [("plain loop, 1 at a time", t_loop), ("Ray Tune sweep, 1 at a time", t_ray_serial),
                    (f"Ray Tune sweep, {n_cpus} at a time", t_ray_parallel)]:
        print(f"{name:40s} {t:8.1f} {t / n:8.2f} {3600 * n / t:9.0f}")
    print(f"Ray overhead, 1 at a time: {t_ray_serial / t_loop:.2f}x the plain loop "
          f"(+{(t_ray_serial - t_loop) / n:.2f} s per trial, Ray start-up included)")
    print(f"data loading per dataset: load {t_load * 1000:.0f} ms + meta-features {t_mf * 1000:.0f} ms "
          f"({(t_load + t_mf) / (t_loop / n) * 100:.1f}% of one trial); done once per dataset by the driver, "
          "shipped to trials through Ray's object store")


if __name__ == "__main__":
    main()
