"""The sweep: search-space expansion, a real Ray Tune sweep writing the meta-dataset, and resume."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from metallmix.errors import ConfigError, DataError
from metallmix.metadataset import MetaDatasetStore, load_meta_dataset
from metallmix.metadataset.schema import run_key
from metallmix.sweep import expand_space, prepare_datasets, run_sweep

REPO = Path(__file__).resolve().parent.parent

# Test data: a tiny generated dataset (labelled generated everywhere) and a tiny grid.
TINY_DATASET = {"kind": "generated", "n_classes": 2, "n_images": 160, "resolution": 16, "channels": 1,
                "imbalance": 1.0, "difficulty": 0.1, "seed": 3}
TINY_FIXED = {"weights": "none", "strategy": "full", "optimizer": "adam", "epochs": 2, "batch_size": 32,
              "input_size": 16, "augmentation": "none"}


def test_expand_space_is_a_union_of_products():
    space = {"grid": [{"backbone": ["resnet18", "mobilenet_v3_small"], "lr": [0.1, 0.01]},
                      {"backbone": ["resnet18"], "lr": [0.1]}],  # duplicate of a point above
             "fixed": TINY_FIXED}
    configs = expand_space(space)
    assert len(configs) == 4
    assert {(c["backbone"], c["lr"]) for c in configs} == {
        ("resnet18", 0.1), ("resnet18", 0.01), ("mobilenet_v3_small", 0.1), ("mobilenet_v3_small", 0.01)}
    assert all(c["epochs"] == 2 for c in configs)


@pytest.mark.parametrize("space, message", [
    ({"grid": []}, "has no grid"),
    ({"grid": [{"backbone": ["resnet18"], "lr": []}], "fixed": TINY_FIXED}, "no valid point"),
    ({"grid": [{"backbone": ["resnet9000"]}], "fixed": TINY_FIXED}, "resnet9000"),
    ({"grid": [{"backbone": ["resnet18"], "learning_rate": [0.1]}], "fixed": TINY_FIXED}, "learning_rate"),
])
def test_bad_spaces_fail_before_any_trial(space, message):
    with pytest.raises(ConfigError, match=message):
        expand_space(space)


def test_bad_datasets_fail_before_any_trial():
    with pytest.raises(DataError, match="nosuchmnist"):
        prepare_datasets([{"kind": "medmnist", "name": "nosuchmnist"}])
    with pytest.raises(ConfigError, match="twice"):
        prepare_datasets([TINY_DATASET, TINY_DATASET])


def test_real_tune_sweep_records_every_trial_including_failures(tmp_path):
    cfg = {
        "space": {"name": "tiny", "fixed": TINY_FIXED,
                  "grid": [{"backbone": ["mobilenet_v3_small"], "lr": [0.003]},
                           # lr = 1e5 with plain SGD diverges: a real failed run, recorded as such
                           {"backbone": ["mobilenet_v3_small"], "lr": [1.0e5], "optimizer": ["sgd"]}]},
        "datasets": [TINY_DATASET],
        "seeds": [0],
        "store": str(tmp_path / "store"),
        "resources": {"cpu": 1, "gpu": 0},
        "ray": {"num_cpus": 2},
    }
    result = run_sweep(cfg)
    df = load_meta_dataset(result.store)
    assert len(df) == 2 and df["run_id"].is_unique
    ok = df[df["status"] == "ok"].iloc[0]
    failed = df[df["status"] == "failed"].iloc[0]
    assert ok["cfg_lr"] == 0.003 and 0.0 <= ok["accuracy"] <= 1.0 and ok["cost_seconds"] > 0
    assert ok["n_epochs"] == 2 and ok["dataset_kind"] == "generated"
    assert ok["mf_n_classes"] == 2 and ok["mf_n_images"] == 160
    assert failed["cfg_lr"] == 1.0e5 and "diverged" in failed["error"]
    assert (Path(result.store).parent / "manifest.json").exists()
    # Running it again records nothing new.
    again = run_sweep(cfg)
    assert again.n_skipped == 2 and again.n_recorded_now == 0
    assert len(load_meta_dataset(again.store)) == 2


def _sweep_command(conf_dir: Path, store: Path) -> list[str]:
    return [sys.executable, "-m", "metallmix.sweep", f"--config-dir={conf_dir}", "space=tiny_resume",
            "dataset=generated", *[f"dataset.{k}={v}" for k, v in TINY_DATASET.items() if k != "kind"],
            f"store={store}", "ray.num_cpus=2", f"hydra.run.dir={conf_dir / 'hydra'}"]


@pytest.mark.parametrize("how", ["sigkill", "sigint"])
def test_interrupted_sweep_resumes_without_duplicates_or_losses(tmp_path, how):
    conf_dir = tmp_path / "conf"
    (conf_dir / "space").mkdir(parents=True)
    lrs = [0.001, 0.002, 0.003, 0.004]
    space = {"name": "tiny_resume", "fixed": {**TINY_FIXED, "epochs": 3},
             "grid": [{"backbone": ["mobilenet_v3_small"], "lr": lrs}]}
    (conf_dir / "space" / "tiny_resume.yaml").write_text(yaml.safe_dump(space))
    store = tmp_path / "store"
    runs = MetaDatasetStore(store)
    proc = subprocess.Popen(_sweep_command(conf_dir, store), cwd=REPO, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not runs.run_ids() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    before = {p.name: p.read_bytes() for p in runs.runs_dir.glob("*.parquet")}
    if how == "sigkill":  # the driver and its local Ray die at once, as on a lost machine
        os.killpg(proc.pid, signal.SIGKILL)
    else:  # Ctrl-C
        os.kill(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert 0 < len(before) < len(lrs), f"the test needs the interruption mid-sweep; recorded {len(before)}:\n{out}"

    resumed = subprocess.run(_sweep_command(conf_dir, store), cwd=REPO, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    df = load_meta_dataset(store / "metadataset.parquet")
    assert len(df) == len(lrs) and df["run_id"].is_unique
    assert sorted(df["cfg_lr"]) == lrs
    assert (df["status"] == "ok").all(), "an interrupted run must be re-run, not recorded as failed"
    for name, content in before.items():  # rows recorded before the interruption are untouched
        assert (runs.runs_dir / name).read_bytes() == content
    assert "already recorded" in resumed.stdout


@pytest.mark.parametrize("name", ["default", "medium"])
def test_shipped_stores_keep_their_run_ids(name):
    """Resuming a shipped sweep needs the same run ids: its space must still expand to the configs it recorded."""
    df = load_meta_dataset(REPO / "sweeps" / name / "metadataset.parquet")
    configs = expand_space(yaml.safe_load((REPO / "conf" / "space" / f"{name}.yaml").read_text()))
    keys = {run_key(ds, config, seed) for ds in set(df["dataset_id"]) for config in configs for seed in set(df["seed"])}
    assert len(df) > 0 and set(df["run_id"]) <= keys
