"""The ``metallmix`` command line: ``recommend`` a config for a dataset, ``evaluate`` the recommender.

    metallmix recommend [--meta-dataset SPEC] (--dataset PATH_OR_NAME | --meta-features JSON_OR_FILE)
                        [--modality TEXT] [--task TYPE] [--budget 30min|2h|5PFLOP] [--budget-minutes N]
                        [--max-params N] [--backbones a,b] [--max-p-fail P]
                        [--top-k K] [--json] [--model-dir DIR] [--cache-dir DIR]
                        [--llm MODEL_OR_none [--judge-llm MODEL] [--description TEXT]] [--server URL]
    metallmix evaluate --meta-dataset SPEC --protocol leave-one-dataset-out [--json OUT]

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
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from metallmix.data.descriptors import modality_family
from metallmix.errors import ConfigError, MetallmixError
from metallmix.formatting import cost_amount
from metallmix.knowledge_bases import coverage, default_knowledge_base
from metallmix.metadataset.store import DEFAULT_META_DATASET

EXIT_USAGE = 2
PROTOCOLS = ("leave-one-dataset-out", "nested-leave-one-dataset-out", "subsampled-leave-one-dataset-out")
CACHE_ENV = "METALLMIX_CACHE_DIR"
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
                     help="let an LLM pick from the shortlist and justify it: a conf/llm name (smollm2, "
                          "qwen2_5_coder_1_5b, ...), a model folder, an OpenAI-compatible http(s)://.../v1 URL, "
                          "or none (default: the meta-learner's pick with a template explanation)")
    rec.add_argument("--judge-llm", default="same", metavar="MODEL", help="the judge's model (default: same as --llm)")
    rec.add_argument("--server", metavar="URL", help="ask a running metallmix Serve app (serving/) instead of working in-process")
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
def run_recommend(args: argparse.Namespace) -> int:
    from metallmix.llm import recommend_via_server, recommend_with_llm, validate_recommendation
    from metallmix.recommend import Constraints, parse_meta_features

    budget_minutes, budget_flops = args.budget_minutes, None
    if args.budget is not None:
        unit, amount = args.budget
        if unit == "minutes" and budget_minutes is not None:
            raise ConfigError("give the time budget once: --budget or --budget-minutes")
        budget_minutes, budget_flops = (amount, None) if unit == "minutes" else (budget_minutes, amount)
    constraints = Constraints(
        budget_minutes=budget_minutes,
        budget_flops=budget_flops,
        max_params=args.max_params,
        backbones=tuple(args.backbones) if args.backbones else None,
        max_p_fail=args.max_p_fail,
    )
    if args.server and (args.modality or args.task or budget_flops is not None):
        raise ConfigError("--modality, --task and compute budgets are not sent to a server yet; drop --server")
    recommender = None
    if args.server:
        document = recommend_via_server(
            args.server,
            meta_features=parse_meta_features(args.meta_features) if args.meta_features else None,
            dataset=args.dataset,
            constraints={k: v for k, v in constraints.requested().items() if v is not None},
            top_k=args.top_k,
            description=args.description,
            llm=args.llm != "none",
        )
    else:
        dataset, meta_features = _dataset_inputs(args)
        spec, selection = _knowledge_base(args, dataset, meta_features)
        recommender = obtain_recommender(spec, args.model_dir, args.cache_dir)
        document = recommend_with_llm(
            recommender,
            meta_features=meta_features,
            dataset=dataset,
            constraints=constraints,
            top_k=args.top_k,
            engine=args.llm,
            judge_engine=args.judge_llm,
            description=args.description,
        )
    if recommender is not None:
        document["meta_dataset"]["selection"] = _selection_report(selection, document, recommender)
    validate_recommendation(document)
    if (args.shap_summary or args.shap_waterfall) and recommender is None:
        raise ConfigError("--shap-summary and --shap-waterfall need the recommender in this process; drop --server")
    if args.shap_summary:
        recommender.explainer_.save_summary_plot(args.shap_summary)
    if args.shap_waterfall:
        recommender.save_waterfall_plot(document, args.shap_waterfall)
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print(format_recommendation(document, source=args.dataset or "the given meta-features"))
        if "judge" in document:
            print(f"\nJudge scores: {json.dumps(document['judge'].get('scores'))}")
        if document.get("llm", {}).get("fallback"):
            print(f"LLM fallback: {document['llm'].get('fallback_reason')} (the meta-learner's top candidate is kept)")
        for label, path in (("SHAP summary plot", args.shap_summary), ("SHAP waterfall of the pick", args.shap_waterfall)):
            if path:
                print(f"{label}: {path}")
    return 0


def _dataset_inputs(args: argparse.Namespace) -> tuple[Any, dict[str, Any] | None]:
    """(dataset facts, None) for --dataset, or (None, meta-features) for --meta-features; --modality and
    --task join either."""
    from metallmix.recommend import describe_dataset, parse_meta_features

    if args.dataset is not None:
        return describe_dataset(args.dataset, modality=args.modality, task=args.task), None
    meta_features = dict(parse_meta_features(args.meta_features))
    meta_features.update({k: v for k, v in (("modality", args.modality), ("task", args.task)) if v is not None})
    return None, meta_features


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


def _selection_report(selection: dict[str, Any], document: dict[str, Any], recommender: Any) -> dict[str, Any]:
    """The selection with the answering knowledge base's coverage of the dataset's meta-features."""
    values = document["meta_features"]["values"]
    covered = coverage(values, recommender.feature_domain_, recommender.metalearner_.meta_feature_names_)
    return {**selection, "coverage": covered.as_dict()}


def obtain_recommender(spec: str | None, model_dir: str | None, cache_dir: str | None):
    """A saved Recommender from ``model_dir``, else one fitted on ``spec`` (cached by content hash)."""
    from metallmix.metadataset import load_meta_dataset

    if model_dir and (Path(model_dir) / "manifest.json").is_file():
        from metallmix.recommend import Recommender, content_hash

        recommender = Recommender.load(model_dir)
        if spec is not None:
            wanted = content_hash(load_meta_dataset(spec))
            if wanted != recommender.meta_dataset_["content_hash"]:
                raise ConfigError(
                    f"the recommender in {model_dir} was fitted on another meta-dataset than {spec} "
                    f"(content hash {recommender.meta_dataset_['content_hash']} vs {wanted}); drop --model-dir or use a fresh one"
                )
        return recommender
    spec = spec or DEFAULT_META_DATASET
    df = load_meta_dataset(spec)  # before the heavy imports below: a bad spec fails fast
    from metallmix.recommend import FORMAT_VERSION, MANIFEST_FILE, Recommender, content_hash

    if model_dir:
        target = Path(model_dir)
    else:
        target = cache_root(cache_dir) / "recommenders" / f"v{FORMAT_VERSION}" / content_hash(df)
        if (target / MANIFEST_FILE).is_file():
            try:
                return Recommender.load(target)
            except (ConfigError, OSError) as exc:
                print(f"metallmix: the cached recommender in {target} is unreadable ({exc}); refitting", file=sys.stderr)
                shutil.rmtree(target, ignore_errors=True)
    print(f"metallmix: fitting a recommender on {spec} ({len(df)} runs); saving it in {target}", file=sys.stderr)
    recommender = Recommender().fit(df, spec=spec)
    _save_atomically(recommender, target)
    return recommender


def cache_root(cache_dir: str | None) -> Path:
    return Path(cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "metallmix").expanduser()


def _save_atomically(recommender: Any, target: Path) -> None:
    """Save into a temporary sibling folder, then rename: readers never see half a model."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        recommender.save(tmp)
        if target.exists() and not any(target.iterdir()):
            target.rmdir()
        os.replace(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(f"cannot save the recommender in {target} ({exc}); choose another --model-dir or --cache-dir") from exc


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
