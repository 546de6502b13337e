"""Does the judge discriminate? AUC between faithful and corrupted answers of the labelled set.

    .venv/bin/python benchmarks/judge_auc.py                       # deterministic verdict on the whole set
    .venv/bin/python benchmarks/judge_auc.py --judge-llm smollm2 --limit 18   # + the LLM judge on 18 items

The set is metallmix.llm.judge_set.build_judge_set() (real shortlists of quicktune:builtin and
medmnistplus:builtin; faithful answers and one corruption per type). Scores: (a) the verdict without an LLM
(the deterministic checks folded into the anchored rubric: metallmix.llm.judge.fold_verdict), (b) with
--judge-llm, the LLM judge's own mean score and the folded verdict, on the first --limit items (the set is
taken shortlist by shortlist, alternating the knowledge bases, so a limit keeps whole shortlists: faithful and every corruption). Prints the AUC
faithful-vs-corrupted overall and per corruption type (sklearn roc_auc_score, faithful the positive class)
and the LLM's latency per judged item; --out writes it all as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any


def auc_table(items: list[Any], scores: list[float | None]) -> dict[str, float | None]:
    """AUC faithful (positive) vs corrupted, overall and per corruption type; items without a score left out."""
    from sklearn.metrics import roc_auc_score

    from metallmix.llm.judge_set import CORRUPTIONS

    pairs = [(item, s) for item, s in zip(items, scores) if s is not None]

    def auc(subset):
        labels = [1 if item.faithful else 0 for item, _ in subset]
        if len(set(labels)) < 2:
            return None
        return round(float(roc_auc_score(labels, [s for _, s in subset])), 3)

    out = {"overall": auc(pairs)}
    for kind in CORRUPTIONS:
        out[kind] = auc([(i, s) for i, s in pairs if i.faithful or i.label == kind])
    return out


def interleaved(items: list[Any]) -> list[Any]:
    """The items shortlist by shortlist, alternating the knowledge bases (a --limit keeps whole shortlists of both)."""
    groups: dict[str, dict[str, list[Any]]] = {}
    for item in items:
        groups.setdefault(item.knowledge_base, {}).setdefault(item.query, []).append(item)
    queues = [list(by_query.values()) for by_query in groups.values()]
    out = []
    while any(queues):
        for queue in queues:
            if queue:
                out.extend(queue.pop(0))
    return out


def judge_all(items: list[Any], engine: Any, timeout_s: float) -> list[dict[str, Any]]:
    from metallmix.llm.judge import judge_answer

    async def go():
        out = []
        for n, item in enumerate(items, start=1):
            verdict = await judge_answer(engine, item.prompt, item.answer, [], item.document, timeout_s=timeout_s)
            out.append(verdict)
            if engine is not None:
                print(f"  [{n}/{len(items)}] {item.item_id}: llm {verdict['scores']} verdict {verdict['verdict_score']} "
                      f"({verdict['latency_s']} s){' ' + verdict['error'] if verdict['error'] else ''}", flush=True)
        return out

    return asyncio.run(go())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-knowledge-base", type=int, default=4, help="shortlists per knowledge base")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--judge-llm", default=None, help="judge engine spec (e.g. smollm2, qwen2.5-coder-1.5b); "
                                                          "default: no LLM, the deterministic verdict only")
    parser.add_argument("--limit", type=int, default=None, help="judge only the first N items with the LLM")
    parser.add_argument("--timeout-s", type=float, default=300.0)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    from metallmix.llm.judge_set import build_judge_set, corruption_counts

    started = time.perf_counter()
    items = build_judge_set(per_knowledge_base=args.per_knowledge_base, seed=args.seed)
    result: dict[str, Any] = {"items": len(items), "counts": corruption_counts(items),
                              "build_s": round(time.perf_counter() - started, 2)}
    print(f"labelled set: {len(items)} items {result['counts']} built in {result['build_s']} s")

    started = time.perf_counter()
    deterministic = judge_all(items, None, args.timeout_s)
    result["deterministic"] = {"auc": auc_table(items, [v["verdict_score"] for v in deterministic]),
                               "seconds": round(time.perf_counter() - started, 2)}
    print(f"(a) verdict without an LLM, {len(items)} items: AUC {result['deterministic']['auc']}")

    if args.judge_llm:
        from metallmix.llm.engines import make_engine

        subset = interleaved(items)[: args.limit] if args.limit else items
        started = time.perf_counter()
        engine = make_engine(args.judge_llm)
        try:
            startup = round(time.perf_counter() - started, 1)
            print(f"judge engine {args.judge_llm} ({engine.kind}, {engine.model}) built in {startup} s; judging {len(subset)} items")
            verdicts = judge_all(subset, engine, args.timeout_s)
        finally:
            engine.close()
        latencies = [v["latency_s"] for v in verdicts if v["latency_s"] is not None]
        scored = [v for v in verdicts if v["scores"] is not None]
        result["llm"] = {
            "judge_llm": args.judge_llm, "model": engine.model, "items": len(subset), "scored": len(scored),
            "errors": [v["error"] for v in verdicts if v["error"]][:5], "engine_start_s": startup,
            "auc_llm_scores": auc_table(subset, [v["mean_score"] for v in verdicts]),
            "auc_verdict": auc_table(subset, [v["verdict_score"] for v in verdicts]),
            "auc_deterministic_same_items": auc_table(
                subset, [deterministic[items.index(i)]["verdict_score"] for i in subset]),
            "latency_s": {"mean": round(statistics.mean(latencies), 2) if latencies else None,
                          "p50": round(statistics.median(latencies), 2) if latencies else None,
                          "max": round(max(latencies), 2) if latencies else None},
            "score_distribution": {label: [v["mean_score"] for i, v in zip(subset, verdicts) if i.label == label]
                                   for label in dict.fromkeys(i.label for i in subset)},
        }
        llm = result["llm"]
        print(f"(b) LLM judge {args.judge_llm}, {len(subset)} items ({len(scored)} scored):")
        print(f"    AUC of the LLM's own mean score: {llm['auc_llm_scores']}")
        print(f"    AUC of the folded verdict:       {llm['auc_verdict']}")
        print(f"    AUC without the LLM, same items: {llm['auc_deterministic_same_items']}")
        print(f"    latency per judged item: {llm['latency_s']}; LLM mean scores by label: {llm['score_distribution']}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
