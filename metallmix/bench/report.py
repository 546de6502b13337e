"""Report of a ``python -m metallmix.bench -m ...`` multirun: a Markdown table, two plots, targets.

Every benchmark job (one method x one held-out dataset x one seed) writes a ``bench_result.json``
into its job folder. This module gathers them below a multirun folder and writes, next to them:

- ``report.md``: a table in the paper's shape (one row per dataset, one column per method; a cell is
  the mean accuracy over seeds, the training time and the response time), summary rows (mean
  normalised regret, mean times, time to a trained model, trials), paired comparisons over datasets
  (the mean regret difference with a bootstrap 95% interval and the Wilcoxon signed-rank p-value, as
  the HPO benchmark papers HPO-B and YAHPO Gym report them, instead of counting "wins" over a few
  seeds), and the targets the benchmark is meant to meet (each line PASS, FAIL or n/a, with its
  numbers). A folder of several trial budgets gets one such section per budget;
- ``regret_vs_time.png``: mean normalised regret of the incumbent against cumulative training time;
- ``accuracy_vs_training_time.png``: accuracy against training time, one marker per method;
- ``regret_vs_budget.png`` (folders of several trial budgets): mean normalised regret against the
  budget in trials, a band over seeds (min to max of the seeds' means over datasets); zero-shot
  methods, which train one model, at 1.

**Time to a trained model** is what a user waits for before holding a model: for a zero-shot method
its response (the prediction) plus the training of its pick, for a search its whole run, the longer of
its training and its response time (its answer was trained along the way; in train mode the response
also holds Tune's own overhead). Where training is a compute estimate the two do not add, and only
the training compute is shown.

Normalised regret is (best - accuracy) / (best - worst). In replay mode best and worst are the
accuracies recorded on the dataset (the result's ``reference``). In train mode there is no record,
so they are the best and worst accuracy of the pool of every trial and every result of that
dataset in the folder (regret 0 when best == worst). A result that carries its own regret keeps it.

Means are taken over seeds within a dataset first, then over datasets, so every dataset weighs the
same. Command line: ``python -m metallmix.bench.report MULTIRUN_DIR [--out DIR] [--mode MODE]``.

Training cost is in seconds, or, for results replayed on a knowledge base that records no training
time (MedMNIST+), in estimated FLOP (``metallmix.bench.CostUnit``): the table, the targets and the
plots then show compute, every figure labelled "(est.)", never a duration. A folder holds one of the
two. A job whose method did not apply (``skipped`` in its result: ASHA and BOHB without learning
curves) is shown as "n/a" in its column, with the reason under the table; it counts in no mean.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.stats import wilcoxon

from metallmix.bench import COST_UNITS, FLOPS_ESTIMATE, FORMAT_VERSION, RESULT_FILE, SECONDS, CostUnit
from metallmix.errors import ConfigError, DataError, MetallmixError
from metallmix.evaluate import normalized_regret
from metallmix.formatting import format_flops
from metallmix.metadataset.store import atomic_write

MODES = ("replay", "train")
REQUIRED_KEYS = (
    "format_version", "mode", "method", "dataset", "seed", "meta_dataset", "budget", "accuracy",
    "best_config", "normalized_regret", "reference", "recommendation_seconds", "training_seconds",
    "time_to_within_1pct_seconds", "n_trials", "trajectory", "trials", "wall_seconds", "fit_seconds",
)
REQUIRED_NESTED_KEYS = {"budget": ("trials", "time_s"), "reference": ("best_accuracy", "worst_accuracy")}
METHOD_ORDER = ("zeroshot", "zeroshot_llm", "portfolio", "nearest_dataset", "portfolio_k", "nearest_dataset_k", "hybrid",
                "random", "random+default", "tpe", "tpe+default", "asha", "asha+default", "bohb", "bohb+default")
META_LEARNED = ("zeroshot", "zeroshot_llm", "hybrid")  # what the paired comparisons are about
BASELINES = ("random", "tpe", "asha", "bohb")
MEAN_COLUMNS = ("accuracy", "training_cost", "recommendation_seconds", "normalized_regret", "n_trials", "within_cost",
                "model_time")
NOT_APPLICABLE = "n/a"
REPORT_NAME = "report.md"
REGRET_PLOT_NAME = "regret_vs_time.png"
ACCURACY_PLOT_NAME = "accuracy_vs_training_time.png"
BUDGET_PLOT_NAME = "regret_vs_budget.png"
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


# --- loading -------------------------------------------------------------------------------------


def load_results(folder: str | Path, mode: str | None = None) -> pd.DataFrame:
    """One row per ``bench_result.json`` below ``folder``, with a ``path`` column and regrets filled in.

    ``mode`` keeps only the results of that mode; without it the folder must hold a single mode.
    Columns are added: ``regret_best`` and ``regret_worst``, the accuracies the row's regret is
    normalised by (its reference in replay mode, the dataset's pool in train mode); ``skipped`` (why
    the method did not apply, else None); ``cost_unit`` (a ``CostUnit`` name) and the training cost
    in it, ``training_cost``, ``within_cost`` (to within 1 point of the final accuracy) and
    ``model_time`` (the time, or compute, to a trained model).
    """
    if mode is not None and mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"results folder {root} does not exist; pass the folder a "
                        "`python -m metallmix.bench -m ...` multirun wrote (e.g. multirun/DATE/TIME)")
    paths = sorted(root.rglob(RESULT_FILE))
    if not paths:
        raise DataError(f"no {RESULT_FILE} files below {root}; pass the output folder of a "
                        f"`python -m metallmix.bench -m ...` multirun (each job folder holds one {RESULT_FILE})")
    results = pd.DataFrame([read_result(path) for path in paths])
    return with_regret(with_costs(select_mode(results, mode, root), root))


def read_result(path: Path) -> dict[str, Any]:
    """The result object of one file, checked for its format, plus its ``path``."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); delete it or rerun its benchmark job") from exc
    if not isinstance(doc, dict):
        raise DataError(f"{path} holds a JSON {type(doc).__name__}, not a benchmark result object")
    missing = [key for key in REQUIRED_KEYS if key not in doc]
    if missing:
        raise DataError(f"{path} lacks the key(s) {', '.join(missing)}; it is not a complete benchmark result")
    if doc["format_version"] != FORMAT_VERSION:
        raise DataError(f"{path} has format_version {doc['format_version']!r}; this report reads "
                        f"format_version {FORMAT_VERSION}")
    missing = [f"{parent}.{key}" for parent, keys in REQUIRED_NESTED_KEYS.items()
               for key in keys if not isinstance(doc[parent], dict) or key not in doc[parent]]
    if missing:
        raise DataError(f"{path} lacks the key(s) {', '.join(missing)}; it is not a complete benchmark result")
    if doc["mode"] not in MODES:
        raise DataError(f"{path} has mode {doc['mode']!r}; expected one of {', '.join(MODES)}")
    return {**doc, "path": str(path)}


def select_mode(results: pd.DataFrame, mode: str | None, root: Path) -> pd.DataFrame:
    """The results of ``mode``; without a mode, all of them if they share one mode."""
    counts = results["mode"].value_counts()
    if mode is None:
        if len(counts) > 1:
            found = ", ".join(f"{name} ({n} files)" for name, n in counts.items())
            raise DataError(f"{root} mixes results of modes {found}; report one mode at a time: "
                            "pass --mode replay or --mode train (mode= in load_results)")
        return results.reset_index(drop=True)
    selected = results[results["mode"] == mode]
    if selected.empty:
        raise DataError(f"{root} holds no results of mode {mode!r} (found: {', '.join(counts.index)})")
    return selected.reset_index(drop=True)


def with_costs(results: pd.DataFrame, root: Path) -> pd.DataFrame:
    """Add ``skipped``, ``cost_unit``, ``training_cost``, ``within_cost`` and ``model_time`` (the time to a
    trained model, module docstring) (see ``load_results``).

    A result's cost is in estimated FLOP when it holds ``training_compute_flops_estimate``, else in
    seconds (results written before the estimate fields existed are in seconds). The results that ran
    must share one unit: seconds and estimated FLOP cannot share a table or an axis.
    """
    results = results.copy()
    skipped = results["skipped"] if "skipped" in results else pd.Series(None, index=results.index, dtype=object)
    results["skipped"] = skipped.astype(object).where(skipped.notna(), None)
    applied = results["skipped"].isna()
    if not applied.any():
        reasons = "; ".join(sorted(set(results["skipped"])))
        raise DataError(f"every result below {root} was skipped ({reasons}); there is nothing to report")
    flops = FLOPS_ESTIMATE.total
    estimated = results[flops].notna() if flops in results else pd.Series(False, index=results.index)
    results["cost_unit"] = pd.Series(np.where(estimated, FLOPS_ESTIMATE.name, SECONDS.name),
                                     index=results.index, dtype=object).where(applied, None)
    counts = results.loc[applied, "cost_unit"].value_counts()
    if len(counts) > 1:
        found = ", ".join(f"{name} ({n} files)" for name, n in counts.items())
        raise DataError(f"{root} mixes results whose training cost is in different units: {found} (a knowledge "
                        "base without training times is replayed on compute estimates); report them apart, "
                        "one multirun folder each")
    unit = next(u for u in COST_UNITS if u.name == counts.index[0])
    results["training_cost"] = pd.to_numeric(results[unit.total]).where(applied)
    results["within_cost"] = pd.to_numeric(results[unit.within]).where(applied)
    response = pd.to_numeric(results["recommendation_seconds"]).fillna(0.0)
    zero_shot = pd.to_numeric(results["n_trials"]) == 0
    if unit is SECONDS:  # a zero-shot answer is then trained; a search answers with a trained model (its wall time)
        model_time = (results["training_cost"] + response).where(zero_shot, np.maximum(results["training_cost"], response))
    else:  # estimated compute: seconds do not add to it
        model_time = results["training_cost"]
    results["model_time"] = model_time.where(applied)
    return results


def cost_unit(results: pd.DataFrame) -> CostUnit:
    """The one cost unit of the results that ran (``with_costs`` checked there is one)."""
    name = ran(results)["cost_unit"].iloc[0]
    return next(unit for unit in COST_UNITS if unit.name == name)


def ran(results: pd.DataFrame) -> pd.DataFrame:
    """The results whose method applied (not ``skipped``)."""
    return results[results["skipped"].isna()]


def not_applicable(results: pd.DataFrame) -> dict[str, list[str]]:
    """Why methods were skipped: reason -> the methods skipped for it."""
    skipped = results[results["skipped"].notna()]
    return {reason: ordered_methods(group["method"]) for reason, group in skipped.groupby("skipped")}


def with_regret(results: pd.DataFrame) -> pd.DataFrame:
    """Fill null regrets from the dataset's accuracy pool and add the normalising best/worst columns."""
    results = results.copy()
    pool_best, pool_worst = accuracy_pools(ran(results))
    reference_best = pd.to_numeric(results["reference"].map(lambda ref: ref["best_accuracy"]))
    reference_worst = pd.to_numeric(results["reference"].map(lambda ref: ref["worst_accuracy"]))
    results["regret_best"] = reference_best.fillna(results["dataset"].map(pool_best))
    results["regret_worst"] = reference_worst.fillna(results["dataset"].map(pool_worst))
    computed = [None if skipped else normalized_regret(acc, best, worst) for acc, best, worst, skipped
                in zip(results["accuracy"], results["regret_best"], results["regret_worst"], results["skipped"],
                       strict=True)]
    own = pd.to_numeric(results["normalized_regret"])
    results["normalized_regret"] = own.fillna(pd.Series(computed, index=results.index))
    return results


def accuracy_pools(results: pd.DataFrame) -> tuple[dict[str, float], dict[str, float]]:
    """Per dataset: the best and the worst of every trial accuracy and every result accuracy."""
    pools: dict[str, list[float]] = {}
    for row in results.itertuples():
        pool = pools.setdefault(row.dataset, [])
        pool.append(row.accuracy)
        pool.extend(trial["accuracy"] for trial in row.trials)
    finite = {dataset: [a for a in pool if a is not None and math.isfinite(a)] for dataset, pool in pools.items()}
    return ({d: max(pool) for d, pool in finite.items() if pool}, {d: min(pool) for d, pool in finite.items() if pool})


# --- table ---------------------------------------------------------------------------------------


def ordered_methods(methods: Iterable[str]) -> list[str]:
    """The known methods (zero-shot, ranked lists, hybrid, searches) in ``METHOD_ORDER``, then any others
    alphabetically."""
    present = set(methods)
    return [m for m in METHOD_ORDER if m in present] + sorted(present - set(METHOD_ORDER))


def cell_means(results: pd.DataFrame) -> pd.DataFrame:
    """Means over seeds, indexed by (dataset, method)."""
    return results.groupby(["dataset", "method"])[list(MEAN_COLUMNS)].mean()


def method_means(cells: pd.DataFrame) -> pd.DataFrame:
    """Means over datasets of the per-dataset means, indexed by method."""
    return cells.groupby(level="method").mean()


def human_duration(seconds: float | None) -> str:
    """Compact duration: seconds below 120 s, minutes below 120 min, else hours; "–" when unknown."""
    if seconds is None or math.isnan(seconds):
        return "–"
    if seconds < 1:
        return f"{seconds:.2g} s"
    if seconds < 120:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 120:
        return f"{minutes:.1f} min" if minutes < 10 else f"{minutes:.0f} min"
    return f"{minutes / 60:.1f} h"


def format_cost(value: float | None, unit: CostUnit) -> str:
    """A training cost as shown: a duration, or an estimated compute labelled "(est.)"; "–" when unknown."""
    if unit is SECONDS:
        return human_duration(value)
    return "–" if value is None or math.isnan(value) else format_flops(value)


def cost_label(unit: CostUnit) -> str:
    """What the training cost is called in the table and the targets."""
    return "training time" if unit is SECONDS else "training compute (est.)"


def format_budget(budget: dict[str, Any]) -> str:
    parts = []
    if budget["trials"] is not None:
        parts.append(f"{budget['trials']} trials")
    if budget["time_s"] is not None:
        parts.append(f"{human_duration(budget['time_s'])} of training")
    if budget.get("time_runs") is not None:
        parts.append(f"training time of {budget['time_runs']:g} median runs")
    return " / ".join(parts) or "unlimited"


def distinct_budgets(results: pd.DataFrame) -> str:
    """The budgets of the methods that search (those with trials); of all results if none does."""
    searching = results[results["n_trials"] > 0]
    budgets = (searching if not searching.empty else results)["budget"]
    return ", ".join(sorted({format_budget(budget) for budget in budgets}))


def legend(results: pd.DataFrame) -> str:
    """One line: what a cell shows and what the results were run under."""
    unit = cost_unit(results)
    seeds = ", ".join(str(s) for s in sorted(results["seed"].unique()))
    meta_datasets = ", ".join(f"`{spec}`" for spec in sorted(results["meta_dataset"].unique()))
    estimate = ("" if unit is SECONDS else
                " Training compute is the knowledge base's estimate in FLOP (it records no training time); "
                "a search answers after its training, so its response time is unknown there (–).")
    return (f"Cell: mean accuracy (%) over seeds {seeds} · {cost_label(unit)} · response time. "
            f"Mode: {results['mode'].iloc[0]}; budget: {distinct_budgets(ran(results))}; "
            f"meta-dataset: {meta_datasets}.{estimate}")


def format_cell(means: pd.Series, unit: CostUnit) -> str:
    return (f"{means['accuracy'] * 100:.1f} · {format_cost(means['training_cost'], unit)} · "
            f"{human_duration(means['recommendation_seconds'])}")


def markdown_row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def summary_rows(cells: pd.DataFrame, methods: list[str], unit: CostUnit) -> list[list[str]]:
    """Means over datasets per method; "n/a" for a method that ran on none (skipped everywhere)."""
    means = method_means(cells)

    def row(label: str, show: Any) -> list[str]:
        return [label, *(show(m) if m in means.index else NOT_APPLICABLE for m in methods)]

    label = cost_label(unit)
    return [
        row("mean normalised regret", lambda m: f"{means.loc[m, 'normalized_regret']:.3f}"),
        row(f"mean {label}", lambda m: format_cost(means.loc[m, "training_cost"], unit)),
        row("mean response time", lambda m: human_duration(means.loc[m, "recommendation_seconds"])),
        *([row("mean time to a trained model", lambda m: format_cost(means.loc[m, "model_time"], unit))]
          if unit is SECONDS else []),  # compute: the training compute above is already all of it
        row(f"mean {label} to within 1 point of the final accuracy",
            lambda m: format_cost(means.loc[m, "within_cost"], unit)),
        row("n trials (mean)", lambda m: f"{means.loc[m, 'n_trials']:.1f}"),
    ]


def results_table(results: pd.DataFrame) -> str:
    """The legend line and the Markdown table: datasets x methods, then summary rows; "n/a" where a
    method did not apply, with the reasons under the table."""
    cells = cell_means(ran(results))
    unit = cost_unit(results)
    methods = ordered_methods(results["method"])
    skipped = set(zip(results.loc[results["skipped"].notna(), "dataset"],
                      results.loc[results["skipped"].notna(), "method"], strict=True))
    lines = [legend(results), "", markdown_row(["dataset", *methods]), markdown_row(["---"] + ["---:"] * len(methods))]
    for dataset in sorted(results["dataset"].unique()):
        row = [format_cell(cells.loc[(dataset, m)], unit) if (dataset, m) in cells.index
               else NOT_APPLICABLE if (dataset, m) in skipped else "–" for m in methods]
        lines.append(markdown_row([dataset, *row]))
    lines.extend(markdown_row(row) for row in summary_rows(cells, methods, unit))
    reasons = not_applicable(results)
    if reasons:
        lines.append("")
        lines.extend(f"{NOT_APPLICABLE}: {', '.join(names)} not applicable ({reason})."
                     for reason, names in reasons.items())
    return "\n".join(lines)


# --- paired comparisons --------------------------------------------------------------------------


def comparison_pairs(results: pd.DataFrame) -> list[tuple[str, str]]:
    """What to compare: each meta-learned method (``META_LEARNED``) with every other method, the others
    first in ``METHOD_ORDER``, each pair once; without a meta-learned method, the first method with the rest."""
    methods = ordered_methods(ran(results)["method"])
    leaders = [m for m in META_LEARNED if m in methods] or methods[:1]
    others = [m for m in methods if m not in leaders] + leaders
    pairs: list[tuple[str, str]] = []
    for leader in leaders:
        pairs += [(leader, m) for m in others if m != leader and (m, leader) not in pairs]
    return pairs


def paired_comparison(cells: pd.DataFrame, method: str, other: str) -> dict[str, Any]:
    """Mean regret of two methods over the datasets both ran, the mean of their per-dataset difference
    (method - other) with a bootstrap 95% interval over datasets, and the Wilcoxon signed-rank p-value."""
    table = cells["normalized_regret"].unstack("method")[[method, other]].dropna()
    difference = (table[method] - table[other]).to_numpy()
    out = {"method": method, "other": other, "n_datasets": len(difference),
           "mean": float(table[method].mean()) if len(table) else math.nan,
           "other_mean": float(table[other].mean()) if len(table) else math.nan,
           "difference": float(difference.mean()) if len(difference) else math.nan,
           "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan,
           "better": int((difference < 0).sum()), "ties": int((difference == 0).sum()), "worse": int((difference > 0).sum())}
    if len(difference) >= 2:
        rng = np.random.default_rng(BOOTSTRAP_SEED)
        draws = rng.choice(difference, size=(BOOTSTRAP_RESAMPLES, len(difference)), replace=True).mean(axis=1)
        out["ci_low"], out["ci_high"] = (float(v) for v in np.percentile(draws, [2.5, 97.5]))
        out["p_value"] = 1.0 if not np.any(difference) else float(wilcoxon(difference, zero_method="zsplit").pvalue)
    return out


def comparisons_table(results: pd.DataFrame) -> str:
    """Markdown: one row per compared pair (``comparison_pairs``), figures of ``paired_comparison``."""
    cells = cell_means(ran(results))
    lines = ["Paired over datasets (per-dataset mean regret over seeds; difference = first - second, negative: the "
             f"first is better; 95% interval: bootstrap over datasets, {BOOTSTRAP_RESAMPLES:,} resamples; p: "
             "Wilcoxon signed-rank, two-sided):", "",
             markdown_row(["first", "second", "datasets", "mean regret", "difference [95% interval]", "p",
                           "first better / tie / worse"]),
             markdown_row(["---", "---", "---:", "---:", "---:", "---:", "---:"])]
    for method, other in comparison_pairs(results):
        c = paired_comparison(cells, method, other)
        if c["n_datasets"] == 0:
            continue
        interval = "–" if math.isnan(c["ci_low"]) else f"[{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]"
        p = "–" if math.isnan(c["p_value"]) else f"{c['p_value']:.3g}"
        lines.append(markdown_row([method, other, str(c["n_datasets"]), f"{c['mean']:.3f} vs {c['other_mean']:.3f}",
                                   f"{c['difference']:+.3f} {interval}", p,
                                   f"{c['better']} / {c['ties']} / {c['worse']}"]))
    return "\n".join(lines)


# --- targets -------------------------------------------------------------------------------------


def paired_means(cells: pd.DataFrame, method: str, other: str, column: str) -> tuple[float, float, int]:
    """Means of ``column`` for two methods over the datasets both ran on, and how many those are."""
    table = cells[column].unstack("method")[[method, other]].dropna()
    return float(table[method].mean()), float(table[other].mean()), len(table)


def zero_shot_target(results: pd.DataFrame, cells: pd.DataFrame, unit: CostUnit = SECONDS) -> str:
    """Target 1: zeroshot's regret at most random's, with at most a tenth of random's training cost
    (time, or the compute estimate where the results count no seconds)."""
    name = f"zeroshot vs random: regret <= random's and {cost_label(unit)} <= 1/10 of random's"
    noun = "training time" if unit is SECONDS else "training compute"  # its figures say "(est.)" themselves
    methods = set(results["method"])
    if not {"zeroshot", "random"} <= methods:
        return f"n/a {name} (needs results of zeroshot and random)"
    zs_regret, random_regret, n_datasets = paired_means(cells, "zeroshot", "random", "normalized_regret")
    if n_datasets == 0:
        return f"n/a {name} (zeroshot and random share no dataset)"
    zs_time, random_time, _ = paired_means(cells, "zeroshot", "random", "training_cost")
    regret_ok = zs_regret <= random_regret
    time_ok = zs_time <= random_time / 10
    budget = distinct_budgets(results[results["method"] == "random"])
    return (f"{'PASS' if regret_ok and time_ok else 'FAIL'} {name} (random's budget: {budget}; "
            f"{n_datasets} datasets): regret {zs_regret:.3f} vs {random_regret:.3f} ({ok(regret_ok)}); "
            f"{noun} {format_cost(zs_time, unit)} vs 1/10 of {format_cost(random_time, unit)} = "
            f"{format_cost(random_time / 10, unit)} ({ok(time_ok)})")


def hybrid_target(results: pd.DataFrame, cells: pd.DataFrame) -> str:
    """Target 2: hybrid's regret below that of every baseline present."""
    name = "hybrid regret lower than every baseline's"
    baselines = [b for b in BASELINES if b in set(results["method"])]
    if "hybrid" not in set(results["method"]) or not baselines:
        return f"n/a {name} (needs results of hybrid and of at least one of {', '.join(BASELINES)})"
    comparisons = []
    passed = True
    for baseline in baselines:
        hybrid_regret, baseline_regret, n_datasets = paired_means(cells, "hybrid", baseline, "normalized_regret")
        lower = n_datasets > 0 and hybrid_regret < baseline_regret
        passed &= lower
        comparisons.append(f"vs {baseline}: {hybrid_regret:.3f} vs {baseline_regret:.3f} "
                           f"on {n_datasets} datasets ({ok(lower)})")
    return f"{'PASS' if passed else 'FAIL'} {name}: " + "; ".join(comparisons)


def ok(condition: bool) -> str:
    return "ok" if condition else "not met"


def targets(results: pd.DataFrame) -> list[str]:
    """The benchmark's targets, one line each, starting with PASS, FAIL or n/a; a method that did not
    apply (skipped) counts as absent."""
    applied = ran(results)
    cells = cell_means(applied)
    lines = [zero_shot_target(applied, cells, cost_unit(results)), hybrid_target(applied, cells)]
    if (results["mode"] == "train").all():
        lines.append(train_time_target(results))
    return lines


TRAIN_MODE_LIMIT_SECONDS = 30 * 60


def train_time_target(results: pd.DataFrame) -> str:
    """Train mode: the whole comparison (the jobs' wall time, summed) within 30 minutes."""
    total = float(results["wall_seconds"].sum())
    verdict = "PASS" if total <= TRAIN_MODE_LIMIT_SECONDS else "FAIL"
    return (f"{verdict} train mode: the whole comparison within {TRAIN_MODE_LIMIT_SECONDS // 60} min: "
            f"{len(results)} jobs took {human_duration(total)} of wall time (summed over jobs; Ray's and "
            "Python's start-up once per multirun come on top)")


# --- plots ---------------------------------------------------------------------------------------


def is_zero_shot(results: pd.DataFrame, method: str) -> bool:
    """A zero-shot method runs no trials: its one training run is its single trajectory point."""
    return bool((results.loc[results["method"] == method, "n_trials"] == 0).all())


def trajectory_points(row: pd.Series, unit: CostUnit = SECONDS) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative costs (``unit``) and incumbent regrets of a result; its final accuracy at its training
    cost if it has none."""
    points = sorted(row["trajectory"], key=lambda point: point[unit.point]) or [
        {unit.point: row[unit.total], "accuracy": row["accuracy"]}]
    times = np.array([p[unit.point] for p in points], dtype=float)
    regrets = np.array([normalized_regret(p["accuracy"], row["regret_best"], row["regret_worst"]) for p in points])
    return times, regrets


def incumbent_regret(row: pd.Series, grid: np.ndarray, unit: CostUnit = SECONDS) -> np.ndarray:
    """The incumbent's regret at each grid time (cost): 1.0 (worst) before the first trajectory point."""
    times, regrets = trajectory_points(row, unit)
    position = np.searchsorted(times, grid, side="right") - 1
    return np.where(position >= 0, regrets[np.maximum(position, 0)], 1.0)


def positive_floor(times: Iterable[float]) -> float:
    """Where to draw time 0 on a log axis: half the smallest positive time (1 s if there is none)."""
    positive = [t for t in times if t > 0]
    return min(positive) / 2 if positive else 1.0


def method_style(method: str, methods: list[str]) -> dict[str, Any]:
    """Plot style of a method among ``methods``: one colour and marker per searcher, a ``+default``
    variant dashed in its searcher's colour."""
    base = method.removesuffix("+default")
    bases = list(dict.fromkeys(m.removesuffix("+default") for m in methods))
    number = bases.index(base)
    return {"marker": MARKERS[number % len(MARKERS)], "color": f"C{number % 10}", "label": method,
            "linestyle": "--" if method != base else "-"}


def save_figure(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))


def new_axes(title: str, ylabel: str, unit: CostUnit) -> tuple[Figure, Any]:
    figure = Figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    axes.set_xscale("log")
    axes.set_xlabel("cumulative training time (s, log scale)" if unit is SECONDS
                    else "cumulative training compute (FLOP, estimate, log scale)")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    return figure, axes


def plot_regret_vs_time(results: pd.DataFrame, path: str | Path) -> Path:
    """PNG: per method, the mean incumbent regret over (dataset, seed) results against training cost
    (time, or the compute estimate), a band spanning the seeds (each seed's mean over datasets); methods
    that did not apply are left out."""
    unit = cost_unit(results)
    results = ran(results)
    trajectories = {index: trajectory_points(row, unit) for index, row in results.iterrows()}
    all_times = np.concatenate([times for times, _ in trajectories.values()])
    end, floor = float(all_times.max()), positive_floor(all_times)
    figure, axes = new_axes("Normalised regret of the incumbent", "mean normalised regret", unit)
    methods = ordered_methods(results["method"])
    for method in methods:
        rows = results[results["method"] == method]
        style = method_style(method, methods)
        if is_zero_shot(results, method):
            point_time = float(np.mean([trajectories[i][0][-1] for i in rows.index]))
            point_regret = float(np.mean([trajectories[i][1][-1] for i in rows.index]))
            axes.plot([max(point_time, floor)], [point_regret], markersize=9, **{**style, "linestyle": "none"})
            axes.hlines(point_regret, max(point_time, floor), max(end, point_time, floor), colors=style["color"])
        else:
            grid = np.unique(np.concatenate([[0.0, end], *(trajectories[i][0] for i in rows.index)]))
            regret = pd.DataFrame([incumbent_regret(row, grid, unit) for _, row in rows.iterrows()], index=rows.index)
            per_seed = regret.groupby(rows["seed"]).mean()
            axes.plot(np.maximum(grid, floor), regret.mean().to_numpy(), drawstyle="steps-post", markevery=[-1], **style)
            axes.fill_between(np.maximum(grid, floor), per_seed.min().to_numpy(), per_seed.max().to_numpy(),
                              step="post", color=style["color"], alpha=0.12)
    axes.legend(fontsize=8)
    target = Path(path)
    save_figure(figure, target)
    return target


def plot_regret_vs_budget(results: pd.DataFrame, path: str | Path) -> Path:
    """PNG: per method, mean normalised regret over datasets against the trial budget, the band spanning
    the seeds (each seed's mean over datasets); zero-shot methods at 1 (one trained model), their level
    dotted across the budgets."""
    applied = ran(results)
    largest = max((b for b in trial_budgets(applied) if b is not None), default=1)
    figure = Figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    axes.set_xscale("log")
    axes.set_xlabel("budget: trials (models trained; zero-shot: 1, log scale)")
    axes.set_ylabel("mean normalised regret over datasets")
    axes.set_yscale("symlog", linthresh=0.01)  # linear below 0.01, where the searches converge
    axes.set_title("Normalised regret against budget (band: range over seeds)")
    axes.grid(True, which="both", alpha=0.3)
    methods = ordered_methods(applied["method"])
    for method in methods:
        rows = applied[applied["method"] == method]
        zero_shot = is_zero_shot(applied, method)
        budget = pd.Series(1 if zero_shot else rows["budget"].map(lambda b: b["trials"]), index=rows.index)
        rows = rows.assign(x=budget).dropna(subset=["x"])
        if zero_shot:
            rows = rows.drop_duplicates(["dataset", "seed"])
        per_seed = rows.groupby(["x", "seed"])["normalized_regret"].mean()
        summary = per_seed.groupby(level="x").agg(["mean", "min", "max"])
        style = method_style(method, methods)
        axes.plot(summary.index, summary["mean"], **style)
        axes.fill_between(summary.index, summary["min"], summary["max"], color=style["color"], alpha=0.15)
        if zero_shot:
            axes.hlines(summary["mean"].iloc[0], 1, largest, colors=style["color"], linestyles="dotted")
    axes.legend(fontsize=8)
    target = Path(path)
    save_figure(figure, target)
    return target


def plot_accuracy_vs_time(results: pd.DataFrame, path: str | Path) -> Path:
    """PNG scatter: mean accuracy against mean training cost (time, or the compute estimate), one point per
    (dataset, method); methods that did not apply are left out."""
    unit = cost_unit(results)
    results = ran(results)
    cells = cell_means(results)
    floor = positive_floor(cells["training_cost"])
    what = "training time" if unit is SECONDS else "estimated training compute"
    figure, axes = new_axes(f"Accuracy against {what} (mean over seeds per dataset)", "accuracy (%)", unit)
    methods = ordered_methods(results["method"])
    for method in methods:
        points = cells.xs(method, level="method")
        axes.scatter(np.maximum(points["training_cost"], floor), points["accuracy"] * 100,
                     **{k: v for k, v in method_style(method, methods).items() if k != "linestyle"})
    axes.legend(fontsize=8)
    target = Path(path)
    save_figure(figure, target)
    return target


# --- report --------------------------------------------------------------------------------------


def write_text_atomically(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def trial_budgets(results: pd.DataFrame) -> list[Any]:
    """The distinct trial budgets of the searches (None: a time budget only), in increasing order."""
    searches = results[pd.to_numeric(results["n_trials"]) > 0]
    return sorted({b["trials"] for b in searches["budget"]}, key=lambda t: (t is None, t or 0))


def budget_sections(results: pd.DataFrame) -> list[tuple[Any, pd.DataFrame]]:
    """(trial budget, results) per budget of the searches; zero-shot results, which no budget changes, join
    every section once per (method, dataset, seed)."""
    budgets = trial_budgets(results)
    if len(budgets) <= 1:
        return [(budgets[0] if budgets else None, results)]
    trials = results["budget"].map(lambda b: b["trials"])
    zero_shot = results["method"].map(lambda m: is_zero_shot(results, m))
    shared = results[zero_shot].drop_duplicates(["method", "dataset", "seed"])
    return [(t, pd.concat([shared, results[~zero_shot & (trials == t)]], ignore_index=True)) for t in budgets]


def report_markdown(folder: Path, results: pd.DataFrame, sections: list[dict[str, Any]], plots: list[Path]) -> str:
    n_skipped = int(results["skipped"].notna().sum())
    shape = (f"{len(results)} results: {results['method'].nunique()} methods x "
             f"{results['dataset'].nunique()} datasets x {results['seed'].nunique()} seeds"
             + (f"; {n_skipped} of them not applicable" if n_skipped else ""))
    lines = ["# Benchmark report", "", f"Results below `{folder}` ({shape})."]
    several = len(sections) > 1
    for section in sections:
        if several:
            lines += ["", f"## Budget: {section['trials']} trials"]
        lines += ["", section["table"], "", section["comparisons"], "", f"{'###' if several else '##'} Targets", "",
                  *(f"- {line}" for line in section["targets"])]
    lines += ["", "## Plots", ""] + [f"![{plot.stem.replace('_', ' ')}]({plot.name})\n" for plot in plots]
    return "\n".join(lines)


def write_report(folder: str | Path, out: str | Path | None = None, mode: str | None = None) -> dict[str, Any]:
    """Write report.md and the plots into ``out`` (default: ``folder``); returns what was written."""
    results = load_results(folder, mode=mode)
    out_dir = Path(out) if out is not None else Path(folder)
    sections = [{"trials": trials, "table": results_table(part), "comparisons": comparisons_table(part),
                 "targets": targets(part)} for trials, part in budget_sections(results)]
    largest = budget_sections(results)[-1][1]
    plots = [plot_regret_vs_time(largest, out_dir / REGRET_PLOT_NAME),
             plot_accuracy_vs_time(largest, out_dir / ACCURACY_PLOT_NAME)]
    if len(sections) > 1:
        plots.append(plot_regret_vs_budget(results, out_dir / BUDGET_PLOT_NAME))
    markdown = out_dir / REPORT_NAME
    write_text_atomically(markdown, report_markdown(Path(folder), results, sections, plots))
    return {"markdown": markdown, "plots": plots, "sections": sections,
            "table": "\n\n".join(s["table"] for s in sections),
            "targets": [line for s in sections for line in s["targets"]]}


def main(argv: list[str] | None = None) -> int:
    """``python -m metallmix.bench.report``: print the table and targets, write the report; exit status."""
    parser = argparse.ArgumentParser(prog="python -m metallmix.bench.report",
                                     description="Report the results of a `python -m metallmix.bench -m ...` multirun.")
    parser.add_argument("folder", metavar="MULTIRUN_DIR", help=f"folder searched recursively for {RESULT_FILE}")
    parser.add_argument("--out", metavar="DIR", help="where to write report.md and the plots (default: MULTIRUN_DIR)")
    parser.add_argument("--mode", choices=MODES, help="report only the results of this mode")
    args = parser.parse_args(argv)
    try:
        written = write_report(args.folder, out=args.out, mode=args.mode)
    except MetallmixError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for section in written["sections"]:
        print(section["table"], "", section["comparisons"], "", *section["targets"], "", sep="\n")
    print(f"wrote {written['markdown']}", *(f"wrote {plot}" for plot in written["plots"]), sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
