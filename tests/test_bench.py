"""The benchmark: candidate space, the simulated Tune controller of replay mode (checked against a
real Tuner), a tiny replay multirun through Hydra with its report, and a tiny train-mode run."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metallmix.bench import FLOPS_ESTIMATE, SECONDS
from metallmix.bench.replay import RecordedOutcomes, SearchBudget, simulate_search
from metallmix.bench.report import load_results, results_table
from metallmix.bench.run import RESULT_FILE, run_benchmark
from metallmix.bench.search import bohb_min_points, build_search, startup_trials
from metallmix.bench.space import CandidateSpace
from metallmix.errors import ConfigError, DataError
from metallmix.metadataset import load_meta_dataset, row_meta_features
from metallmix.metadataset.schema import config_columns, row_config, without_family
from metallmix.metalearner import config_id
from metallmix.sweep import expand_space

REPO = Path(__file__).resolve().parent.parent
QUICKTUNE_DATASET = "MED_LF"  # real recorded runs (Quick-Tune), 50-epoch curves


@pytest.fixture(scope="module")
def quicktune():
    return load_meta_dataset("quicktune:builtin")


@pytest.fixture(scope="module")
def recorded(quicktune):
    held_out = quicktune[quicktune["dataset_id"] == QUICKTUNE_DATASET]
    space = CandidateSpace(held_out.set_index("run_id")[config_columns(held_out)])
    return RecordedOutcomes(held_out), space


# --------------------------------------------------------------------------------------------------
# the candidate space


def test_every_candidate_is_its_own_nearest_point(recorded):
    _, space = recorded
    for candidate in space.ids[:40]:
        assert space.nearest(space.point_of(candidate)) == candidate


def test_nearest_skips_tried_candidates_and_reports_exhaustion(recorded):
    _, space = recorded
    first = space.ids[0]
    point = space.point_of(first)
    second = space.nearest(point, exclude={first})
    assert second != first and second is not None
    assert space.nearest(point, exclude=set(space.ids)) is None


def test_backbone_outweighs_every_other_hyperparameter():
    frame = pd.DataFrame({"cfg_model": ["a", "b", "b"], "cfg_lr": [0.001, 0.1, 0.001], "cfg_opt": ["sgd", "adam", "adam"]},
                         index=["x", "y", "z"])
    space = CandidateSpace(frame)
    # "x" differs from the query in lr and opt, "y"/"z" differ in the backbone: "x" wins
    assert space.nearest({"model": "a", "lr": 0.1, "opt": "adam"}) == "x"
    assert space.nearest({"model": "b", "lr": 0.1}) == "y"
    domains = space.param_space()
    assert set(domains) == {"model", "lr", "opt"}


def test_constant_or_empty_spaces_are_refused():
    with pytest.raises(ConfigError, match="nothing to search"):
        CandidateSpace(pd.DataFrame({"cfg_lr": [0.1, 0.1]}, index=["a", "b"])).param_space()
    with pytest.raises(ConfigError, match="no candidate"):
        CandidateSpace(pd.DataFrame({"cfg_lr": []}))


# --------------------------------------------------------------------------------------------------
# the simulated controller


def _trials(outcome):
    return [(t.config_id, t.epochs) for t in outcome.trials]


def test_asha_stops_trials_early_and_bohb_pauses_within_the_trial_budget(recorded):
    outcomes, space = recorded
    budget = SearchBudget(trials=12)
    runs = {}
    for method in ("random", "asha", "bohb"):
        searcher, scheduler = build_search(method, space, seed=1, max_epochs=outcomes.max_epochs)
        runs[method] = simulate_search(searcher, scheduler, outcomes, budget)
        assert len(runs[method].trials) == 12
        assert len({t.config_id for t in runs[method].trials}) == 12  # every trial a new configuration
    full = outcomes.max_epochs
    assert all(t.epochs == outcomes.runs[t.config_id].n_epochs for t in runs["random"].trials)
    assert sum(t.epochs < full for t in runs["asha"].trials) >= 6  # ASHA cut most trials short
    assert runs["asha"].training_seconds < runs["random"].training_seconds
    # same seed, same sampler: ASHA met the same configurations as random search
    assert [t.config_id for t in runs["asha"].trials] == [t.config_id for t in runs["random"].trials]
    assert sum(t.epochs < full for t in runs["bohb"].trials) >= 6


def test_incumbent_and_trajectory_follow_the_recorded_values(recorded):
    outcomes, space = recorded
    searcher, scheduler = build_search("random", space, seed=0, max_epochs=outcomes.max_epochs)
    outcome = simulate_search(searcher, scheduler, outcomes, SearchBudget(trials=8))
    recorded_accuracy = {t.config_id: outcomes.runs[t.config_id].accuracy for t in outcome.trials}
    best_val = {t.config_id: max(outcomes.runs[t.config_id].val_accuracy) for t in outcome.trials}
    assert outcome.incumbent == max(best_val, key=best_val.get)
    assert outcome.accuracy == recorded_accuracy[outcome.incumbent]
    assert outcomes.unit is SECONDS
    assert math.isclose(outcome.training_seconds, sum(outcomes.runs[c].cost for c in recorded_accuracy))
    times = [p["time_seconds"] for p in outcome.trajectory]
    assert times == sorted(times) and outcome.trajectory[-1]["accuracy"] == outcome.accuracy


def test_time_budget_stops_the_search(recorded):
    outcomes, space = recorded
    limit = 3 * outcomes.median_cost()
    searcher, scheduler = build_search("tpe", space, seed=0, max_epochs=outcomes.max_epochs)
    outcome = simulate_search(searcher, scheduler, outcomes, SearchBudget(time_runs=3))
    assert outcome.training_seconds >= limit
    last_epoch = max(s for t in outcome.trials for s in outcomes.runs[t.config_id].epoch_costs)
    assert outcome.training_seconds < limit + last_epoch


def test_simulated_controller_matches_a_real_tuner(recorded):
    """The same searcher and scheduler driven by Ray Tune itself, with a trainable that reports the
    recorded curves (a lookup, standing in for training only in this test), meet the same
    configurations for the same number of epochs as replay mode's simulated controller."""
    import ray
    from ray import tune

    from metallmix.bench.train import EpochCollector

    outcomes, space = recorded
    curves = {cid: run.val_accuracy for cid, run in outcomes.runs.items()}

    def replay_trainable(config):
        for value in curves[config["candidate_id"]]:
            tune.report({"val_accuracy": value, "epoch_seconds": 1.0})

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        for method in ("asha", "tpe"):
            budget = SearchBudget(trials=6)
            searcher, scheduler = build_search(method, space, seed=3, first=[space.ids[5]], max_epochs=outcomes.max_epochs,
                                               budget_trials=budget.trials)
            simulated = simulate_search(searcher, scheduler, outcomes, budget)
            searcher, scheduler = build_search(method, space, seed=3, first=[space.ids[5]], max_epochs=outcomes.max_epochs,
                                               budget_trials=budget.trials)
            collector = EpochCollector()
            tune.Tuner(replay_trainable,
                       tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=6,
                                                   max_concurrent_trials=1),
                       run_config=tune.RunConfig(callbacks=[collector], verbose=0)).fit()
            assert _trials(collector.tracker.outcome()) == _trials(simulated), method
            assert simulated.trials[0].config_id == space.ids[5]
    finally:
        ray.shutdown()


# --------------------------------------------------------------------------------------------------
# searchers that model within the budget and learn the candidate that ran


@pytest.mark.parametrize("trials, expected", [(None, 10), (3, 2), (6, 2), (10, 3), (30, 10), (100, 10)])
def test_startup_trials_are_a_third_of_the_budget_between_2_and_10(trials, expected):
    assert startup_trials(trials) == expected
    assert bohb_min_points(trials) == max(4, expected)


def _origins(outcome):
    return [t.origin for t in outcome.trials]


@pytest.mark.parametrize("trials", [6, 10])
def test_tpe_models_within_small_budgets(recorded, trials):
    outcomes, space = recorded
    n = startup_trials(trials)
    for seed in (0, 1, 2):
        searcher, scheduler = build_search("tpe", space, seed=seed, max_epochs=outcomes.max_epochs, budget_trials=trials)
        outcome = simulate_search(searcher, scheduler, outcomes, SearchBudget(trials=trials))
        assert _origins(outcome) == ["startup"] * n + ["model"] * (trials - n)
        searcher, scheduler = build_search("hybrid", space, seed=seed, max_epochs=outcomes.max_epochs,
                                           budget_trials=trials, first=list(space.ids[:3]), first_origin="seed")
        outcome = simulate_search(searcher, scheduler, outcomes, SearchBudget(trials=trials))
        assert _origins(outcome) == ["seed"] * 3 + ["model"] * (trials - 3)  # the seeds are its startup trials
        assert [t.config_id for t in outcome.trials[:3]] == list(space.ids[:3])


def test_bohb_models_within_a_budget_of_10_trials(recorded):
    outcomes, space = recorded
    for seed in (0, 1, 2):
        searcher, scheduler = build_search("bohb", space, seed=seed, max_epochs=outcomes.max_epochs, budget_trials=10)
        origins = _origins(simulate_search(searcher, scheduler, outcomes, SearchBudget(trials=10)))
        assert origins.count("model") >= 2, origins
        first_model = origins.index("model")
        assert set(origins[:first_model]) == {"startup"} and "startup" not in origins[first_model:]
        assert first_model >= bohb_min_points(10)


def test_tpe_is_told_the_candidate_that_ran(recorded):
    """Optuna's study holds, for each trial, the proposal's own trial (failed: TPE learns nothing from it)
    and the candidate that ran, complete, with its parameters and final value; Optuna's own mark of a
    model-based proposal (relative sampling) is on exactly the trials recorded as origin "model"."""
    from optuna.trial import TrialState

    outcomes, space = recorded
    searcher, scheduler = build_search("tpe", space, seed=0, max_epochs=outcomes.max_epochs, budget_trials=10,
                                       first=[space.ids[7]])
    outcome = simulate_search(searcher, scheduler, outcomes, SearchBudget(trials=10))
    study = searcher.searcher._ot_study
    told = [t for t in study.trials if t.state == TrialState.COMPLETE]
    proposals = [t for t in study.trials if t.state == TrialState.FAIL]
    assert [t.params for t in told] == [space.point_of(r.config_id) for r in outcome.trials]
    assert [t.value for t in told] == [outcomes.runs[r.config_id].val_accuracy[-1] for r in outcome.trials]
    assert len(proposals) == 9 and outcome.trials[0].origin == "default"  # the default config was not proposed
    modelled = [any(k.startswith("tpe:relative_params") for k in t.system_attrs) for t in proposals]
    assert modelled == [origin == "model" for origin in _origins(outcome)[1:]]


def test_bohb_is_told_the_candidate_that_ran(recorded):
    """Every result BOHB's densities are fitted on is the vector of a candidate that ran, on a HyperBand
    budget; failed and truncated runs, which end before their next budget, are recorded too."""
    import ConfigSpace

    outcomes, space = recorded
    searcher, scheduler = build_search("bohb", space, seed=0, max_epochs=outcomes.max_epochs, budget_trials=10)
    outcome = simulate_search(searcher, scheduler, outcomes, SearchBudget(trials=10))
    generator = searcher.searcher.bohber
    ran = {tuple(ConfigSpace.Configuration(generator.configspace, space.point_of(t.config_id)).get_array())
           for t in outcome.trials}
    recorded_vectors = [tuple(v) for vectors in generator.configs.values() for v in vectors]
    assert set(recorded_vectors) <= ran
    assert len(recorded_vectors) >= len(outcome.trials)  # one result per trial at least, short runs included


def test_bohb_is_reproducible_and_leaves_numpy_global_random_state_alone(recorded):
    outcomes, space = recorded
    state = np.random.get_state()
    runs = []
    for _ in range(2):
        searcher, scheduler = build_search("bohb", space, seed=4, max_epochs=outcomes.max_epochs, budget_trials=10)
        runs.append(simulate_search(searcher, scheduler, outcomes, SearchBudget(trials=10)))
    assert _trials(runs[0]) == _trials(runs[1]) and _origins(runs[0]) == _origins(runs[1])
    after = np.random.get_state()
    assert after[0] == state[0] and (after[1] == state[1]).all() and after[2:] == state[2:]


@pytest.mark.parametrize("method", ["tpe", "bohb"])
def test_replay_of_30_trials_on_quicktune_is_model_based(method):
    result = run_benchmark({"mode": "replay", "method": method, "held_out": QUICKTUNE_DATASET,
                            "meta_dataset": "quicktune:builtin", "budget": {"trials": 30}})
    assert result["n_trials"] == 30 and result["model_based_trials"] > 0
    assert result["model_based_trials"] == sum(t["origin"] == "model" for t in result["trials"])
    assert {t["origin"] for t in result["trials"]} <= {"startup", "model", "random"}


# --------------------------------------------------------------------------------------------------
# a tiny replay multirun through Hydra, and its report

REPLAY_METHODS = ["zeroshot", "hybrid", "random", "tpe", "asha", "bohb"]


@pytest.fixture(scope="module")
def replay_multirun(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "multirun"
    command = [sys.executable, "-m", "metallmix.bench", "-m", "mode=replay", "meta_dataset=sweeps/medium",
               f"method={','.join(REPLAY_METHODS)}", "held_out=retinamnist,generated-c2-n600-r28-ch1-ib1-d0.2-s1",
               "seed=0", "budget.trials=4", "+learner.n_ensemble=2", f"hydra.sweep.dir={out}"]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_replay_multirun_writes_one_result_per_job(replay_multirun):
    files = sorted(replay_multirun.rglob(RESULT_FILE))
    assert len(files) == 12
    df = load_results(replay_multirun)
    assert sorted(df["method"].unique()) == sorted(REPLAY_METHODS)
    assert set(df.loc[df["method"] != "zeroshot", "n_trials"]) == {4}
    assert set(df.loc[df["method"] == "zeroshot", "n_trials"]) == {0}


def test_replay_results_are_the_recorded_outcomes(replay_multirun):
    meta = load_meta_dataset("sweeps/medium")
    df = load_results(replay_multirun)
    for row in df.itertuples():
        runs = meta[meta["dataset_id"] == row.dataset]
        best, worst = runs["accuracy"].max(), runs["accuracy"].min()
        assert row.reference == {"best_accuracy": best, "worst_accuracy": worst}
        assert 0.0 <= row.normalized_regret <= 1.0
        assert math.isclose(row.normalized_regret, (best - row.accuracy) / (best - worst))
        if row.method == "zeroshot":  # the pick's recorded run: its accuracy and cost
            picked = runs[runs["cfg_lr"].eq(row.best_config["lr"]) & runs["cfg_backbone"].eq(row.best_config["backbone"])
                          & runs["cfg_strategy"].eq(row.best_config["strategy"])]
            assert row.accuracy in set(picked["accuracy"])
            assert any(math.isclose(row.training_seconds, cost) for cost in picked["cost_seconds"])
        else:
            assert math.isclose(row.training_seconds, sum(t["seconds"] for t in row.trials))
            assert row.accuracy >= max(t["accuracy"] for t in row.trials) - 0.5  # reported within range
    # every trial says where its configuration came from; the plain baselines start from their own draw
    # (the default configuration first is the METHOD+default variants': test_default_variants_...)
    origins = {method: [t["origin"] for trials in df.loc[df["method"] == method, "trials"] for t in trials]
               for method in REPLAY_METHODS if method != "zeroshot"}
    assert set(origins["random"]) == set(origins["asha"]) == {"random"}
    assert set(origins["tpe"]) == {"startup", "model"} and set(origins["hybrid"]) <= {"seed", "model"}
    assert set(origins["bohb"]) <= {"startup", "model", "random"}
    assert (df["model_based_trials"] == [sum(t["origin"] == "model" for t in trials) for trials in df["trials"]]).all()


def test_replay_report_table_has_the_papers_shape(replay_multirun):
    df = load_results(replay_multirun)
    table = results_table(df)
    header = next(line for line in table.splitlines() if line.startswith("| dataset"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["dataset", *REPLAY_METHODS]
    for dataset in ("retinamnist", "generated-c2-n600-r28-ch1-ib1-d0.2-s1"):
        row = next(line for line in table.splitlines() if line.startswith(f"| {dataset} "))
        best = df[df["dataset"] == dataset]["accuracy"].max()
        assert f" {100 * best:.1f} " in row and "**" not in row  # no bold: differences are judged by the paired table
    regret_row = next(line for line in table.splitlines() if line.startswith("| mean normalised regret"))
    zeroshot_regret = df[df["method"] == "zeroshot"]["normalized_regret"].mean()
    assert f"{zeroshot_regret:.3f}" in regret_row.split("|")[2]
    proc = subprocess.run([sys.executable, "-m", "metallmix.bench.report", str(replay_multirun)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (replay_multirun / "report.md").is_file() and (replay_multirun / "regret_vs_time.png").is_file()


def test_the_held_out_dataset_and_its_derivatives_leave_the_training_data():
    meta = load_meta_dataset("sweeps/medium")
    kept = without_family(meta, "breastmnist")
    assert not kept["dataset_id"].str.startswith("breastmnist").any()
    assert kept["dataset_id"].str.startswith("retinamnist").any()


@pytest.mark.parametrize("change, error, message", [
    ({"method": "grid"}, ConfigError, "method='grid'"),
    ({"held_out": None}, ConfigError, "held_out=NAME"),
    ({"held_out": "NOPE"}, DataError, "no recorded runs"),
    ({"budget": {"trials": None}}, ConfigError, "set a budget"),
    ({"budget": {"trials": 0}}, ConfigError, "budget.trials must be > 0"),
    ({"budget": {"trails": 3}}, ConfigError, "unknown budget keys"),
    ({"method": "zeroshot_llm"}, ConfigError, "needs an engine"),
    ({"method": "tpe+default", "default_configs": {"default": {}}}, ConfigError,
     r"default_configs has none for it: add default_configs\.medium: \{\.\.\.\} \(conf/bench\.yaml\), or use method=tpe"),
])
def test_bad_benchmark_settings_say_what_to_fix(change, error, message):
    cfg = {"mode": "replay", "method": "random", "held_out": "retinamnist", "meta_dataset": "sweeps/medium",
           "budget": {"trials": 2}, "learner": {"n_ensemble": 1}, **change}
    with pytest.raises(error, match=message):
        run_benchmark(cfg)


def test_the_command_line_refuses_bad_settings_with_the_message_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "metallmix.bench", "mode=replay", "meta_dataset=sweeps/medium",
                           "method=random", "held_out=NOPE", f"hydra.run.dir={tmp_path}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "metallmix bench: error:" in proc.stderr and "no recorded runs" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "bench_result.json").exists()


# --------------------------------------------------------------------------------------------------
# train mode: real training through Ray Tune

TINY_DATASET = {"kind": "generated", "n_classes": 2, "n_images": 160, "resolution": 16, "channels": 1,
                "imbalance": 1.0, "difficulty": 0.1, "seed": 5}
TRAIN_METHODS = ["zeroshot", "nearest_dataset_k", "hybrid", "random+default", "tpe+default", "asha+default", "bohb+default"]
TINY_SPACE = {"name": "tiny", "grid": [{"backbone": ["resnet18"], "lr": [0.0003, 0.003, 0.03]},
                                       {"backbone": ["mobilenet_v3_small"], "lr": [0.003]}],
              "fixed": {"weights": "none", "strategy": "full", "optimizer": "adam", "epochs": 2, "batch_size": 32,
                        "input_size": 16, "augmentation": "none"}}


def test_train_mode_runs_every_method_with_real_training():
    import ray

    results = {}
    try:
        for method in TRAIN_METHODS:
            cfg = {"mode": "train", "method": method, "held_out": TINY_DATASET, "meta_dataset": "sweeps/default",
                   "seed": 0, "budget": {"trials": 2}, "space": TINY_SPACE, "learner": {"n_ensemble": 2},
                   "default_configs": {"tiny": {"backbone": "resnet18", "lr": 0.003}}, "hybrid": {"seed_points": 1},
                   "train": {"resources": {"cpu": 1}, "ray": {"num_cpus": 2}}}
            results[method] = run_benchmark(cfg)
    finally:
        ray.shutdown()
    for method, result in results.items():
        assert result["mode"] == "train" and result["dataset"].startswith("generated-c2-n160")
        assert 0.0 <= result["accuracy"] <= 1.0 and result["training_seconds"] > 0
        json.dumps(result)  # a JSON document
        if method == "zeroshot":
            assert result["n_trials"] == 0 and result["fit_seconds"] > 0
            assert result["recommendation_seconds"] < result["wall_seconds"]
        else:
            assert result["n_trials"] == 2 and len({t["config_id"] for t in result["trials"]}) == 2
            assert all(t["epochs"] >= 1 for t in result["trials"])
    default_id = config_id(next(c for c in expand_space(TINY_SPACE) if c["backbone"] == "resnet18" and c["lr"] == 0.003))
    for method in ("random+default", "tpe+default", "asha+default", "bohb+default"):  # the default config first
        assert results[method]["trials"][0]["config_id"] == default_id, method
        assert results[method]["trials"][0]["origin"] == "default", method
    assert [t["origin"] for t in results["hybrid"]["trials"]] == ["seed", "startup"]  # 2 trials: 2 startup (seed first)
    assert [t["origin"] for t in results["nearest_dataset_k"]["trials"]] == ["nearest_dataset"] * 2
    assert results["nearest_dataset_k"]["fit_seconds"] > 0
    # the hybrid's first trial is the zero-shot pick, trained with the same seed: same test accuracy
    assert results["hybrid"]["trials"][0]["accuracy"] == pytest.approx(results["zeroshot"]["accuracy"])
    assert np.isfinite([r["accuracy"] for r in results.values()]).all()


# --------------------------------------------------------------------------------------------------
# replay on a knowledge base without learning curves or training times (MedMNIST+)

MEDMNISTPLUS = "medmnistplus:builtin"
MEDMNISTPLUS_DATASETS = ["breastmnist", "retinamnist"]
MEDMNISTPLUS_METHODS = ["zeroshot", "portfolio", "random", "asha"]


@pytest.fixture(scope="module")
def medmnistplus():
    return load_meta_dataset(MEDMNISTPLUS).set_index("run_id")


@pytest.fixture(scope="module")
def medmnistplus_multirun(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_medmnistplus") / "multirun"
    command = [sys.executable, "-m", "metallmix.bench", "-m", "mode=replay", f"meta_dataset={MEDMNISTPLUS}",
               f"method={','.join(MEDMNISTPLUS_METHODS)}", f"held_out={','.join(MEDMNISTPLUS_DATASETS)}",
               "seed=0", "budget.trials=3", "+learner.n_ensemble=2", f"hydra.sweep.dir={out}"]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "skipped: no learning curves" in proc.stdout
    return out


def test_a_run_without_curve_or_times_replays_as_one_step_costing_its_estimate(medmnistplus):
    held_out = medmnistplus[medmnistplus["dataset_id"] == "breastmnist"].reset_index()
    outcomes = RecordedOutcomes(held_out)
    assert outcomes.unit is FLOPS_ESTIMATE and not outcomes.has_curves and outcomes.max_epochs == 1
    for row in held_out.itertuples():
        run = outcomes.runs[row.run_id]
        assert run.val_accuracy == [row.accuracy] and run.accuracy == row.accuracy
        assert run.cost == row.cost_flops_estimate and run.unit is FLOPS_ESTIMATE
    with pytest.raises(ConfigError, match=r"record no training time.*budget\.trials=N"):
        outcomes.time_limit(SearchBudget(time_runs=10))


@pytest.mark.parametrize("budget", [{"trials": None, "time_runs": 10}, {"trials": 5, "time_s": 3600}])
def test_a_time_budget_on_a_knowledge_base_without_times_says_to_count_trials(budget):
    cfg = {"mode": "replay", "method": "zeroshot", "held_out": "breastmnist", "meta_dataset": MEDMNISTPLUS,
           "budget": budget}
    with pytest.raises(ConfigError, match=r"no training time.*set budget\.trials=N"):
        run_benchmark(cfg)


def test_medmnistplus_replay_reports_the_recorded_accuracies_and_estimates(medmnistplus_multirun, medmnistplus):
    from metallmix.evaluate import portfolio_pick
    from metallmix.metadataset.medmnistplus import run_id

    docs = [json.loads(path.read_text()) for path in sorted(medmnistplus_multirun.rglob(RESULT_FILE))]
    assert sorted((d["method"], d["dataset"]) for d in docs) == sorted(
        (m, ds) for m in MEDMNISTPLUS_METHODS for ds in MEDMNISTPLUS_DATASETS)
    for doc in docs:
        runs = medmnistplus[medmnistplus["dataset_id"] == doc["dataset"]]
        assert doc["reference"] == {"best_accuracy": runs["accuracy"].max(), "worst_accuracy": runs["accuracy"].min()}
        # no field pretends to be seconds
        assert doc["training_seconds"] is None and doc["time_to_within_1pct_seconds"] is None
        if doc["method"] == "asha":
            assert doc["skipped"] == ("no learning curves in medmnistplus:builtin: ASHA and BOHB need per-epoch "
                                      "results to stop or pause a run")
            assert doc["accuracy"] is None and doc["n_trials"] == 0 and doc["trials"] == []
            continue
        assert "skipped" not in doc
        if doc["method"] in ("zeroshot", "portfolio"):
            picked = run_id(doc["dataset"], doc["best_config"])
            assert doc["n_trials"] == 0 and doc["accuracy"] == runs.loc[picked, "accuracy"]
            assert doc["training_compute_flops_estimate"] == runs.loc[picked, "cost_flops_estimate"]
            assert doc["trajectory"] == [{"compute_flops_estimate": runs.loc[picked, "cost_flops_estimate"],
                                          "accuracy": runs.loc[picked, "accuracy"]}]
            assert doc["recommendation_seconds"] < 5
        else:
            assert doc["n_trials"] == 3 and doc["recommendation_seconds"] is None
            for trial in doc["trials"]:  # one step each, at the recorded accuracy, costing the estimate
                assert trial["epochs"] == 1 and "seconds" not in trial
                assert trial["accuracy"] == runs.loc[trial["config_id"], "accuracy"]
                assert trial["compute_flops_estimate"] == runs.loc[trial["config_id"], "cost_flops_estimate"]
            assert math.isclose(doc["training_compute_flops_estimate"],
                                sum(t["compute_flops_estimate"] for t in doc["trials"]))
            assert doc["accuracy"] == max(t["accuracy"] for t in doc["trials"])
            assert doc["trials"][0]["origin"] == "random"  # random+default starts from the default: test_default_variants_...
        if doc["method"] == "portfolio":  # evaluate's portfolio, fitted without the held-out dataset
            train_df = without_family(medmnistplus.reset_index(), doc["dataset"])
            candidates = runs[config_columns(runs)]
            assert picked == portfolio_pick(train_df, {}, candidates)
            assert doc["fit_seconds"] is None


def test_medmnistplus_report_shows_estimates_and_asha_as_not_applicable(medmnistplus_multirun):
    df = load_results(medmnistplus_multirun)
    table = results_table(df)
    header = next(line for line in table.splitlines() if line.startswith("| dataset"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["dataset", "zeroshot", "portfolio", "random", "asha"]
    for dataset in MEDMNISTPLUS_DATASETS:
        cells = [c.strip() for c in next(line for line in table.splitlines()
                                         if line.startswith(f"| {dataset} ")).strip("|").split("|")]
        assert cells[-1] == "n/a"
        assert all("PFLOP (est.)" in cell for cell in cells[1:-1])
    regret_row = next(line for line in table.splitlines() if line.startswith("| mean normalised regret"))
    assert regret_row.rstrip(" |").endswith("n/a")
    assert "| mean training compute (est.) |" in table and "mean training time" not in table
    assert not re.search(r"\d h\b|\d min\b", table)  # compute estimates are never shown as durations
    assert ("n/a: asha not applicable (no learning curves in medmnistplus:builtin: ASHA and BOHB need "
            "per-epoch results to stop or pause a run).") in table
    proc = subprocess.run([sys.executable, "-m", "metallmix.bench.report", str(medmnistplus_multirun)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^(PASS|FAIL) zeroshot vs random: regret <= random's and training compute \(est\.\)",
                     proc.stdout, re.MULTILINE)
    report = (medmnistplus_multirun / "report.md").read_text()
    assert "2 of them not applicable" in report and (medmnistplus_multirun / "regret_vs_time.png").is_file()


# --------------------------------------------------------------------------------------------------
# zero-shot anchors and the default-first variants (replay on MedMNIST+, whose configs repeat across datasets)

ANCHOR_METHODS = ["nearest_dataset", "portfolio_k", "nearest_dataset_k", "random+default", "tpe+default"]


@pytest.fixture(scope="module")
def anchors_multirun(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_anchors") / "multirun"
    command = [sys.executable, "-m", "metallmix.bench", "-m", "mode=replay", f"meta_dataset={MEDMNISTPLUS}",
               f"method={','.join(ANCHOR_METHODS)}", "held_out=breastmnist", "seed=0", "budget.trials=4",
               f"hydra.sweep.dir={out}"]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {doc["method"]: doc for doc in (json.loads(p.read_text()) for p in out.rglob(RESULT_FILE))}


def test_default_variants_evaluate_the_default_configuration_first(anchors_multirun):
    for method in ("random+default", "tpe+default"):
        doc = anchors_multirun[method]
        assert doc["n_trials"] == 4 and doc["trials"][0]["config_id"] == "breastmnist:end_to_end:resnet18:224"
        assert doc["trials"][0]["origin"] == "default"
    assert [t["origin"] for t in anchors_multirun["random+default"]["trials"]] == ["default"] + ["random"] * 3
    # 4 trials: TPE models after 2 finished (the default among them)
    assert [t["origin"] for t in anchors_multirun["tpe+default"]["trials"]] == ["default", "startup", "model", "model"]
    assert anchors_multirun["tpe+default"]["model_based_trials"] == 2


def test_k_trial_anchors_try_their_ranked_lists_in_order(anchors_multirun, medmnistplus):
    from metallmix.evaluate import nearest_dataset_pick, portfolio_pick
    from metallmix.metalearner import portfolio_scores

    runs = medmnistplus[medmnistplus["dataset_id"] == "breastmnist"]
    candidates = runs[config_columns(runs)]
    train_df = without_family(medmnistplus.reset_index(), "breastmnist")
    by_config = {config_id(row_config(row)): run for run, row in zip(candidates.index, candidates.to_dict("records"))}
    portfolio = anchors_multirun["portfolio_k"]
    # the portfolio's 4 best configs, each recorded for breastmnist (its configs repeat across datasets)
    assert [t["config_id"] for t in portfolio["trials"]] == [by_config[i] for i in portfolio_scores(train_df)["candidate_id"][:4]]
    assert portfolio["trials"][0]["config_id"] == portfolio_pick(train_df, {}, candidates)
    assert [t["origin"] for t in portfolio["trials"]] == ["portfolio"] * 4 and portfolio["model_based_trials"] == 0
    assert portfolio["fit_seconds"] is None
    nearest = anchors_multirun["nearest_dataset_k"]
    meta_features = {k: v for k, v in row_meta_features(runs.iloc[0]).items() if v == v}
    pick = nearest_dataset_pick(train_df, meta_features, candidates)
    assert nearest["trials"][0]["config_id"] == pick  # the nearest dataset's best config first ...
    one = anchors_multirun["nearest_dataset"]
    assert one["n_trials"] == 0 and one["best_config"] == row_config(candidates.loc[pick]) and one["fit_seconds"] > 0
    # ... then the best config of each next-nearest dataset
    from metallmix.retrieval import RetrievalIndex

    neighbours = RetrievalIndex(n_top_configs=1).fit(train_df).query(meta_features, k=4)
    assert [t["config_id"] for t in nearest["trials"]] == [by_config[config_id(n["top_configs"][0]["config"])]
                                                          for n in neighbours]
    assert [t["origin"] for t in nearest["trials"]] == ["nearest_dataset"] * 4
    for doc in (portfolio, nearest):  # a list is a search: its accuracy is its best trial's
        assert doc["accuracy"] == max(t["accuracy"] for t in doc["trials"])
        assert doc["recommendation_seconds"] is None  # its training counts in estimated compute, not seconds


def test_ranked_configs_become_distinct_candidates():
    from metallmix.bench.run import ranked_candidates

    candidates = pd.DataFrame({"cfg_model": ["a", "a", "b"], "cfg_lr": [0.1, 0.01, 0.1]}, index=["x", "y", "z"])
    # an exact config is its own candidate; a config taken already, or absent, goes to the closest one left
    configs = [{"model": "a", "lr": 0.01}, {"model": "a", "lr": 0.01}, {"model": "c", "lr": 0.1}, {"model": "b", "lr": 1}]
    assert ranked_candidates(configs, candidates, 10) == ["y", "x", "z"]
    assert ranked_candidates(configs, candidates, 1) == ["y"]


def test_nearest_dataset_k_on_quicktune_starts_with_evaluates_pick(quicktune):
    from metallmix.evaluate import nearest_dataset_pick

    result = run_benchmark({"mode": "replay", "method": "nearest_dataset_k", "held_out": "APL",
                            "meta_dataset": "quicktune:builtin", "budget": {"trials": 3}})
    runs = quicktune[quicktune["dataset_id"] == "APL"].set_index("run_id")
    meta_features = {k: v for k, v in row_meta_features(runs.iloc[0]).items() if v == v}
    pick = nearest_dataset_pick(without_family(quicktune, "APL"), meta_features, runs[config_columns(runs)])
    assert result["trials"][0]["config_id"] == pick and len({t["config_id"] for t in result["trials"]}) == 3
    skipped = run_benchmark({"mode": "replay", "method": "portfolio_k", "held_out": "APL",
                             "meta_dataset": "quicktune:builtin", "budget": {"trials": 3}})
    assert "no config of the meta-dataset was run on two datasets" in skipped["skipped"]
    assert skipped["n_trials"] == skipped["model_based_trials"] == 0


def test_train_mode_candidates_of_a_translated_space_are_the_knowledge_base_configs():
    """Train mode on the MedMNIST+ space: the meta-learner scores configs in the knowledge base's own terms,
    each runs as its training config, and points above the dataset's image side are left out."""
    from omegaconf import OmegaConf

    from metallmix.bench.train import applicable_candidates
    from metallmix.metadataset.schema import row_config

    space = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "space" / "medmnistplus.yaml"))
    candidates, training = applicable_candidates(space, None, {"resolution": 28.0}, "breastmnist")
    assert len(candidates) == 30 and set(candidates["cfg_resolution"]) == {28}
    kb = load_meta_dataset("medmnistplus:builtin")
    breast = kb[kb["dataset_id"] == "breastmnist"]
    recorded = [row_config(row) for row in breast[[c for c in kb.columns if c.startswith("cfg_")]].to_dict("records")]
    assert all(row_config(candidates.loc[i]) in recorded for i in candidates.index)  # the imported rows' configs
    some = training[candidates.index[0]]
    assert some["backbone"] in ("alexnet",) or some["backbone"].startswith("timm/")
    assert some["input_size"] == 28 and some["pad_to"] == 224
    with pytest.raises(ConfigError, match="no config of space 'medmnistplus' runs on 'tiny'"):
        applicable_candidates(space, None, {"resolution": 16.0}, "tiny")


def test_a_train_job_pointed_at_no_cluster_says_so(tmp_path):
    """train.ray.address goes through metallmix.sweep.init_ray: nothing listening there is a clear error, at once."""
    proc = subprocess.run([sys.executable, "-m", "metallmix.bench", "mode=train", "meta_dataset=sweeps/medium",
                           "held_out=generated", "method=random", "budget.trials=1", "train.ray.address=127.0.0.1:9",
                           f"hydra.run.dir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "nothing answers at ray.address=127.0.0.1:9" in proc.stderr and "Traceback" not in proc.stderr
