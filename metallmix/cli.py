"""The ``metallmix`` command line: ``recommend`` a config for a dataset, ``evaluate`` the recommender.

    metallmix recommend [--meta-dataset SPEC] (--dataset PATH_OR_NAME | --meta-features JSON_OR_FILE)
                        [--modality TEXT] [--task TYPE] [--budget 30min|2h|5PFLOP] [--budget-minutes N]
                        [--max-params N] [--backbones a,b] [--max-p-fail P]
                        [--top-k K] [--json] [--model-dir DIR] [--cache-dir DIR]
                        [--llm MODEL_OR_none [--judge-llm MODEL] [--description TEXT]] [--server URL]
    metallmix evaluate --meta-dataset SPEC --protocol leave-one-dataset-out [--json OUT]

``recommend`` builds one ``metallmix.service.RecommendRequest`` and answers it with
``metallmix.service.RecommendationService`` in this process, or sends it to a running Serve app (``--server``),
which answers it with the same service; the CLI adds only the choice of knowledge base and the printing.

Without ``--meta-dataset``, a medical dataset (a MedMNIST file or name, or a modality given) is answered
from the MedMNIST+ knowledge base and other images from Quick-Tune's (metallmix.knowledge_bases); the
answer says which and why. Without ``--model-dir``, ``recommend`` fits a Recommender on the meta-dataset once and caches it under
``CACHE_DIR/recommenders/v<format>/<content hash>`` (``--cache-dir``, else $METALLMIX_CACHE_DIR, else
~/.cache/metallmix), so later calls on the same meta-dataset only load it. Bad input ends with one
line on stderr and exit status 2.

The modules behind the commands (XGBoost, SHAP, FAISS, torch, Ray) are imported inside them, so that
``--help`` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

from metallmix.data.descriptors import modality_family
from metallmix.errors import ConfigError, MetallmixError
from metallmix.formatting import cost_amount
from metallmix.knowledge_bases import default_knowledge_base
from metallmix.metadataset.store import DEFAULT_META_DATASET

EXIT_USAGE = 2
CACHE_ENV = "METALLMIX_CACHE_DIR"  # = metallmix.service.CACHE_ENV (not imported here: --help answers at once)
PROTOCOLS = ("leave-one-dataset-out", "nested-leave-one-dataset-out", "subsampled-leave-one-dataset-out")
PARAM_SUFFIXES = {"k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9}
TIME_UNITS = {"s": 1 / 60, "sec": 1 / 60, "min": 1.0, "m": 1.0, "h": 60.0}
FLOP_UNITS = {"flop": 1.0, "gflop": 1e9, "tflop": 1e12, "pflop": 1e15, "eflop": 1e18}


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except MetallmixError as exc:
        print(f"metallmix: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("metallmix: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metallmix",
        description="Zero-shot recommendation of a pretrained backbone and fine-tuning hyperparameters.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    rec = commands.add_parser("recommend", help="recommend a config for a dataset, with evidence")
    rec.add_argument("--meta-dataset", metavar="SPEC",
                     help="knowledge base: PATH.parquet, a store folder, quicktune:DIR, medmnistplus:DIR or qtt:DIR (builtin: the "
                          "shipped copies). Default: medmnistplus:builtin for a medical dataset (a MedMNIST file or a "
                          f"--modality), else {DEFAULT_META_DATASET}")
    source = rec.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", metavar="PATH_OR_NAME",
                        help="a MedMNIST .npz file, an image folder, or a registered name (breastmnist, retinamnist@64)")
    source.add_argument("--meta-features", metavar="JSON_OR_FILE",
                        help='meta-features as a JSON object (\'{"n_classes": 2, ...}\') or a JSON file')
    rec.add_argument("--modality", metavar="TEXT",
                     help="imaging modality (e.g. 'chest x-ray', ct, dermatoscopy): a meta-feature, and it marks the dataset medical")
    rec.add_argument("--task", metavar="TYPE", help="task type: binary, multi-class, multi-label or ordinal (a meta-feature)")
    rec.add_argument("--budget", type=_budget, metavar="AMOUNT",
                     help="training budget: a time (90s, 30min, 2h) for knowledge bases with recorded times, or an "
                          "estimated compute (5PFLOP, 800TFLOP, 3e15FLOP) for those with FLOP-count estimates (MedMNIST+)")
    rec.add_argument("--budget-minutes", type=_positive_float, metavar="N", help="maximum predicted training time")
    rec.add_argument("--max-params", type=_param_count, metavar="N", help="maximum backbone parameters (e.g. 25e6 or 25M)")
    rec.add_argument("--backbones", type=_name_list, metavar="A,B", help="allowed backbones, comma-separated")
    rec.add_argument("--max-p-fail", type=_probability, metavar="P", help="avoid configs whose predicted failure risk exceeds P")
    rec.add_argument("--top-k", type=_positive_int, default=5, metavar="K", help="shortlist length (default 5)")
    rec.add_argument("--json", action="store_true", help="print the recommendation as JSON (schema: recommendation.schema.json)")
    rec.add_argument("--model-dir", metavar="DIR",
                     help="a saved Recommender; if DIR holds none, fit one on --meta-dataset and save it there")
    rec.add_argument("--cache-dir", metavar="DIR", help=f"cache of fitted recommenders (default ${CACHE_ENV} or ~/.cache/metallmix)")
    rec.add_argument("--shap-summary", metavar="PNG", help="also write a SHAP summary plot of the accuracy model")
    rec.add_argument("--shap-waterfall", metavar="PNG", help="also write a SHAP waterfall plot of the pick's predicted accuracy")
    rec.add_argument("--llm", default="none", metavar="MODEL_OR_none",
                     help="an LLM that explains the pick (or picks: --llm-role): a conf/llm name (smollm2, "
                          "qwen2_5_coder_1_5b, ...), a model folder, an OpenAI-compatible http(s)://.../v1 URL, "
                          "or none (default: the meta-learner's pick with a template explanation). With --server: "
                          "'server' (the server's model) or the model the server runs")
    rec.add_argument("--judge-llm", default="same", metavar="MODEL",
                     help="the judge's model (default: same as --llm; none: deterministic checks only). With --server: "
                          "same or none (the server's judge is set when it is deployed)")
    rec.add_argument("--llm-role", choices=("explain", "pick"), default=None,
                     help="explain (default): the pick is the meta-learner's top candidate and the LLM writes why; pick: "
                          "the LLM chooses among the shortlist (measured no better: docs/llm.md). Not with --server "
                          "(set when the server is deployed)")
    rec.add_argument("--server", metavar="URL",
                     help="ask a running metallmix Serve app (serving/) instead of working in-process: the same request "
                          "is sent (a local --dataset's meta-features are computed here); --meta-dataset, --model-dir, "
                          "--cache-dir and the SHAP plots are refused (the server holds its own recommender)")
    rec.add_argument("--description", metavar="TEXT", help="a free-text description of the dataset for the LLM (treated as untrusted data)")
    rec.set_defaults(run=run_recommend)

    ev = commands.add_parser("evaluate", help="replay zero-shot picks on a recorded meta-dataset")
    ev.add_argument("--meta-dataset", metavar="SPEC", required=True)
    ev.add_argument("--protocol", choices=PROTOCOLS, default=PROTOCOLS[0],
                    help="leave-one-dataset-out: the recommender's own settings for this knowledge base; "
                         "nested-leave-one-dataset-out: the settings chosen for each held-out dataset by an inner "
                         "leave-one-dataset-out on the other datasets only (metallmix.evaluate.LEARNER_GRID; slow); "
                         "subsampled-leave-one-dataset-out: the stability of the figure when the knowledge base holds "
                         "a random subset of the other datasets (--draws, --subset-size)")
    ev.add_argument("--draws", type=_positive_int, default=20, metavar="N", help="subsampled protocol: random subsets per dataset (default 20)")
    ev.add_argument("--subset-size", type=_positive_int, metavar="K", help="subsampled protocol: datasets per subset (default 70%% of the others)")
    ev.add_argument("--objective", help="override the meta-learner's ranking objective (see metallmix.metalearner.OBJECTIVES)")
    ev.add_argument("--datasets", type=_name_list, metavar="A,B", help="held-out datasets to evaluate (default: all)")
    ev.add_argument("--no-baselines", action="store_true", help="skip the random-k, plain-surrogate and nearest-dataset baselines")
    ev.add_argument("--json", metavar="OUT", help="also write the full result as JSON to OUT")
    ev.set_defaults(run=run_evaluate)
    return parser


# ------------------------------------------------------------------ recommend
SERVER_LLM = "server"  # --llm / --judge-llm with --server: whatever model the server runs
DESCRIPTOR_NAMES = ("modality", "task")


def run_recommend(args: argparse.Namespace) -> int:
    """Build one ``metallmix.service.RecommendRequest`` from the arguments; answer it with the service in
    this process, or send it to a server (``--server``); print the answer."""
    constraints = _constraints(args)
    if args.server:
        document = _recommend_via_server(args, constraints)
    else:
        document = _recommend_in_process(args, constraints)
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print(format_recommendation(document, source=args.dataset or "the given meta-features"))
        if "llm" in document:
            print("\n" + describe_llm_step(document["llm"], document["judge"]))
        for label, path in (("SHAP summary plot", args.shap_summary), ("SHAP waterfall of the pick", args.shap_waterfall)):
            if path:
                print(f"{label}: {path}")
    return 0


def describe_llm_step(llm: dict[str, Any], judge: dict[str, Any]) -> str:
    """One paragraph on who wrote the explanation, how long it took and what the judge said, or why the LLM's
    answer was not shown."""
    took = f"{llm['model']}, {llm['latency_s']:.1f} s, {llm['attempts']} attempt{'s' if llm['attempts'] > 1 else ''}"
    if llm["fallback"]:
        return (f"LLM fallback ({took}): {llm['fallback_reason']}. The meta-learner's top candidate is kept, with the "
                "template explanation above.")
    what = ("explains the meta-learner's pick" if llm["role"] == "explain"
            else f"picked rank {llm['chosen_rank']} of the shortlist")
    own = (f"; the judge LLM's own scores: {_levels(judge['scores'])}" if judge.get("scores")
           else f"; {judge['error']}" if judge.get("error") else "")
    return (f"The explanation is the LLM's ({took}): it {what}. Judge verdict {judge['verdict_score']:g} of 5 "
            f"({_levels(judge['verdict_scores'])}){own}.")


def _levels(scores: dict[str, float]) -> str:
    return ", ".join(f"{name} {score:g}" for name, score in scores.items())


def _constraints(args: argparse.Namespace) -> dict[str, Any]:
    budget_minutes, budget_flops = args.budget_minutes, None
    if args.budget is not None:
        unit, amount = args.budget
        if unit == "minutes" and budget_minutes is not None:
            raise ConfigError("give the time budget once: --budget or --budget-minutes")
        budget_minutes, budget_flops = (amount, None) if unit == "minutes" else (budget_minutes, amount)
    given = {"budget_minutes": budget_minutes, "budget_flops": budget_flops, "max_params": args.max_params,
             "backbones": list(args.backbones) if args.backbones else None, "max_p_fail": args.max_p_fail}
    return {name: value for name, value in given.items() if value is not None}


def _request(args: argparse.Namespace, constraints: dict[str, Any], *, meta_features: dict[str, Any] | None = None,
             dataset: str | None = None, computed: bool = False, use_llm: bool, use_judge: bool):
    """The service's request (ConfigError naming the field when an argument breaks its limits)."""
    from metallmix.service import as_request

    modality, task = args.modality, args.task
    if meta_features is not None and not computed:  # text descriptors given inside --meta-features
        meta_features = dict(meta_features)
        modality = modality or _text(meta_features.pop("modality", None), "modality")
        task = task or _text(meta_features.pop("task", None), "task")
    return as_request({
        "meta_features": meta_features, "dataset": dataset, "constraints": constraints, "top_k": args.top_k,
        "description": args.description, "llm": use_llm, "judge": use_judge,
        "modality": None if computed else modality, "task": None if computed else task,
        "ignore_unknown_meta_features": computed,
    })


def _text(value: Any, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ConfigError(f"meta-feature {name!r} is text (e.g. {'ct' if name == 'modality' else 'binary'}), got {value!r}")


def _recommend_in_process(args: argparse.Namespace, constraints: dict[str, Any]) -> dict[str, Any]:
    from metallmix.recommend import describe_dataset, parse_meta_features
    from metallmix.llm.prompt import PromptOptions
    from metallmix.service import LLMOptions, RecommendationService, finite_meta_features

    if SERVER_LLM in (args.llm, args.judge_llm):
        raise ConfigError(f"--llm/--judge-llm {SERVER_LLM} means the server's model: give --server URL, or name a model")
    if args.dataset is not None:
        facts = describe_dataset(args.dataset, modality=args.modality, task=args.task)
        meta_features, computed = finite_meta_features(facts.meta_features), True
        spec, selection = _knowledge_base(args, facts, None)
    else:
        facts, meta_features, computed = None, dict(parse_meta_features(args.meta_features)), False
        given = {**meta_features, **{k: v for k, v in (("modality", args.modality), ("task", args.task)) if v is not None}}
        spec, selection = _knowledge_base(args, None, given)
    request = _request(args, constraints, meta_features=meta_features, computed=computed,
                       use_llm=args.llm != "none", use_judge=args.judge_llm != "none")
    options = LLMOptions(prompt=PromptOptions(role=args.llm_role or "explain"))
    with RecommendationService.from_specs(spec, model_dir=args.model_dir, cache_dir=args.cache_dir, llm=args.llm,
                                          judge_llm=args.judge_llm, options=options, selection=selection) as service:
        document = service.recommend_sync(request)
        if args.shap_summary:
            service.recommender.explainer_.save_summary_plot(args.shap_summary)
        if args.shap_waterfall:
            service.recommender.save_waterfall_plot(document, args.shap_waterfall)
    return document


def _recommend_via_server(args: argparse.Namespace, constraints: dict[str, Any]) -> dict[str, Any]:
    """Send the request to ``--server``: every option the server takes; the others refused, saying why."""
    from metallmix.llm import recommend_via_server
    from metallmix.recommend import parse_meta_features

    url = args.server
    if args.meta_dataset is not None:
        raise ConfigError(
            f"--meta-dataset: the server at {url} answers from the knowledge base it was deployed with "
            "(serving/config.yaml, args.recommender) and cannot switch per request; drop --meta-dataset (the answer's "
            f"meta_dataset.spec says which knowledge base answered), or drop --server to use {args.meta_dataset} here")
    local_only = [flag for flag, value in (("--model-dir", args.model_dir), ("--cache-dir", args.cache_dir),
                                           ("--shap-summary", args.shap_summary), ("--shap-waterfall", args.shap_waterfall),
                                           ("--llm-role", args.llm_role))
                  if value is not None]
    if local_only:
        raise ConfigError(f"{', '.join(local_only)}: only in process (the server holds its own recommender and LLM "
                          "settings, serving/config.yaml); drop them, or drop --server")
    if args.judge_llm not in ("same", "none", SERVER_LLM):
        raise ConfigError(
            f"--judge-llm {args.judge_llm}: the server's judge model is chosen when it is deployed (serving/config.yaml, "
            "args.judge_llm); leave --judge-llm out to use it, give --judge-llm none to skip the judge, or drop --server")
    use_llm = args.llm != "none"
    if use_llm and args.llm != SERVER_LLM:
        _check_server_llm(url, args.llm)
    use_judge = args.judge_llm != "none"
    if args.meta_features is not None:
        request = _request(args, constraints, meta_features=parse_meta_features(args.meta_features),
                           use_llm=use_llm, use_judge=use_judge)
    elif _is_local(args.dataset):
        request = _request(args, constraints, meta_features=_local_meta_features(args), computed=True,
                           use_llm=use_llm, use_judge=use_judge)
    else:
        from metallmix.service import DATASET_NAME

        if not re.fullmatch(DATASET_NAME, args.dataset):
            raise ConfigError(
                f"--dataset {args.dataset!r} is neither an existing file or folder here nor a dataset name a server can "
                "have (letters, digits, _ or -, optionally @SIZE, e.g. breastmnist); give a MedMNIST .npz file or an "
                "image folder (its meta-features are computed here and sent), or send --meta-features")
        request = _request(args, constraints, dataset=args.dataset, use_llm=use_llm, use_judge=use_judge)
    return recommend_via_server(url, request)


def _is_local(dataset: str) -> bool:
    path = Path(dataset)
    return path.exists() or path.suffix == ".npz" or "/" in dataset or "\\" in dataset


def _local_meta_features(args: argparse.Namespace) -> dict[str, float]:
    """A local dataset's meta-features, computed here (a server cannot read this machine's files)."""
    from metallmix.recommend import describe_dataset
    from metallmix.service import finite_meta_features

    if not Path(args.dataset).exists():
        raise ConfigError(f"--dataset {args.dataset}: no such file or folder here; a server cannot read this "
                          "machine's files anyway: give an existing dataset (its meta-features are computed here and "
                          "sent) or send --meta-features")
    facts = describe_dataset(args.dataset, modality=args.modality, task=args.task)
    features = finite_meta_features(facts.meta_features)
    print(f"metallmix: computed {len(features)} meta-features of {args.dataset} here; sending them to {args.server}",
          file=sys.stderr)
    return features


def _check_server_llm(url: str, wanted: str) -> None:
    """Refuse ``--llm MODEL`` unless the server runs that model (its /health says which)."""
    from metallmix.llm import engine_config, server_health

    served = (server_health(url).get("llm") or {}).get("model")
    if served is None:
        raise ConfigError(f"--llm {wanted}: the server at {url} runs no LLM (deployed with llm: none); give --llm none, "
                          "or drop --server to run the LLM here")
    names = {wanted}
    try:
        names.add(str((engine_config(wanted) or {}).get("model")))
    except ConfigError:
        pass
    if served not in names:
        raise ConfigError(f"--llm {wanted}: the server at {url} runs {served!r} and cannot switch per request; give "
                          f"--llm {SERVER_LLM} (or --llm {served}) to use it, --llm none for the template, or drop --server "
                          f"to run {wanted} here")


def _knowledge_base(args: argparse.Namespace, dataset: Any, meta_features: dict[str, Any] | None) -> tuple[str | None, dict[str, Any]]:
    """The knowledge base spec to use and why (None with --model-dir: the saved recommender's own)."""
    if args.meta_dataset is not None:
        return args.meta_dataset, {"default": False, "reason": "named with --meta-dataset"}
    if args.model_dir is not None and (Path(args.model_dir) / "manifest.json").is_file():
        return None, {"default": False, "reason": f"the recommender saved in {args.model_dir}"}
    if dataset is not None:
        spec, reason = default_knowledge_base(dataset.is_medical, dataset.modality, dataset.kind)
    else:
        modality = meta_features.get("modality")
        spec, reason = default_knowledge_base(modality_family(modality) is not None, modality, "given")
    return spec, {"default": True, "reason": reason}


def format_recommendation(doc: dict[str, Any], source: str) -> str:
    """The recommendation as a readable report: pick, shortlist table, evidence, warnings."""
    md = doc["meta_dataset"]
    lines = [f"Recommendation for {source} (knowledge base {md['spec']}: {md['n_runs']} runs, {md['n_datasets']} datasets)"]
    selection = md.get("selection")
    if selection:
        covered = selection.get("coverage")
        inside = (f"; {covered['inside']} of {covered['of']} of the dataset's meta-features the model uses lie inside its range"
                  + (f" (outside: {', '.join(covered['outside'])})" if covered["outside"] else "")) if covered else ""
        lines.append(f"Why this knowledge base: {selection['reason']}{inside}.")
    lines.append(f"Cost: {md['cost']}.")
    if doc["degraded"]:
        lines.append("DEGRADED ANSWER: see warnings below")
    lines += ["", doc["explanation"], "", "Shortlist:"]
    estimates = doc["predicted"]["train_seconds"] is None
    cost_header = "compute (est.)" if estimates else "time"
    header = (f"{'rank':>4}  {'candidate':<16}  {'backbone':<30}  {'params':>7}  {'accuracy':>8}  {'80% range':>15}  "
              f"{cost_header:>14}  {'p_fail':>6}  pareto")
    lines += [header, "-" * len(header)]
    for item in doc["shortlist"]:
        p = item["predicted"]
        params = item["param_count"]["value"]
        size = f"{params / 1e6:.1f}M" if params is not None else "?"
        interval = f"{p['accuracy_low']:.1%}-{p['accuracy_high']:.1%}"
        lines.append(
            f"{item['rank']:>4}  {item['candidate_id']:<16.16}  {str(item['backbone'] or '-'):<30.30}  {size:>7}  "
            f"{p['accuracy']:>8.1%}  {interval:>15}  {cost_amount(p['train_seconds'], p['compute_flops_estimate']):>14}  "
            f"{p['p_fail']:>6.2f}  {'*' if item['pareto_optimal'] else ''}"
        )
    lines += ["", "Recommended config:"]
    lines += [f"  {key} = {_setting(value)}" for key, value in sorted(doc["config"].items())]
    lines += ["", "Against the runners-up (SHAP gap of predicted accuracy, split over the settings that differ):"]
    for contrast in doc["evidence"]["contrast"]:
        lines.append(f"  vs #{contrast['rival_rank']} {contrast['rival_backbone'] or contrast['rival_id']}: {contrast['text']}")
    lines += ["", "SHAP evidence (accuracy points):"]
    for explanation in doc["evidence"]["shap"]:
        lines.append(f"  {explanation['candidate_id']}: {explanation['text']}")
    lines += ["", "Nearest past datasets:"]
    for hit in doc["evidence"]["neighbours"]:
        best = hit["top_configs"][0] if hit["top_configs"] else None
        detail = f"best {best['accuracy']:.1%} ({cost_amount(best['cost_seconds'], best['cost_flops_estimate'])})" if best else "no ok run"
        lines.append(f"  {hit['dataset_id']:<24} distance {hit['distance']:.2f}  {detail}")
    c = doc["constraints"]
    applied = ", ".join(f"{name}={c['requested'][name]} (excludes {c['excluded_by'][name]})" for name in c["applied"]) or "none"
    lines += ["", f"Constraints: {applied}; {c['n_feasible']} of {c['n_candidates']} candidates feasible"]
    front = ", ".join(f"{p['accuracy']:.1%} at {cost_amount(p['train_seconds'], p['compute_flops_estimate'])}" for p in doc["pareto_front"][:8])
    lines.append(f"Pareto front (accuracy vs {'estimated compute' if estimates else 'time'}, {len(doc['pareto_front'])} configs): {front}")
    used, missing = doc["meta_features"]["used"], [n for n in doc["meta_features"]["imputed"] if n in doc["meta_features"]["used"] or
                                                    n not in doc["meta_features"]["not_learned"]]
    lines.append(f"Meta-features used: {', '.join(used) or 'none'}; missing: {', '.join(missing) or 'none'}")
    if doc["warnings"]:
        lines += ["", "Warnings:"] + [f"  - {w}" for w in doc["warnings"]]
    return "\n".join(lines)





# ------------------------------------------------------------------- evaluate
def run_evaluate(args: argparse.Namespace) -> int:
    from metallmix.evaluate import evaluate_lodo, evaluate_stability, format_table, nested_pick
    from metallmix.metadataset import load_meta_dataset
    from metallmix.metalearner import default_params

    df = load_meta_dataset(args.meta_dataset)
    params = {**default_params(df), **({"objective": args.objective} if args.objective else {})}
    if args.protocol == "subsampled-leave-one-dataset-out":
        stability = evaluate_stability(df, n_draws=args.draws, subset_size=args.subset_size, learner_params=params)
        print(f"Leave-one-dataset-out regret on {args.meta_dataset} with the meta-learner fitted on {stability['subset_size']} "
              f"random other datasets ({args.draws} draws; settings {params or 'default'}):")
        print(f"  mean {stability['mean_regret']:.3f}, std over draws {stability['std_regret']:.3f} "
              f"(draws {stability['min_regret']:.3f}-{stability['max_regret']:.3f})")
        for name, figures in stability["datasets"].items():
            print(f"  {name:<16} mean {figures['mean_regret']:.3f}  max {figures['max_regret']:.3f}")
        _write_json(stability, args.json)
        return 0
    choices: list[dict[str, Any]] = []
    nested = args.protocol == "nested-leave-one-dataset-out"
    result = evaluate_lodo(
        df,
        pick=nested_pick(log=choices) if nested else None,
        method="nested" if nested else "metalearner",
        baselines=not args.no_baselines,
        datasets=args.datasets,
        learner_params=params,
    )
    if nested:
        result["nested_choices"] = choices
    print(f"{'Nested l' if nested else 'L'}eave-one-dataset-out normalised regret on {args.meta_dataset} "
          "(0 = best config of the dataset, 1 = worst)")
    print(format_table(result))
    for entry, choice in zip(result["datasets"], choices):
        print(f"  {entry['dataset']}: settings chosen on the other datasets: {choice['chosen']}")
    _write_json(result, args.json)
    return 0


def _write_json(result: dict[str, Any], path: str | None) -> None:
    if not path:
        return
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2) + "\n")
    except OSError as exc:
        raise ConfigError(f"cannot write --json {path} ({exc})") from exc


# -------------------------------------------------------------- argument types
def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1], got {text!r}")
    return value


def _param_count(text: str) -> float:
    """'25000000', '25e6' or '25M' (K, M, G/B suffixes) -> 25e6."""
    scale = PARAM_SUFFIXES.get(text[-1:].lower(), 1.0) if text else 1.0
    number = text[:-1] if scale != 1.0 else text
    return _positive_float(number) * scale


def _setting(value: Any) -> str:
    """A config value as written in a config file: 64, not 64.0."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() and abs(value) < 1e15 else str(value)


def _budget(text: str) -> tuple[str, float]:
    """'30min', '2h', '90s' -> ("minutes", value); '5PFLOP', '800TFLOP', '3e15FLOP' -> ("flops", value)."""
    lowered = text.strip().lower().replace(" ", "")
    for units, kind in ((FLOP_UNITS, "flops"), (TIME_UNITS, "minutes")):
        for unit in sorted(units, key=len, reverse=True):
            if lowered.endswith(unit):
                try:
                    amount = float(lowered[: -len(unit)])
                except ValueError:
                    continue
                if amount > 0 and math.isfinite(amount):
                    return kind, amount * units[unit]
    raise argparse.ArgumentTypeError(f"expected a time (90s, 30min, 2h) or an estimated compute (5PFLOP, 3e15FLOP), got {text!r}")


def _name_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


if __name__ == "__main__":
    sys.exit(main())
