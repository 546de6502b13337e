"""Zero-shot regret of the meta-learner (leave-one-dataset-out), its fit time and its predict latency.

    .venv/bin/python benchmarks/recommender_regret.py [--meta-dataset SPEC] [--objective regression]
        [--fail-penalty 0] [--n-ensemble 20] [--seeds 0] [--calls 200] [--json OUT] [--no-lodo]

Default meta-dataset: quicktune:builtin, the Quick-Tune runs shipped with metallmix (18 datasets, 3,198 runs). Prints
the per-dataset normalised regret of the meta-learner's pick next to the baselines (random search with
k = 1, 3, 10, 30 trials, the plain XGBoost surrogate, the best config of the nearest dataset), then the
time to fit on the whole meta-dataset (target < 60 s) and the latency of predict() for 200 candidate
configs with a warm model over --calls calls (p50/p95; target well under 200 ms). With several --seeds
the LODO runs once per random_state and a line per seed shows how much the pick depends on it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from metallmix.evaluate import evaluate_lodo, format_table
from metallmix.metadataset import load_meta_dataset, row_meta_features
from metallmix.metalearner import MetaLearner, candidate_configs

DEFAULT_SPEC = "quicktune:builtin"  # the Quick-Tune runs shipped with metallmix
N_CANDIDATES = 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meta-dataset", default=DEFAULT_SPEC, metavar="SPEC")
    parser.add_argument("--objective", default="regression")
    parser.add_argument("--fail-penalty", type=float, default=0.0)
    parser.add_argument("--n-ensemble", type=int, default=20)
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0],
                        help="comma-separated random_state values of the LODO runs (the first one gets the full table)")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--json", metavar="OUT", help="write the first LODO result as JSON to OUT")
    parser.add_argument("--no-lodo", action="store_true", help="only time fit and predict")
    args = parser.parse_args()
    params = {"objective": args.objective, "fail_penalty": args.fail_penalty, "n_ensemble": args.n_ensemble}

    df = load_meta_dataset(args.meta_dataset)
    print(f"meta-dataset {args.meta_dataset}: {len(df)} runs, {df['dataset_id'].nunique()} datasets; "
          f"statuses {df['status'].value_counts().to_dict()}")
    print(f"meta-learner settings: {MetaLearner(**params).get_params()}")

    if not args.no_lodo:
        for i, seed in enumerate(args.seeds):
            start = time.perf_counter()
            result = evaluate_lodo(df, learner_params={**params, "random_state": seed}, baselines=i == 0)
            elapsed = time.perf_counter() - start
            summary = result["summary"]["metalearner"]
            if i == 0:
                print(f"\nLeave-one-dataset-out normalised regret (0 = best config of the dataset, 1 = worst); {elapsed:.0f} s")
                print(format_table(result))
                if args.json:
                    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
            print(f"random_state={seed}: mean regret {summary['mean_regret']:.3f}, max {summary['max_regret']:.3f}, "
                  f"{summary['n_over_0.25']} datasets over 0.25, {summary['n_picked_not_ok']} picks not ok")

    start = time.perf_counter()
    learner = MetaLearner(**params).fit(df)
    print(f"\nfit on the whole meta-dataset ({len(df)} runs): {time.perf_counter() - start:.1f} s (target < 60 s)")

    candidates = candidate_configs(df).set_index("candidate_id").iloc[:N_CANDIDATES]
    candidates = candidates[[c for c in candidates.columns if c.startswith("cfg_")]]
    meta_features = row_meta_features(df.iloc[0])
    learner.predict(meta_features, candidates)  # warm-up
    wall, cpu = [], []
    for _ in range(args.calls):
        start, start_cpu = time.perf_counter(), time.process_time()
        learner.predict(meta_features, candidates)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    wall_ms, cpu_ms = np.array(wall) * 1000, np.array(cpu) * 1000
    print(f"predict for {len(candidates)} candidates, {args.calls} calls, warm: wall p50 {np.percentile(wall_ms, 50):.1f} ms, "
          f"p95 {np.percentile(wall_ms, 95):.1f} ms; CPU p50 {np.percentile(cpu_ms, 50):.1f} ms, "
          f"p95 {np.percentile(cpu_ms, 95):.1f} ms (target well under 200 ms; CPU time is steadier on a shared machine)")


if __name__ == "__main__":
    main()
