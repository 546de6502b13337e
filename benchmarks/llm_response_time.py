"""Response time and pick quality of metallmix's LLM step.

Two parts, each printing its figures and (with --out) writing them as JSON:

``serve``: the Ray Serve application with the real vLLM engine, over HTTP on this machine.
Latency (p50/p95 over --requests sequential requests) of the surrogate only (``llm: false``), + the
LLM pick (``judge: false``), + the judge; then --clients concurrent clients sending one
pick+judge request each: wall time and throughput.

    .venv/bin/python benchmarks/llm_response_time.py serve --llm smollm2 --requests 5 --clients 8

``compare``: every model x role (explain, pick) on the same leave-one-dataset-out prompts of both
knowledge bases. Per held-out dataset a Recommender is fitted without the dataset's family, the held-out
dataset's recorded configs are scored and the top --top-k shortlisted (the surrogate-only path, timed);
the prompts are written to --prompts once and read from there by later runs. Per model and role: answers
shown (checks + judge passed, at most one repair), first answers that passed, fallbacks, the judge's
verdict, latency p50/p95 of the pick, the judge and both, agreement with the meta-learner's argmax, and
(role pick) the regret of the delivered answer and of the LLM's own choice against the argmax, paired
over datasets (bootstrap interval, Wilcoxon).

    .venv/bin/python benchmarks/llm_response_time.py compare --models smollm2 --prompts prompts.json --out smollm2.json
    .venv/bin/python benchmarks/llm_response_time.py compare --models qwen2_5_coder_1_5b --prompts prompts.json \
        --per-model "qwen2_5_coder_1_5b=ACT_40+ACT_410+APL+breastmnist+chestmnist+octmnist" --out qwen.json

``report``: one table from several compare runs on the same prompts.

    .venv/bin/python benchmarks/llm_response_time.py report smollm2.json qwen.json --prompts prompts.json

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


# ------------------------------------------------------------------ compare
EVIDENCE = {"full": {}, "no_shap": {"include_shap": False}, "no_neighbours": {"include_neighbours": False},
            "none": {"include_shap": False, "include_neighbours": False}}


def lodo_documents(specs: list[str], datasets: str, top_k: int, learner_params: dict[str, Any]) -> list[dict[str, Any]]:
    """Leave-one-dataset-out prompts: per knowledge base and held-out dataset, a Recommender fitted without the
    dataset's family, the held-out dataset's recorded configs scored, the top ``top_k`` shortlisted. Each entry
    keeps the document and the surrogate-only latency (scoring + shortlist + SHAP + neighbours)."""
    from metallmix.metadataset import load_meta_dataset, row_meta_features
    from metallmix.metadataset.schema import config_columns, without_family
    from metallmix.recommend import Recommender

    out = []
    for spec in specs:
        df = load_meta_dataset(spec)
        names = sorted(df["dataset_id"].unique())
        chosen = names[: int(datasets)] if datasets.isdigit() else names if datasets == "all" else datasets.split(",")
        for dataset in chosen:
            held_out = df[df["dataset_id"] == dataset]
            recommender = Recommender(metalearner_params=learner_params).fit(without_family(df, dataset))
            candidates = held_out.set_index("run_id")[config_columns(held_out)]
            meta_features = {k: v for k, v in row_meta_features(held_out.iloc[0]).items() if v == v}
            started = time.perf_counter()
            document = recommender.shortlist_document(meta_features, candidates, top_k)
            out.append({"spec": spec, "dataset": dataset, "surrogate_s": round(time.perf_counter() - started, 3),
                        "document": json.loads(json.dumps(document, default=str))})
            print(f"prompt {spec} {dataset}: surrogate {out[-1]['surrogate_s']} s", flush=True)
    return out


def run_compare(args: argparse.Namespace) -> dict[str, Any]:
    """Every model x role on the same leave-one-dataset-out prompts: checks + judge, latency, agreement, regret."""
    from metallmix.llm import PromptOptions, make_engine
    from metallmix.service import LLMOptions, RecommendationService

    cache = Path(args.prompts) if args.prompts else None
    if cache is not None and cache.is_file():
        prompts = json.loads(cache.read_text())
        print(f"prompts read from {cache} ({len(prompts)})", flush=True)
    else:
        prompts = lodo_documents(args.meta_datasets.split(","), args.datasets, args.top_k, json.loads(args.metalearner_params))
        if cache is not None:
            cache.write_text(json.dumps(prompts))
    runs: list[dict[str, Any]] = []
    for model in args.models.split(","):
        started = time.perf_counter()
        engine = make_engine(model)
        ready_s = round(time.perf_counter() - started, 1)
        try:
            for role in args.roles.split(","):
                options = LLMOptions(prompt=PromptOptions(role=role, **EVIDENCE[args.evidence]), timeout_s=args.timeout_s)
                service = RecommendationService(None, picker=engine, judge=engine, options=options)
                limit = args.per_model.get(model)
                for entry in prompts if limit is None else [p for p in prompts if p["dataset"] in limit]:
                    document = entry["document"]
                    t0 = time.perf_counter()
                    picked = asyncio.run(service.pick(document, use_judge=True, validate=False))
                    total = time.perf_counter() - t0
                    llm, judge = picked["llm"], picked["judge"]
                    judge_s = judge["latency_s"] or 0.0
                    runs.append({
                        "model": model, "role": role, "spec": entry["spec"], "dataset": entry["dataset"],
                        "engine_ready_s": ready_s, "surrogate_s": entry["surrogate_s"],
                        "picked": picked["candidate_id"], "argmax": document["candidate_id"],
                        # the candidate the LLM's last answer chose, shown or not (None: no parsable choice)
                        "llm_choice": _choice(llm["answer"], document),
                        "shown": not llm["fallback"], "attempts": llm["attempts"], "fallback_reason": llm["fallback_reason"],
                        "verdict_score": judge["verdict_score"], "judge_scores": judge["scores"],
                        "pick_s": round(total - judge_s, 2), "judge_s": round(judge_s, 2), "total_s": round(total, 2),
                        "prompt_tokens": llm["prompt_tokens"], "completion_tokens": llm["completion_tokens"],
                        "justification": (llm["answer"] or {}).get("justification"),
                    })
                    r = runs[-1]
                    print(f"{model} {role} {entry['spec']} {entry['dataset']}: shown={r['shown']} attempts={r['attempts']} "
                          f"pick {r['pick_s']} s judge {r['judge_s']} s | {r['fallback_reason'] or r['justification']}", flush=True)
        finally:
            if engine is not None:
                engine.close()
    summary = summarise(runs, prompts)
    print(summary["table"])
    return {"models": args.models, "roles": args.roles, "evidence": args.evidence, "top_k": args.top_k,
            "prompts": [{k: v for k, v in p.items() if k != "document"} for p in prompts],
            "runs": runs, "summary": {k: v for k, v in summary.items() if k != "table"}, "table": summary["table"]}


def _choice(answer: dict[str, Any] | None, document: dict[str, Any]) -> str | None:
    chosen = str((answer or {}).get("candidate_id"))
    return chosen if chosen in {str(item["candidate_id"]) for item in document["shortlist"]} else None


def summarise(runs: list[dict[str, Any]], prompts: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model x role: answers shown, fallbacks, latency, agreement, regret; per model (role pick): the LLM's
    pick against the argmax, paired over datasets."""
    import pandas as pd

    from metallmix.bench.report import paired_comparison
    from metallmix.evaluate import evaluate_lodo
    from metallmix.metadataset import load_meta_dataset

    regret: dict[tuple[str, str], float] = {}  # (spec/dataset, run key) -> normalised regret of the recorded pick
    for spec in sorted({p["spec"] for p in prompts}):
        df = load_meta_dataset(spec)
        picks = [("argmax", p["dataset"], p["document"]["candidate_id"]) for p in prompts if p["spec"] == spec]
        picks += [(f"{r['model']}/{r['role']}", r["dataset"], r["picked"]) for r in runs if r["spec"] == spec]
        picks += [(f"{r['model']}/{r['role']}/choice", r["dataset"], r["llm_choice"]) for r in runs
                  if r["spec"] == spec and r["role"] == "pick" and r.get("llm_choice")]
        by_key: dict[str, dict[str, str]] = {}
        for key, dataset, chosen in picks:
            by_key.setdefault(key, {})[dataset] = chosen
        dataset_of = df.set_index("run_id")["dataset_id"]
        for key, chosen in by_key.items():  # one replay per pick source, over the datasets it picked on
            result = evaluate_lodo(df, pick=lambda _train, _mf, candidates, chosen=chosen: chosen[dataset_of[candidates.index[0]]],
                                   baselines=False, datasets=sorted(chosen), intervals=False)
            for entry in result["datasets"]:
                regret[(f"{spec}/{entry['dataset']}", key)] = entry["normalized_regret"]
    surrogate = percentiles([p["surrogate_s"] for p in prompts])
    rows, comparisons = [], []
    lines = ["| model | role | prompts | shown (checks + judge passed) | first answer passed | fallbacks | verdict mean "
             "| pick p50 / p95 | judge p50 / p95 | total p50 / p95 | agrees with argmax | mean regret (argmax) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for model, role in dict.fromkeys((r["model"], r["role"]) for r in runs):
        mine = [r for r in runs if r["model"] == model and r["role"] == role]
        key = f"{model}/{role}"
        cells = {(f"{r['spec']}/{r['dataset']}", m): regret[(f"{r['spec']}/{r['dataset']}", m)]
                 for r in mine for m in (key, "argmax")}
        row = {
            "model": model, "role": role, "prompts": len(mine), "shown": sum(r["shown"] for r in mine),
            "first_passed": sum(r["shown"] and r["attempts"] == 1 for r in mine),
            "fallbacks": sum(not r["shown"] for r in mine),
            "verdict_mean": round(statistics.mean(r["verdict_score"] for r in mine), 2),
            "pick": percentiles([r["pick_s"] for r in mine]), "judge": percentiles([r["judge_s"] for r in mine]),
            "total": percentiles([r["total_s"] for r in mine]),
            "agrees": sum(r["picked"] == r["argmax"] for r in mine),
            "regret": round(statistics.mean(v for (_, m), v in cells.items() if m == key), 3),
            "argmax_regret": round(statistics.mean(v for (_, m), v in cells.items() if m == "argmax"), 3),
        }
        rows.append(row)
        lines.append(f"| {model} | {role} | {row['prompts']} | {row['shown']} | {row['first_passed']} | {row['fallbacks']} "
                     f"| {row['verdict_mean']} | {row['pick']['p50_s']} / {row['pick']['p95_s']} s "
                     f"| {row['judge']['p50_s']} / {row['judge']['p95_s']} s | {row['total']['p50_s']} / {row['total']['p95_s']} s "
                     f"| {row['agrees']}/{row['prompts']} | {row['regret']} ({row['argmax_regret']}) |")
        if role == "pick":  # the answer delivered (the argmax on a fallback), and the LLM's own choice, shown or not
            ran = {f"{r['spec']}/{r['dataset']}" for r in mine}
            for which, name in ((key, "delivered"), (f"{key}/choice", "LLM's choice")):
                chosen = {(d, m): v for (d, m), v in regret.items()
                          if m in (which, "argmax") and d in ran and (d, which) in regret}
                frame = pd.DataFrame({"normalized_regret": chosen}).rename_axis(["dataset", "method"])
                for spec in [None, *sorted({r["spec"] for r in mine})]:
                    part = frame if spec is None else frame[frame.index.get_level_values("dataset").str.startswith(spec + "/")]
                    if len(part):
                        comparisons.append({"model": model, "pick": name, "knowledge_base": spec or "all",
                                            **paired_comparison(part, which, "argmax")})
    lines += ["", f"surrogate only (scoring + shortlist + SHAP + neighbours): p50 {surrogate['p50_s']} s, "
                  f"p95 {surrogate['p95_s']} s over {surrogate['n']} prompts", "",
              "| model (role pick) | compared with the argmax | knowledge base | datasets | mean regret | difference "
              "[95% interval] | p (Wilcoxon) | LLM better / tie / worse |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for c in comparisons:
        lines.append(f"| {c['model']} | {c['pick']} | {c['knowledge_base']} | {c['n_datasets']} | {c['mean']:.3f} vs {c['other_mean']:.3f} "
                     f"| {c['difference']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] | {c['p_value']:.3g} "
                     f"| {c['better']} / {c['ties']} / {c['worse']} |")
    return {"rows": rows, "surrogate_only": surrogate, "llm_pick_vs_argmax": comparisons, "table": "\n".join(lines)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="part", required=True)
    s = sub.add_parser("serve", help="latency and throughput of the Serve application")
    s.add_argument("--llm", default="smollm2")
    s.add_argument("--recommender", default=DEFAULT_SPEC, help="saved Recommender folder or meta-dataset spec")
    s.add_argument("--meta-dataset", default=DEFAULT_SPEC, help="where the requests' meta-features come from")
    s.add_argument("--requests", type=int, default=5)
    s.add_argument("--clients", type=int, default=8)
    c = sub.add_parser("compare", help="models x roles on the same leave-one-dataset-out prompts")
    c.add_argument("--models", default="smollm2", help="comma-separated conf/llm names or model aliases")
    c.add_argument("--roles", default="explain,pick", help="comma-separated, among explain, pick")
    c.add_argument("--meta-datasets", default="quicktune:builtin,medmnistplus:builtin")
    c.add_argument("--datasets", default="all", help="per knowledge base: all, the first N by name, or a list")
    c.add_argument("--per-model", default="", help="MODEL=D1+D2+...;... : run MODEL on these held-out datasets only "
                                                  "(a slow model on a subset of the same prompts)")
    c.add_argument("--evidence", default="full", choices=sorted(EVIDENCE))
    c.add_argument("--prompts", help="a JSON file: read the prompts from it if it exists, else write them there")
    c.add_argument("--top-k", type=int, default=5)
    c.add_argument("--timeout-s", type=float, default=900)
    c.add_argument("--metalearner-params", default='{"n_estimators": 100}', help="JSON")
    r = sub.add_parser("report", help="one table from several compare runs (--out files) on the same --prompts")
    r.add_argument("runs", nargs="+", help="compare --out files")
    r.add_argument("--prompts", required=True, help="the prompts file the runs used")
    for p in (s, c, r):
        p.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.part == "compare":
        if not set(args.roles.split(",")) <= {"explain", "pick"}:
            parser.error("--roles must be among explain, pick")
        args.per_model = {m: set(d.split("+")) for m, _, d in (x.partition("=") for x in args.per_model.split(";") if x)}
    if args.part == "report":
        runs = [run for path in args.runs for run in json.loads(Path(path).read_text())["runs"]]
        summary = summarise(runs, json.loads(Path(args.prompts).read_text()))
        print(summary["table"])
        result = {"runs_from": args.runs, "summary": {k: v for k, v in summary.items() if k != "table"}, "table": summary["table"]}
    else:
        result = run_serve(args) if args.part == "serve" else run_compare(args)
    result["command"] = " ".join(["benchmarks/llm_response_time.py", *sys.argv[1:]])
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
