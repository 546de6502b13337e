"""recommend() latency with a warm model, and the time to fit a Recommender on a whole meta-dataset.

    .venv/bin/python benchmarks/recommend_latency.py [--meta-dataset SPEC] [--calls 60] [--top-k 5]

Loads the meta-dataset (default: quicktune:builtin, the Quick-Tune runs shipped with metallmix), fits a Recommender
(meta-learner + FAISS index + SHAP explainer) on all of it, saves and reloads it, then times
``recommend()`` on ``--calls`` queries: each training dataset's meta-features scaled by a random factor
(seeded), a third of the calls with no constraint, a third with a budget (120 min of training, or
50 PFLOP of estimated compute on a knowledge base that records no times), a third with a parameter cap
and a failure-risk cap. Targets: p50 <= 200 ms, fit < 60 s. Prints wall and CPU time
per call: on a machine shared with other jobs the CPU time is the steadier figure.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from metallmix.errors import ConfigError
from metallmix.metadataset import load_meta_dataset
from metallmix.recommend import COST_KIND_FLOPS, Recommender
from metallmix.retrieval import dataset_meta_features

DEFAULT_SPEC = "quicktune:builtin"  # the Quick-Tune runs shipped with metallmix
COUNT_FEATURES = ("n_images", "n_classes", "class_size_mean")


def queries(table, n: int, budget: dict, seed: int = 0) -> list[tuple[dict[str, float], dict]]:
    """(meta-features, constraints) pairs: perturbed training datasets, three kinds of constraints."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        base = table.iloc[i % len(table)].dropna().to_dict()
        features = {k: (round(v * rng.uniform(0.5, 2.0)) if k in COUNT_FEATURES else v) for k, v in base.items()}
        constraints = [{}, budget, {"max_params": 30e6, "max_p_fail": 0.5}][i % 3]
        out.append((features, constraints))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meta-dataset", default=DEFAULT_SPEC, metavar="SPEC")
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--top-k", type=int, default=5)
    args = parser.parse_args()

    start = time.perf_counter()
    df = load_meta_dataset(args.meta_dataset)
    load_s = time.perf_counter() - start
    print(f"meta-dataset: {args.meta_dataset}: {len(df)} runs, {df['dataset_id'].nunique()} datasets (load {load_s:.1f} s)")

    start = time.perf_counter()
    recommender = Recommender().fit(df, spec=args.meta_dataset)
    fit_s = time.perf_counter() - start
    print(f"fit (meta-learner + FAISS index + SHAP background): {fit_s:.1f} s (target < 60 s); "
          f"{len(recommender.candidates_)} candidate configs")

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        recommender.save(folder)
        save_s = time.perf_counter() - start
        start = time.perf_counter()
        recommender = Recommender.load(folder)
        load_model_s = time.perf_counter() - start
    print(f"save {save_s * 1000:.0f} ms, load {load_model_s * 1000:.0f} ms")

    budget = {"budget_flops": 50e15} if recommender.cost_kind_ == COST_KIND_FLOPS else {"budget_minutes": 120.0}
    cases = queries(dataset_meta_features(df), args.calls, budget)
    recommender.recommend(cases[0][0], top_k=args.top_k)  # warm-up
    wall, cpu, infeasible = [], [], 0
    for features, constraints in cases:
        start, start_cpu = time.perf_counter(), time.process_time()
        try:
            recommender.recommend(features, constraints, top_k=args.top_k)
        except ConfigError:
            infeasible += 1
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - start_cpu) * 1000)
    print(f"recommend() over {len(wall)} calls (top_k={args.top_k}, SHAP for the first {recommender.shap_top_k}; "
          f"{infeasible} raised InfeasibleConstraintsError), target p50 <= 200 ms:")
    for name, values in (("wall", np.array(wall)), ("cpu", np.array(cpu))):
        print(f"  {name:>4} time: p50 {np.percentile(values, 50):.0f} ms, p95 {np.percentile(values, 95):.0f} ms, "
              f"mean {values.mean():.0f} ms, max {values.max():.0f} ms")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (wall times grow with it)")


if __name__ == "__main__":
    main()
