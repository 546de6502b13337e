"""Response time and pick quality of metallmix's LLM step.

Two parts, each printing its figures and (with --out) writing them as JSON:

``serve``: the Ray Serve application with the real vLLM engine, over HTTP on this machine.
Latency (p50/p95 over --requests sequential requests) of the surrogate only (``llm: false``), + the
LLM pick (``judge: false``), + the judge; then --clients concurrent clients sending one
pick+judge request each: wall time and throughput.

    .venv/bin/python benchmarks/llm_response_time.py serve --llm smollm2 --requests 5 --clients 8

``lodo``: leave-one-dataset-out on a recorded meta-dataset (metallmix.evaluate, pick functions
plugged in). For each held-out dataset a Recommender is fitted on the other datasets, the held-out
dataset's evaluated configs are scored and shortlisted (top --top-k), and each variant picks one:
``argmax`` (the meta-learner's top), ``llm`` (full evidence), ``llm_no_shap``, ``llm_no_retrieval``,
``llm_no_evidence``. Normalised regret per variant, agreement with the argmax, judge scores (variant
``llm``) and LLM latency.

    .venv/bin/python benchmarks/llm_response_time.py lodo --llm smollm2 --datasets 6

Runs from the main environment; vLLM runs in a Ray actor of .venv-llm (bash setup_llm.sh).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_SPEC = "quicktune:builtin"  # the Quick-Tune runs shipped with metallmix
VARIANTS = {
    "llm": {"include_shap": True, "include_neighbours": True},
    "llm_no_shap": {"include_shap": False, "include_neighbours": True},
    "llm_no_retrieval": {"include_shap": True, "include_neighbours": False},
    "llm_no_evidence": {"include_shap": False, "include_neighbours": False},
}


def percentiles(values: list[float]) -> dict[str, float]:
    """p50 and p95 (nearest rank) of a list of seconds."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(0.95 * len(ordered) + 0.5) - 1))
    return {"n": len(ordered), "p50_s": round(statistics.median(ordered), 2), "p95_s": round(ordered[rank], 2)}


# ------------------------------------------------------------------ serve
def queries(spec: str, n: int) -> list[dict[str, float]]:
    """Meta-features of the meta-dataset's own datasets, in turn (each request's prompt differs)."""
    from metallmix.metadataset import load_meta_dataset, row_meta_features

    df = load_meta_dataset(spec)
    firsts = df.groupby("dataset_id", sort=True).head(1)
    features = [{k: v for k, v in row_meta_features(row).items() if v == v} for _, row in firsts.iterrows()]
    return [features[i % len(features)] for i in range(n)]


def post(url: str, payload: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    request = urllib.request.Request(url + "/recommend", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=1800) as response:
        body = json.loads(response.read())
    return time.perf_counter() - started, body


def run_serve(args: argparse.Namespace) -> dict[str, Any]:
    import ray
    from ray import serve

    from serving.app import build_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 1800})
        started = time.perf_counter()
        serve.run(build_app({"recommender": args.recommender, "llm": args.llm, "timeout_s": 900}),
                  name="metallmix-bench", route_prefix="/")
        ready_s = time.perf_counter() - started
        qs = queries(args.meta_dataset, args.requests + args.clients)
        result: dict[str, Any] = {"llm": args.llm, "ready_s": round(ready_s, 1)}
        for name, flags in (("surrogate_only", {"llm": False}), ("with_llm", {"judge": False}), ("with_llm_and_judge", {})):
            runs = [post(url, {"meta_features": q, **flags}) for q in qs[: args.requests]]
            result[name] = percentiles([wall for wall, _ in runs])
            if name != "surrogate_only":
                result[name]["fallbacks"] = sum(body["llm"]["fallback"] for _, body in runs)
                result[name]["fallback_reasons"] = [body["llm"]["fallback_reason"] for _, body in runs if body["llm"]["fallback"]]
                result[name]["llm_latency"] = percentiles([body["llm"]["latency_s"] for _, body in runs])
            print(name, result[name], flush=True)
        payloads = [{"meta_features": q} for q in qs[args.requests:]]
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.clients) as pool:
            runs = list(pool.map(lambda p: post(url, p), payloads))
        wall = time.perf_counter() - started
        result["concurrent"] = {
            "clients": args.clients,
            "wall_s": round(wall, 1),
            "throughput_per_min": round(60 * len(runs) / wall, 2),
            **percentiles([w for w, _ in runs]),
            "fallbacks": sum(body["llm"]["fallback"] for _, body in runs),
        }
        print("concurrent", result["concurrent"], flush=True)
        return result
    finally:
        serve.shutdown()
        ray.shutdown()


# ------------------------------------------------------------------ lodo
def run_lodo(args: argparse.Namespace) -> dict[str, Any]:
    from metallmix.evaluate import evaluate_lodo
    from metallmix.llm import PromptOptions, make_engine
    from metallmix.metadataset import load_meta_dataset, row_meta_features
    from metallmix.metadataset.schema import config_columns
    from metallmix.recommend import Recommender
    from metallmix.service import LLMOptions, RecommendationService

    df = load_meta_dataset(args.meta_dataset)
    datasets = sorted(df["dataset_id"].unique())
    if args.datasets.isdigit():
        datasets = datasets[: int(args.datasets)]
    else:
        datasets = args.datasets.split(",")
    engine = make_engine(args.llm)
    picks: dict[str, dict[str, str]] = {}
    records: dict[str, dict[str, Any]] = {}
    try:
        for dataset in datasets:
            held_out = df[df["dataset_id"] == dataset]
            train_df = df[df["dataset_id"] != dataset]
            started = time.perf_counter()
            recommender = Recommender(metalearner_params=json.loads(args.metalearner_params)).fit(train_df)
            candidates = held_out.set_index("run_id")[config_columns(held_out)]
            mf = {k: v for k, v in row_meta_features(held_out.iloc[0]).items() if v == v}
            document = recommender.shortlist_document(mf, candidates, args.top_k)
            fit_s = time.perf_counter() - started
            picks[dataset] = {"argmax": document["candidate_id"]}
            records[dataset] = {"fit_s": round(fit_s, 1), "argmax": document["candidate_id"]}
            for variant in args.variants.split(","):
                flags = VARIANTS[variant]
                judged = variant == "llm"
                options = LLMOptions(prompt=PromptOptions(**flags), timeout_s=args.timeout_s, judge=judged)
                service = RecommendationService(recommender, picker=engine, judge=engine, options=options)
                picked = asyncio.run(service.pick(document, use_judge=judged, validate=False))
                picks[dataset][variant] = picked["candidate_id"]
                records[dataset][variant] = {
                    "picked": picked["candidate_id"], "rank": picked["llm"]["chosen_rank"], "fallback": picked["llm"]["fallback"],
                    "fallback_reason": picked["llm"]["fallback_reason"],
                    "latency_s": picked["llm"]["latency_s"], "prompt_tokens": picked["llm"]["prompt_tokens"],
                    **({"judge": picked["judge"]["scores"], "judge_latency_s": picked["judge"]["latency_s"],
                        "checks_passed": picked["judge"]["checks"]["passed"]} if variant == "llm" else {}),
                }
                print(dataset, variant, records[dataset][variant], flush=True)
    finally:
        if engine is not None:
            engine.close()

    def replay(variant: str):
        by_candidates = {frozenset(df[df["dataset_id"] == d]["run_id"]): picks[d][variant] for d in datasets}
        return lambda train_df, meta_features, candidates: by_candidates[frozenset(candidates.index)]

    summary = {}
    for variant in ["argmax", *args.variants.split(",")]:
        result = evaluate_lodo(df, pick=replay(variant), method=variant, baselines=False, datasets=datasets)
        entry = dict(result["summary"][variant])
        if variant != "argmax":
            rows = [records[d][variant] for d in datasets]
            entry["agrees_with_argmax"] = sum(picks[d][variant] == picks[d]["argmax"] for d in datasets)
            entry["fallbacks"] = sum(r["fallback"] for r in rows)
            entry["llm_latency"] = percentiles([r["latency_s"] for r in rows])
        if variant == "llm":
            scored = [records[d]["llm"]["judge"] for d in datasets if records[d]["llm"]["judge"]]
            entry["judge_mean"] = {k: round(statistics.mean(s[k] for s in scored), 2) for k in scored[0]} if scored else None
            entry["judge_scored"] = len(scored)
            entry["checks_passed"] = sum(records[d]["llm"]["checks_passed"] for d in datasets)
        summary[variant] = entry
        print(variant, entry, flush=True)
    reference = evaluate_lodo(df, baselines=True, random_ks=(1, 3), datasets=datasets)["summary"]
    print("evaluate.py baselines on the same datasets:", json.dumps(reference), flush=True)
    return {"llm": args.llm, "datasets": datasets, "top_k": args.top_k, "summary": summary,
            "evaluate_baselines": reference, "per_dataset": records}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="part", required=True)
    s = sub.add_parser("serve", help="latency and throughput of the Serve application")
    s.add_argument("--llm", default="smollm2")
    s.add_argument("--recommender", default=DEFAULT_SPEC, help="saved Recommender folder or meta-dataset spec")
    s.add_argument("--meta-dataset", default=DEFAULT_SPEC, help="where the requests' meta-features come from")
    s.add_argument("--requests", type=int, default=5)
    s.add_argument("--clients", type=int, default=8)
    l_ = sub.add_parser("lodo", help="LLM picks against the meta-learner's argmax, leave-one-dataset-out")
    l_.add_argument("--llm", default="smollm2")
    l_.add_argument("--meta-dataset", default=DEFAULT_SPEC)
    l_.add_argument("--datasets", default="6", help="how many (first N by name) or a comma-separated list")
    l_.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, among {list(VARIANTS)}")
    l_.add_argument("--top-k", type=int, default=5)
    l_.add_argument("--timeout-s", type=float, default=900)
    l_.add_argument("--metalearner-params", default='{"n_estimators": 100}', help="JSON")
    for p in (s, l_):
        p.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.part == "lodo" and not set(args.variants.split(",")) <= set(VARIANTS):
        parser.error(f"--variants must be among {list(VARIANTS)}")
    result = run_serve(args) if args.part == "serve" else run_lodo(args)
    result["command"] = " ".join(["benchmarks/llm_response_time.py", *sys.argv[1:]])
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
