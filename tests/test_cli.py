"""End-to-end tests of the ``metallmix`` command line on a small meta-dataset built here (test data)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_recommend import QUERY, make_test_meta_dataset

from metallmix.cli import _param_count, main
from metallmix.recommend import FORMAT_VERSION
from metallmix.schemas import validate

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "METALLMIX_CACHE_DIR": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "metallmix", *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=300
    )


@pytest.fixture(scope="module")
def meta_dataset_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("md") / "test_meta_dataset.parquet"
    make_test_meta_dataset(n_datasets=4).to_parquet(path, index=False)
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def test_recommend_json_end_to_end(meta_dataset_file: Path, cache: Path) -> None:
    result = run_cli(
        "recommend", "--meta-dataset", str(meta_dataset_file), "--meta-features", json.dumps(QUERY),
        "--budget-minutes", "30", "--backbones", "resnet18,mobilenet_v3_small", "--top-k", "3", "--json",
        cache=cache,
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    validate(doc)
    assert doc["meta_dataset"]["spec"] == str(meta_dataset_file) and doc["meta_dataset"]["n_datasets"] == 4
    assert len(doc["shortlist"]) == 3
    assert all(i["backbone"] in {"resnet18", "mobilenet_v3_small"} for i in doc["shortlist"])
    assert all(i["predicted"]["train_seconds"] <= 30 * 60 for i in doc["shortlist"])
    # the fitted recommender was cached under the meta-dataset's content hash
    cached = list((cache / "recommenders" / f"v{FORMAT_VERSION}").iterdir())
    assert len(cached) == 1 and (cached[0] / "manifest.json").is_file()
    assert cached[0].name == doc["meta_dataset"]["content_hash"]
    assert "fitting a recommender" in result.stderr


def test_bad_input_exits_2_with_one_line(meta_dataset_file: Path, cache: Path) -> None:
    result = run_cli(
        "recommend", "--meta-dataset", str(meta_dataset_file), "--meta-features", '{"colour": 3}', cache=cache
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("metallmix: error: unknown meta-feature 'colour'")
    assert "Traceback" not in result.stderr


def test_other_bad_input_in_process(meta_dataset_file: Path, cache: Path, capsys) -> None:
    assert main(["recommend", "--meta-dataset", "no/such/file.parquet", "--meta-features", "{}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("metallmix: error: meta-dataset 'no/such/file.parquet' not found") and err.count("\n") == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["recommend", "--meta-dataset", str(meta_dataset_file)])
    assert exit_info.value.code == 2
    assert "one of the arguments --dataset --meta-features is required" in capsys.readouterr().err
    assert main(["recommend", "--meta-features", "{}"]) == 2  # on the default meta-dataset, quicktune:builtin
    assert "no meta-feature given" in capsys.readouterr().err


def test_readable_report_and_errors_in_process(meta_dataset_file: Path, cache: Path, tmp_path, capsys) -> None:
    argv = ["recommend", "--meta-dataset", str(meta_dataset_file), "--meta-features", json.dumps(QUERY),
            "--cache-dir", str(cache), "--max-params", "12M", "--shap-summary", str(tmp_path / "shap.png")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("Recommendation for the given meta-features")
    assert "Shortlist:" in out and "SHAP evidence (accuracy points):" in out and "Nearest past datasets:" in out
    assert "max_params=12000000.0 (excludes 6)" in out
    assert (tmp_path / "shap.png").read_bytes()[:4] == b"\x89PNG"

    assert main(argv[:3] + ["--meta-features", json.dumps(QUERY), "--cache-dir", str(cache), "--budget-minutes", "0.001"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("metallmix: error: no candidate config meets all constraints") and "relax budget_minutes" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["recommend", "--meta-dataset", "x", "--meta-features", "{}", "--top-k", "0"])
    assert exit_info.value.code == 2


def test_model_dir_is_fitted_then_loaded(meta_dataset_file: Path, tmp_path, capsys) -> None:
    model = tmp_path / "model"
    argv = ["recommend", "--meta-dataset", str(meta_dataset_file), "--meta-features", json.dumps(QUERY), "--json"]
    assert main([*argv, "--model-dir", str(model)]) == 0
    first = json.loads(capsys.readouterr().out)
    assert (model / "manifest.json").is_file()
    assert main(["recommend", "--meta-features", json.dumps(QUERY), "--json", "--model-dir", str(model)]) == 0
    second = json.loads(capsys.readouterr().out)
    selection = first["meta_dataset"].pop("selection")
    assert selection["default"] is False and selection["reason"] == "named with --meta-dataset"
    assert second["meta_dataset"].pop("selection")["reason"] == f"the recommender saved in {model}"
    assert second == first
    other = tmp_path / "other.parquet"
    make_test_meta_dataset(n_datasets=3).to_parquet(other, index=False)
    assert main(["recommend", "--meta-dataset", str(other), "--meta-features", "{}", "--model-dir", str(model)]) == 2
    assert "fitted on another meta-dataset" in capsys.readouterr().err


def test_evaluate_end_to_end(meta_dataset_file: Path, cache: Path, tmp_path) -> None:
    out = tmp_path / "lodo.json"
    result = run_cli(
        "evaluate", "--meta-dataset", str(meta_dataset_file), "--protocol", "leave-one-dataset-out",
        "--datasets", "test_ds0,test_ds2", "--json", str(out), cache=cache,
    )
    assert result.returncode == 0, result.stderr
    assert "normalised regret" in result.stdout and "test_ds0" in result.stdout and "mean" in result.stdout
    saved = json.loads(out.read_text())
    assert [d["dataset"] for d in saved["datasets"]] == ["test_ds0", "test_ds2"]
    assert saved["methods"][0] == "metalearner"


def test_evaluate_rejects_unknown_protocol(meta_dataset_file: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--meta-dataset", str(meta_dataset_file), "--protocol", "k-fold"])
    assert exit_info.value.code == 2 and "invalid choice: 'k-fold'" in capsys.readouterr().err


def test_param_count_argument() -> None:
    assert _param_count("25M") == 25e6
    assert _param_count("1.5k") == 1500.0
    assert _param_count("3e7") == 3e7


def test_unreadable_cache_is_refitted(meta_dataset_file: Path, tmp_path, capsys) -> None:
    argv = ["recommend", "--meta-dataset", str(meta_dataset_file), "--meta-features", json.dumps(QUERY),
            "--json", "--cache-dir", str(tmp_path)]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    (manifest,) = (tmp_path / "recommenders" / f"v{FORMAT_VERSION}").glob("*/manifest.json")
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format_version": 999}))
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "unreadable" in captured.err and "refitting" in captured.err
    assert json.loads(captured.out) == first
