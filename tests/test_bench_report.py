"""Tests of metallmix.bench.report on hand-made result files (test data, not benchmark output)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from metallmix.bench.report import (
    budget_sections,
    cell_means,
    comparison_pairs,
    comparisons_table,
    incumbent_regret,
    load_results,
    main,
    paired_comparison,
    results_table,
    targets,
    write_report,
)
from metallmix.errors import DataError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REFERENCE_BEST, REFERENCE_WORST = 0.90, 0.50

# (method, dataset) -> accuracy per seed (0, 1); mean accuracies and regrets are worked out in the tests.
REPLAY_ACCURACIES = {
    ("zeroshot", "alpha"): (0.86, 0.84), ("zeroshot", "beta"): (0.83, 0.83),
    ("random", "alpha"): (0.82, 0.78), ("random", "beta"): (0.85, 0.83),
    ("tpe", "alpha"): (0.85, 0.85), ("tpe", "beta"): (0.84, 0.84),
    ("hybrid", "alpha"): (0.88, 0.88), ("hybrid", "beta"): (0.83, 0.83),
}
# method -> (training seconds per seed, recommendation seconds, trials)
REPLAY_COSTS = {
    "zeroshot": ((60.0, 60.0), 0.3, 0),
    "random": ((1100.0, 1300.0), 0.05, 20),
    "tpe": ((1500.0, 1500.0), 0.05, 20),
    "hybrid": ((600.0, 600.0), 0.3, 10),
}


def make_result(method: str, dataset: str, seed: int, accuracy: float, *, mode: str = "replay",
                training_seconds: float = 600.0, recommendation_seconds: float = 0.3, n_trials: int = 10,
                trial_accuracies: list[float] | None = None, normalized_regret: float | None = None) -> dict[str, Any]:
    """A hand-made result file standing in for `python -m metallmix.bench` output, used only to test the report.

    Zero-shot methods (n_trials=0) get one training run of their pick as the single trajectory point.
    Other methods get ``trial_accuracies`` (by default a few trials ending at ``accuracy``) spread
    evenly over ``training_seconds``, and a trajectory of the incumbent's improvements.
    """
    if n_trials == 0:
        trial_accuracies = []
        trajectory = [{"time_seconds": training_seconds, "accuracy": accuracy}]
    else:
        if trial_accuracies is None:
            trial_accuracies = [accuracy - 0.1, accuracy - 0.05, accuracy]
        trajectory = improvement_trajectory(trial_accuracies, training_seconds / len(trial_accuracies))
    trials = [{"config_id": f"cfg-{i}", "accuracy": a, "epochs": 5, "seconds": training_seconds / len(trial_accuracies)}
              for i, a in enumerate(trial_accuracies)]
    replay = mode == "replay"
    if replay and normalized_regret is None:
        normalized_regret = (REFERENCE_BEST - accuracy) / (REFERENCE_BEST - REFERENCE_WORST)
    return {
        "format_version": 1, "mode": mode, "method": method, "dataset": dataset, "seed": seed,
        "meta_dataset": "quicktune:builtin",
        "budget": {"trials": None if n_trials == 0 else 20, "time_s": None},
        "accuracy": accuracy, "best_config": {"backbone": "resnet18", "lr": 1e-3},
        "normalized_regret": normalized_regret,
        "reference": {"best_accuracy": REFERENCE_BEST if replay else None,
                      "worst_accuracy": REFERENCE_WORST if replay else None},
        "recommendation_seconds": recommendation_seconds, "training_seconds": training_seconds,
        "time_to_within_1pct_seconds": trajectory[-1]["time_seconds"], "n_trials": n_trials,
        "trajectory": trajectory, "trials": trials, "wall_seconds": recommendation_seconds + 5.0,
        "fit_seconds": 2.5 if n_trials == 0 else None,
    }


def improvement_trajectory(trial_accuracies: list[float], seconds_per_trial: float) -> list[dict[str, float]]:
    trajectory: list[dict[str, float]] = []
    for number, accuracy in enumerate(trial_accuracies, start=1):
        if not trajectory or accuracy > trajectory[-1]["accuracy"]:
            trajectory.append({"time_seconds": number * seconds_per_trial, "accuracy": accuracy})
    return trajectory


def write_results(root: Path, results: list[dict[str, Any]]) -> Path:
    """Lay the results out like a Hydra multirun: one numbered job folder per result."""
    for job, result in enumerate(results):
        write_json(root / "2026-11-29" / "08-00-00" / str(job) / "bench_result.json", result)
    return root


def write_json(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def replay_results(zeroshot_seconds: float = 60.0) -> list[dict[str, Any]]:
    results = []
    for (method, dataset), accuracies in REPLAY_ACCURACIES.items():
        seconds, response, n_trials = REPLAY_COSTS[method]
        if method == "zeroshot":
            seconds = (zeroshot_seconds, zeroshot_seconds)
        results += [make_result(method, dataset, seed, accuracy, training_seconds=seconds[seed],
                                recommendation_seconds=response, n_trials=n_trials)
                    for seed, accuracy in enumerate(accuracies)]
    return results


@pytest.fixture
def replay_folder(tmp_path: Path) -> Path:
    return write_results(tmp_path / "multirun", replay_results())


def table_rows(table: str) -> dict[str, list[str]]:
    """The Markdown table as {first cell: other cells}, the header under the key 'dataset'."""
    rows = [line.strip("|").split("|") for line in table.splitlines() if line.startswith("|")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]]
            for cells in rows if not cells[0].strip().startswith("---")}


def numbers_after(label: str, text: str) -> tuple[float, float]:
    match = re.search(rf"{label} ([\d.]+) vs ([\d.]+)", text)
    assert match, f"no '{label} X vs Y' in {text!r}"
    return float(match.group(1)), float(match.group(2))


# --- loading and regret --------------------------------------------------------------------------


def test_load_results_one_row_per_file_with_nested_fields(replay_folder: Path) -> None:
    df = load_results(replay_folder)
    assert len(df) == 16
    assert df["path"].str.endswith("bench_result.json").all()
    assert isinstance(df["trajectory"].iloc[0], list)
    zs = df[(df["method"] == "zeroshot") & (df["dataset"] == "alpha") & (df["seed"] == 1)].iloc[0]
    assert zs["normalized_regret"] == pytest.approx(0.15)
    assert zs["regret_best"] == REFERENCE_BEST and zs["regret_worst"] == REFERENCE_WORST


def test_train_mode_regret_computed_from_the_pool(tmp_path: Path) -> None:
    results = [
        make_result("random", "alpha", 0, 0.75, mode="train", trial_accuracies=[0.60, 0.75, 0.70]),
        make_result("zeroshot", "alpha", 0, 0.72, mode="train", n_trials=0),
        make_result("hybrid", "alpha", 0, 0.80, mode="train", trial_accuracies=[0.80, 0.65]),
        make_result("tpe", "alpha", 0, 0.70, mode="train", trial_accuracies=[0.70], normalized_regret=0.123),
        make_result("zeroshot", "beta", 0, 0.70, mode="train", n_trials=0),
    ]
    df = load_results(write_results(tmp_path, results)).set_index(["method", "dataset"])
    # alpha's pool: best 0.80 (hybrid), worst 0.60 (a random trial)
    assert df.loc[("zeroshot", "alpha"), "normalized_regret"] == pytest.approx((0.80 - 0.72) / 0.20)
    assert df.loc[("random", "alpha"), "normalized_regret"] == pytest.approx(0.25)
    assert df.loc[("hybrid", "alpha"), "normalized_regret"] == pytest.approx(0.0)
    assert df.loc[("tpe", "alpha"), "normalized_regret"] == pytest.approx(0.123)  # its own value is kept
    assert df.loc[("zeroshot", "beta"), "normalized_regret"] == 0.0  # pool best == worst
    assert df.loc[("random", "alpha"), "regret_worst"] == pytest.approx(0.60)


def test_train_mode_time_to_a_trained_model_includes_the_searchs_overhead(tmp_path: Path) -> None:
    """In train mode a search's response (its wall time in Tune) holds its training and Tune's overhead: the
    user holds its model then; a zero-shot pick is trained after its answer."""
    results = [make_result("random", "alpha", 0, 0.75, mode="train", training_seconds=13.0, recommendation_seconds=19.0),
               make_result("zeroshot", "alpha", 0, 0.72, mode="train", n_trials=0, training_seconds=4.0,
                           recommendation_seconds=0.5)]
    df = load_results(write_results(tmp_path, results)).set_index("method")
    assert df.loc["random", "model_time"] == pytest.approx(19.0)
    assert df.loc["zeroshot", "model_time"] == pytest.approx(4.5)


def test_incumbent_regret_is_worst_before_the_first_point_then_steps_down() -> None:
    row = pd.Series({"trajectory": [{"time_seconds": 10.0, "accuracy": 0.7}, {"time_seconds": 100.0, "accuracy": 0.9}],
                     "training_seconds": 100.0, "accuracy": 0.9, "regret_best": 0.9, "regret_worst": 0.5})
    grid = np.array([0.0, 5.0, 10.0, 50.0, 100.0, 1000.0])
    assert incumbent_regret(row, grid).tolist() == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.0, 0.0])


# --- table ---------------------------------------------------------------------------------------


def test_table_has_datasets_as_rows_and_methods_in_the_papers_order(replay_folder: Path) -> None:
    table = results_table(load_results(replay_folder))
    rows = table_rows(table)
    assert rows["dataset"] == ["zeroshot", "hybrid", "random", "tpe"]
    assert list(rows)[1:3] == ["alpha", "beta"]
    assert list(rows)[3:] == ["mean normalised regret", "mean training time", "mean response time",
                              "mean time to a trained model",
                              "mean training time to within 1 point of the final accuracy", "n trials (mean)"]
    legend = table.splitlines()[0]
    assert "Mode: replay" in legend and "budget: 20 trials;" in legend and "seeds 0, 1" in legend


def test_other_methods_come_after_the_papers_alphabetically(tmp_path: Path) -> None:
    methods = ["grid", "bohb", "random", "zeroshot_llm", "asha", "bayes", "tpe", "hybrid", "zeroshot"]
    results = [make_result(m, "alpha", 0, 0.8, n_trials=0 if m.startswith("zeroshot") else 10) for m in methods]
    rows = table_rows(results_table(load_results(write_results(tmp_path, results))))
    assert rows["dataset"] == ["zeroshot", "zeroshot_llm", "hybrid", "random", "tpe", "asha", "bohb", "bayes", "grid"]


def test_cells_are_means_over_seeds_and_nothing_claims_a_win(replay_folder: Path) -> None:
    table = results_table(load_results(replay_folder))
    rows = table_rows(table)
    zeroshot, hybrid, random, tpe = rows["alpha"]
    assert zeroshot == "85.0 · 60 s · 0.3 s"
    assert random == "80.0 · 20 min · 0.05 s"  # (0.82 + 0.78) / 2; (1100 s + 1300 s) / 2
    assert hybrid == "88.0 · 10 min · 0.3 s"
    assert "**" not in table and "won" not in table  # 2 seeds decide nothing: paired statistics instead
    assert [cell.split(" · ")[0] for cell in rows["beta"]] == ["83.0", "83.0", "84.0", "84.0"]
    assert [float(r) for r in rows["mean normalised regret"]] == pytest.approx([0.15, 0.1125, 0.2, 0.1375], abs=1e-3)
    assert rows["n trials (mean)"] == ["0.0", "10.0", "20.0", "20.0"]
    # time to a trained model: the zero-shot response plus its pick's training; a search's whole training
    assert rows["mean time to a trained model"] == ["60 s", "10 min", "20 min", "25 min"]


def test_paired_comparisons_give_the_mean_difference_its_interval_and_p(replay_folder: Path) -> None:
    results = load_results(replay_folder)
    assert comparison_pairs(results) == [("zeroshot", "random"), ("zeroshot", "tpe"), ("zeroshot", "hybrid"),
                                         ("hybrid", "random"), ("hybrid", "tpe")]
    c = paired_comparison(cell_means(results), "zeroshot", "random")
    # per dataset: alpha 0.125 - 0.25 = -0.125, beta 0.175 - 0.15 = +0.025
    assert c["n_datasets"] == 2 and c["difference"] == pytest.approx(-0.05)
    assert (c["better"], c["ties"], c["worse"]) == (1, 0, 1)
    assert -0.125 - 1e-12 <= c["ci_low"] <= c["difference"] <= c["ci_high"] <= 0.025 + 1e-12
    assert c["p_value"] == pytest.approx(wilcoxon([-0.125, 0.025], zero_method="zsplit").pvalue)
    line = next(line for line in comparisons_table(results).splitlines() if line.startswith("| zeroshot | random |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2:4] == ["2", "0.150 vs 0.200"] and cells[4].startswith("-0.050 [") and cells[6] == "1 / 0 / 1"


# --- targets -------------------------------------------------------------------------------------


def test_targets_pass_with_their_numbers(replay_folder: Path) -> None:
    zero_shot, hybrid = targets(load_results(replay_folder))
    assert zero_shot.startswith("PASS")
    assert numbers_after("regret", zero_shot) == pytest.approx((0.15, 0.2), abs=1e-3)
    assert "60 s vs 1/10 of 20 min = 2.0 min" in zero_shot and "20 trials" in zero_shot
    assert hybrid.startswith("PASS")
    assert numbers_after("vs random:", hybrid) == pytest.approx((0.1125, 0.2), abs=1e-3)
    assert numbers_after("vs tpe:", hybrid) == pytest.approx((0.1125, 0.1375), abs=1e-3)


def test_targets_fail_with_their_numbers(tmp_path: Path) -> None:
    asha = [make_result("asha", dataset, seed, accuracy, n_trials=20)
            for dataset, accuracy in (("alpha", 0.89), ("beta", 0.88)) for seed in (0, 1)]
    folder = write_results(tmp_path, replay_results(zeroshot_seconds=200.0) + asha)
    zero_shot, hybrid = targets(load_results(folder))
    assert zero_shot.startswith("FAIL")
    assert "3.3 min vs 1/10 of 20 min = 2.0 min (not met)" in zero_shot
    assert hybrid.startswith("FAIL")
    assert numbers_after("vs asha:", hybrid) == pytest.approx((0.1125, 0.0375), abs=1e-3)
    assert re.search(r"vs asha:[^;]*\(not met\)", hybrid) and re.search(r"vs tpe:[^;]*\(ok\)", hybrid)


def test_train_mode_target_sums_the_jobs_wall_time(tmp_path: Path) -> None:
    quick = [make_result("random", "alpha", seed, 0.7, mode="train", recommendation_seconds=55.0) for seed in (0, 1)]
    lines = targets(load_results(write_results(tmp_path / "quick", quick)))
    assert len(lines) == 3 and lines[2].startswith("PASS") and "2 jobs took 2.0 min" in lines[2]
    slow = [make_result("random", "alpha", seed, 0.7, mode="train", recommendation_seconds=1000.0) for seed in (0, 1)]
    assert targets(load_results(write_results(tmp_path / "slow", slow)))[2].startswith("FAIL")


def test_targets_not_applicable_without_the_methods(tmp_path: Path) -> None:
    folder = write_results(tmp_path, [make_result("tpe", "alpha", 0, 0.8)])
    assert all(line.startswith("n/a") for line in targets(load_results(folder)))


# --- report files and command line ---------------------------------------------------------------


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5000, path


def test_write_report_writes_markdown_and_plots(replay_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    written = write_report(replay_folder, out=out)
    assert [Path(p).name for p in written["plots"]] == ["regret_vs_time.png", "accuracy_vs_training_time.png"]
    for plot in written["plots"]:
        assert Path(plot).parent == out
        assert_png(Path(plot))
    markdown = Path(written["markdown"]).read_text()
    assert markdown.startswith("# ") and written["table"] in markdown
    assert all(line in markdown for line in written["targets"])
    assert "(regret_vs_time.png)" in markdown and "(accuracy_vs_training_time.png)" in markdown
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_write_report_defaults_to_the_results_folder(replay_folder: Path) -> None:
    written = write_report(replay_folder)
    assert Path(written["markdown"]) == replay_folder / "report.md"
    assert_png(replay_folder / "regret_vs_time.png")


def test_main_prints_table_targets_and_paths(replay_folder: Path, tmp_path: Path, capsys) -> None:
    assert main([str(replay_folder), "--out", str(tmp_path / "out")]) == 0
    stdout = capsys.readouterr().out
    assert "| dataset | zeroshot | hybrid | random | tpe |" in stdout
    assert re.search(r"^PASS zeroshot vs random", stdout, re.M)
    assert f"wrote {tmp_path / 'out' / 'report.md'}" in stdout


def test_main_reports_errors_with_exit_2(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path / "missing")]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and "does not exist" in captured.err and captured.out == ""


def test_main_mode_filters_a_mixed_folder(tmp_path: Path, capsys) -> None:
    results = [make_result("tpe", "alpha", 0, 0.8), make_result("random", "alpha", 0, 0.7, mode="train")]
    folder = write_results(tmp_path / "runs", results)
    assert main([str(folder), "--mode", "train", "--out", str(tmp_path / "out")]) == 0
    stdout = capsys.readouterr().out
    assert "| dataset | random |" in stdout and "Mode: train" in stdout


# --- errors --------------------------------------------------------------------------------------


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_results(tmp_path / "nowhere")


def test_folder_without_results(tmp_path: Path) -> None:
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "other.json").write_text("{}")
    with pytest.raises(DataError, match=r"no bench_result\.json .*python -m metallmix\.bench -m"):
        load_results(tmp_path)


def test_bad_json_names_the_file(tmp_path: Path) -> None:
    write_results(tmp_path, [make_result("tpe", "alpha", 0, 0.8)])
    bad = tmp_path / "2026-11-29" / "08-00-00" / "7" / "bench_result.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"format_version": 1,')
    with pytest.raises(DataError, match="not valid JSON") as error:
        load_results(tmp_path)
    assert str(bad) in str(error.value)


def test_missing_key_names_the_file_and_the_key(tmp_path: Path) -> None:
    result = make_result("tpe", "alpha", 0, 0.8)
    del result["training_seconds"]
    write_results(tmp_path, [result])
    with pytest.raises(DataError, match=r"bench_result\.json lacks the key\(s\) training_seconds"):
        load_results(tmp_path)


def test_missing_nested_key_is_named(tmp_path: Path) -> None:
    result = make_result("tpe", "alpha", 0, 0.8)
    del result["reference"]["worst_accuracy"]
    write_results(tmp_path, [result])
    with pytest.raises(DataError, match=r"reference\.worst_accuracy"):
        load_results(tmp_path)


def test_wrong_format_version(tmp_path: Path) -> None:
    write_results(tmp_path, [{**make_result("tpe", "alpha", 0, 0.8), "format_version": 2}])
    with pytest.raises(DataError, match="format_version 2"):
        load_results(tmp_path)


def test_mixed_modes_ask_for_one_mode_at_a_time(tmp_path: Path) -> None:
    results = [make_result("tpe", "alpha", 0, 0.8), make_result("random", "alpha", 0, 0.7, mode="train")]
    write_results(tmp_path, results)
    with pytest.raises(DataError, match="one mode at a time"):
        load_results(tmp_path)
    assert load_results(tmp_path, mode="replay")["method"].tolist() == ["tpe"]
    with pytest.raises(DataError, match="no results of mode"):
        load_results(write_results(tmp_path / "replay_only", [make_result("tpe", "alpha", 0, 0.8)]), mode="train")


# --- a knowledge base without training times or learning curves ----------------------------------

FLOP_PER_SECOND = 1e12  # turns the hand-made seconds into hand-made compute estimates


def estimated(result: dict[str, Any]) -> dict[str, Any]:
    """A hand-made result as replay writes it on a knowledge base without training times: the costs in
    the estimate's fields, the seconds fields null (a search's response time too)."""
    flops = {"training_compute_flops_estimate": result["training_seconds"] * FLOP_PER_SECOND,
             "compute_to_within_1pct_flops_estimate": result["time_to_within_1pct_seconds"] * FLOP_PER_SECOND}
    return {
        **result, **flops, "training_seconds": None, "time_to_within_1pct_seconds": None,
        "recommendation_seconds": result["recommendation_seconds"] if result["n_trials"] == 0 else None,
        "trajectory": [{"compute_flops_estimate": p["time_seconds"] * FLOP_PER_SECOND, "accuracy": p["accuracy"]}
                       for p in result["trajectory"]],
        "trials": [{"config_id": t["config_id"], "accuracy": t["accuracy"], "epochs": 1,
                    "compute_flops_estimate": t["seconds"] * FLOP_PER_SECOND} for t in result["trials"]],
    }


def skipped(method: str, dataset: str) -> dict[str, Any]:
    """A hand-made result of a method that did not apply."""
    return {**make_result(method, dataset, 0, 0.0), "skipped": "no learning curves in kb: ASHA and BOHB need them",
            "accuracy": None, "normalized_regret": None, "training_seconds": None, "time_to_within_1pct_seconds": None,
            "recommendation_seconds": None, "n_trials": 0, "trajectory": [], "trials": [],
            "training_compute_flops_estimate": None, "compute_to_within_1pct_flops_estimate": None}


@pytest.fixture
def estimated_folder(tmp_path: Path) -> Path:
    results = [estimated(r) for r in replay_results()]
    results += [skipped(method, dataset) for method in ("asha", "bohb") for dataset in ("alpha", "beta")]
    return write_results(tmp_path / "multirun", results)


def test_estimated_compute_is_labelled_and_never_a_duration(estimated_folder: Path) -> None:
    results = load_results(estimated_folder)
    rows = table_rows(results_table(results))
    zeroshot, hybrid, random = rows["alpha"][:3]
    assert zeroshot == "85.0 · 0.06 PFLOP (est.) · 0.3 s"  # 60 s x 1e12 FLOP/s, the pick's response time
    assert random == "80.0 · 1.2 PFLOP (est.) · –"  # a search's response time is unknown without times
    assert hybrid.startswith("88.0 · ")
    assert rows["mean training compute (est.)"][:4] == ["0.06 PFLOP (est.)", "0.6 PFLOP (est.)", "1.2 PFLOP (est.)",
                                                        "1.5 PFLOP (est.)"]
    assert "mean training time" not in rows
    assert "mean training compute (est.) to within 1 point of the final accuracy" in rows
    zero_shot = targets(results)[0]
    assert zero_shot.startswith("PASS zeroshot vs random: regret <= random's and training compute (est.) <= 1/10")
    assert "0.06 PFLOP (est.) vs 1/10 of 1.2 PFLOP (est.) = 0.12 PFLOP (est.) (ok)" in zero_shot
    assert not re.search(r"\d (s|min|h)\b", zero_shot)


def test_skipped_methods_show_as_not_applicable(estimated_folder: Path, tmp_path: Path) -> None:
    results = load_results(estimated_folder)
    table = results_table(results)
    rows = table_rows(table)
    assert rows["dataset"] == ["zeroshot", "hybrid", "random", "tpe", "asha", "bohb"]
    assert rows["alpha"][4:] == rows["beta"][4:] == ["n/a", "n/a"]
    for label in ("mean normalised regret", "mean training compute (est.)", "n trials (mean)"):
        assert rows[label][4:] == ["n/a", "n/a"], label
    assert "mean training compute (est.) to a trained model" not in rows  # the training compute is all of it
    assert rows["mean training compute (est.)"][:2] == ["0.06 PFLOP (est.)", "0.6 PFLOP (est.)"]
    assert "n/a: asha, bohb not applicable (no learning curves in kb: ASHA and BOHB need them)." in table
    hybrid_target = targets(results)[1]
    assert "vs random" in hybrid_target and "vs asha" not in hybrid_target
    written = write_report(estimated_folder, out=tmp_path / "report")
    for plot in written["plots"]:
        assert_png(Path(plot))
    markdown = Path(written["markdown"]).read_text()
    assert "20 results: 6 methods x 2 datasets x 2 seeds; 4 of them not applicable" in markdown


def test_seconds_and_estimates_do_not_share_a_report(tmp_path: Path) -> None:
    results = [make_result("tpe", "alpha", 0, 0.8), estimated(make_result("random", "alpha", 0, 0.7))]
    with pytest.raises(DataError, match=r"different units: .*report them apart"):
        load_results(write_results(tmp_path / "mixed", results))
    with pytest.raises(DataError, match="every result .* was skipped .*nothing to report"):
        load_results(write_results(tmp_path / "skipped", [skipped("asha", "alpha")]))


def test_a_folder_of_several_budgets_gets_a_section_each_and_a_budget_plot(tmp_path: Path) -> None:
    results = [make_result("zeroshot", d, s, 0.85, n_trials=0) for d in ("alpha", "beta") for s in (0, 1)]
    for trials, accuracy in ((10, 0.80), (30, 0.84)):
        results += [{**make_result("random", d, s, accuracy + 0.01 * s, n_trials=trials), "budget":
                     {"trials": trials, "time_s": None}} for d in ("alpha", "beta") for s in (0, 1)]
    folder = write_results(tmp_path / "multirun", results)
    sections = budget_sections(load_results(folder))
    assert [trials for trials, _ in sections] == [10, 30]
    assert all(sorted(part["method"].value_counts().items()) == [("random", 4), ("zeroshot", 4)] for _, part in sections)
    written = write_report(folder)
    text = written["markdown"].read_text()
    assert "## Budget: 10 trials" in text and "## Budget: 30 trials" in text and text.count("### Targets") == 2
    budget_plot = folder / "regret_vs_budget.png"
    assert budget_plot in written["plots"] and budget_plot.read_bytes().startswith(PNG_SIGNATURE)
    ten, thirty = (table_rows(s["table"])["mean normalised regret"] for s in written["sections"])
    assert ten[0] == thirty[0] == "0.125"  # zero-shot's results join every section once
    assert float(ten[1]) > float(thirty[1])
