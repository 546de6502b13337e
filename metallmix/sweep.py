"""The sweep: a Ray Tune grid over datasets x backbones x hyperparameters that records the meta-dataset.

Run it with ``python -m metallmix.sweep`` (a Hydra app, ``conf/sweep.yaml``). One trial is one real
training run (:func:`metallmix.training.train_run`, which knows nothing of Ray). Every trial, failed
ones included, becomes one row of the meta-dataset store, written by the driver the moment the trial
reports it; a run's key is a hash of dataset, config and seed, so an interrupted sweep (Ctrl-C, a
killed worker or driver) is resumed by running the same command again: recorded runs are skipped,
none is duplicated or lost.

A space may be written in another vocabulary than metallmix's training config -- an imported
benchmark's, so that the sweep extends that knowledge base with comparable rows: its ``translation``
names a module (:class:`SpaceTranslation`) that completes each point into the config its rows record,
turns that into the training config the trial runs, and says which points a dataset cannot take.
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import platform
import socket
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from metallmix.data import compute_meta_features, dataset_id, load_dataset
from metallmix.data.base import ImageDataset
from metallmix.errors import ConfigError, MetallmixError, WeightsUnavailableError
from metallmix.metadataset.schema import STATUS_FAILED, STATUS_OK, canonical_json, make_row, row_config, run_key
from metallmix.metadataset.store import MetaDatasetStore
from metallmix.training import check_weights_available, train_run, validate_config

REPO_ROOT = Path(__file__).resolve().parent.parent


def _plain(obj: Any) -> Any:
    """OmegaConf containers to plain Python; anything else unchanged."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover - hydra-core is a dependency
        pass
    return obj


# --------------------------------------------------------------------------------------------------
# search space


class SpaceTranslation(Protocol):
    """How the points of a space written in another vocabulary become rows and training runs.

    A module (or object) with these four functions, named by the space's ``translation:`` as a dotted
    import path, ``module`` or ``module:object`` (e.g. ``metallmix.metadataset.medmnistplus_space``).
    """

    def recorded_config(self, point: Mapping[str, Any]) -> dict[str, Any]:
        """The completed, normalised config a row records for a point (its cfg_ columns; its run id hashes it)."""

    def training_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The metallmix training config (:func:`metallmix.training.validate_config`) that runs it."""

    def skip_reason(self, config: Mapping[str, Any], meta_features: Mapping[str, float]) -> str | None:
        """Why the config is not run on a dataset with these meta-features; None when it is."""

    def row_meta_features(self, config: Mapping[str, Any], meta_features: Mapping[str, float]) -> dict[str, float]:
        """The meta-features its row records (the dataset's, or some set by the config)."""


class _TrainingConfigSpace:
    """The translation of a space written as training configs: a point is its own validated config."""

    @staticmethod
    def recorded_config(point: Mapping[str, Any]) -> dict[str, Any]:
        return validate_config(point)

    @staticmethod
    def training_config(config: Mapping[str, Any]) -> dict[str, Any]:
        return dict(config)

    @staticmethod
    def skip_reason(config: Mapping[str, Any], meta_features: Mapping[str, float]) -> str | None:
        return None

    @staticmethod
    def row_meta_features(config: Mapping[str, Any], meta_features: Mapping[str, float]) -> dict[str, float]:
        return dict(meta_features)


TRANSLATION_FUNCTIONS = ("recorded_config", "training_config", "skip_reason", "row_meta_features")


def space_translation(space: Mapping[str, Any]) -> SpaceTranslation:
    """The translation a space names in ``translation:``, or the identity one of training-config spaces."""
    path = _plain(space).get("translation")
    if not path:
        return _TrainingConfigSpace()
    module, _, attribute = str(path).partition(":")
    try:
        translation = importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"space.translation={path!r} cannot be imported ({exc}); give a module's dotted path, "
                          "e.g. metallmix.metadataset.medmnistplus_space") from exc
    if attribute:
        translation = getattr(translation, attribute, None)
    missing = [name for name in TRANSLATION_FUNCTIONS if not callable(getattr(translation, name, None))]
    if missing:
        raise ConfigError(f"space.translation={path!r} lacks {', '.join(missing)}; a translation provides "
                          f"{', '.join(TRANSLATION_FUNCTIONS)} (see metallmix.sweep.SpaceTranslation)")
    return translation


@dataclass(frozen=True)
class SpacePoint:
    """One point of a search space: the config its rows record and the training config its trials run."""

    config: dict[str, Any]
    training: dict[str, Any]


def expand_space_points(space: Mapping[str, Any]) -> list[SpacePoint]:
    """All valid points of a search space, in a stable order.

    A space is ``{"grid": [block, ...], "fixed": {...}}``: each block maps a hyperparameter to the
    list of its values and stands for their Cartesian product; the space is the union of its blocks
    (as scikit-learn's ParameterGrid), each point completed by ``fixed``. Every point is checked
    with :func:`metallmix.training.validate_config` (after its space's translation, if it names one);
    an invalid point is an error naming it. Nothing is built or loaded: no model, no weights.
    """
    space = _plain(space)
    translation = space_translation(space)
    blocks = space.get("grid")
    if isinstance(blocks, Mapping):
        blocks = [blocks]
    if not blocks:
        raise ConfigError(f"search space {space.get('name', '?')!r} has no grid; give space.grid as a list of blocks")
    fixed = dict(space.get("fixed") or {})
    points: list[SpacePoint] = []
    seen: set[str] = set()
    for i, block in enumerate(blocks):
        if not isinstance(block, Mapping) or not block:
            raise ConfigError(f"space.grid[{i}] must be a non-empty mapping of hyperparameter -> list of values")
        names = list(block)
        values = [v if isinstance(v, list) else [v] for v in block.values()]
        for name, vals in zip(names, values):
            if not vals:
                raise ConfigError(f"space.grid[{i}].{name} is an empty list: the space has no valid point")
        for combo in itertools.product(*values):
            point = {**fixed, **dict(zip(names, combo))}
            try:
                config = translation.recorded_config(point)
                training = validate_config(translation.training_config(config))
            except ConfigError as exc:
                raise ConfigError(f"space.grid[{i}] point {point} is invalid: {exc}") from exc
            key = canonical_json(config)
            if key not in seen:
                seen.add(key)
                points.append(SpacePoint(config, training))
    return points


def expand_space(space: Mapping[str, Any]) -> list[dict[str, Any]]:
    """All valid configs of a search space, as its rows record them, in a stable order.

    For a space of training configs these are the validated training configs; for a translated space,
    its points in their own vocabulary (:func:`expand_space_points` gives their training configs too).
    """
    return [point.config for point in expand_space_points(space)]


# --------------------------------------------------------------------------------------------------
# planning


@dataclass
class PreparedDataset:
    cfg: dict[str, Any]
    id: str
    dataset: ImageDataset
    meta_features: dict[str, float]


@dataclass
class TrialSpec:
    run_id: str
    dataset_id: str
    config: dict[str, Any]  # as the row records it
    seed: int
    training: dict[str, Any]  # the validated training config the trial runs
    meta_features: dict[str, float]  # as the row records them

    def as_tune_config(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "dataset_id": self.dataset_id, "config": self.config, "seed": self.seed,
                "training": self.training, "meta_features": self.meta_features}


@dataclass
class SweepPlan:
    datasets: dict[str, PreparedDataset]
    trials: list[TrialSpec]
    skipped: list[TrialSpec] = field(default_factory=list)  # already recorded
    left_out: Counter[str] = field(default_factory=Counter)  # runs the space's translation rules out, by reason


def prepare_datasets(dataset_cfgs: Sequence[Mapping[str, Any]]) -> dict[str, PreparedDataset]:
    """Load every dataset and compute its meta-features, so bad input fails before any trial."""
    prepared: dict[str, PreparedDataset] = {}
    for cfg in dataset_cfgs:
        cfg = dict(_plain(cfg))
        ds_id = dataset_id(cfg)
        if ds_id in prepared:
            raise ConfigError(f"dataset {ds_id!r} is listed twice in the sweep; remove one")
        ds = load_dataset(cfg)
        prepared[ds_id] = PreparedDataset(cfg, ds_id, ds, compute_meta_features(ds))
    if not prepared:
        raise ConfigError("the sweep has no datasets; set `datasets:` in conf/sweep.yaml or pass dataset=...")
    return prepared


def plan_sweep(
    datasets: dict[str, PreparedDataset],
    points: Sequence[SpacePoint],
    seeds: Sequence[int],
    done: set[str],
    translation: SpaceTranslation | None = None,
) -> SweepPlan:
    """Every dataset x point x seed as a trial to run, one already recorded (``done``), or one left out
    because the translation says the dataset cannot take the point."""
    translation = translation or _TrainingConfigSpace()
    trials, skipped, left_out = [], [], Counter()
    for (ds_id, prepared), point, seed in itertools.product(datasets.items(), points, seeds):
        reason = translation.skip_reason(point.config, prepared.meta_features)
        if reason is not None:
            left_out[reason] += 1
            continue
        meta_features = translation.row_meta_features(point.config, prepared.meta_features)
        spec = TrialSpec(run_key(ds_id, point.config, seed), ds_id, point.config, int(seed), point.training,
                         meta_features)
        (skipped if spec.run_id in done else trials).append(spec)
    return SweepPlan(datasets, trials, skipped, left_out)


# --------------------------------------------------------------------------------------------------
# provenance


def _git_sha() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5)
        if sha.returncode == 0:
            return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("metallmix", "torch", "torchvision", "ray", "numpy", "pandas", "pyarrow"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def driver_provenance() -> dict[str, Any]:
    return {"git_sha": _git_sha(), "driver_host": socket.gethostname(), "versions": library_versions(),
            "command": " ".join(sys.argv)}


def worker_hardware() -> dict[str, Any]:
    import torch

    hw = {"host": socket.gethostname(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
          "processor": platform.processor() or platform.machine()}
    if torch.cuda.is_available():
        hw["gpu"] = torch.cuda.get_device_name(0)
        hw["gpu_count"] = torch.cuda.device_count()
    return hw


def ray_node() -> dict[str, str]:
    """The Ray node this process runs on, as Ray names it: its node id (unique per node, several nodes on
    one machine included) and its IP address. Called inside a trial, it says which node ran the run."""
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address()}


# --------------------------------------------------------------------------------------------------
# the trial


def build_row(spec: Mapping[str, Any], prepared: PreparedDataset, space_name: str, provenance: dict,
              result: dict | None, error: str | None) -> dict[str, Any]:
    """One meta-dataset row from a finished (result) or failed (error) run.

    The row records the spec's config and meta-features; where the trial ran a translated training
    config, provenance keeps it too (and a finished run's metrics hold it as ``config``).
    """
    provenance = {**provenance, "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if spec["training"] != spec["config"]:
        provenance["training_config"] = spec["training"]
    common = dict(
        dataset_id=prepared.id,
        dataset_kind=prepared.dataset.kind,
        dataset_parent=prepared.dataset.parent,
        modality=prepared.dataset.modality,
        meta_features=spec["meta_features"],
        config=spec["config"],
        seed=spec["seed"],
        search_space=space_name,
        provenance=provenance,
        run_id=spec["run_id"],
    )
    if result is None:
        return make_row(**common, status=STATUS_FAILED, error=error, accuracy=None, cost_seconds=None,
                        n_epochs=0, curve=[], metrics={})
    metrics = {k: v for k, v in result.items() if k not in ("curve",)}
    diverged = bool(result.get("diverged"))
    return make_row(
        **common,
        status=STATUS_FAILED if diverged else STATUS_OK,
        error="training diverged (non-finite loss)" if diverged else None,
        accuracy=result["test_accuracy"],
        cost_seconds=result["train_seconds"],
        n_epochs=result["n_epochs"],
        curve=result.get("curve", []),
        metrics=metrics,
    )


def sweep_trial(tune_config: dict[str, dict[str, Any]], *, datasets: dict[str, PreparedDataset], space_name: str,
                provenance: dict[str, Any], allow_download: bool) -> None:
    """The Tune trainable: one real training run, reported per epoch, then its meta-dataset row."""
    from ray import tune

    spec = tune_config["trial"]
    prepared = datasets[spec["dataset_id"]]
    provenance = {**provenance, "hardware": worker_hardware(), "ray_node": ray_node()}
    num_threads = int(os.environ.get("OMP_NUM_THREADS") or 1)
    try:
        result = train_run(spec["training"], prepared.dataset, seed=spec["seed"],
                           num_threads=num_threads, allow_download=allow_download,
                           report=lambda epoch: tune.report(dict(epoch)))
        row = build_row(spec, prepared, space_name, provenance, result, None)
    except Exception as exc:  # noqa: BLE001 - a failed run is data: recorded, never dropped
        error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
        row = build_row(spec, prepared, space_name, provenance, None, error)
    tune.report({"row_json": canonical_json(row), "status": row["status"],
                 "accuracy": row["accuracy"] if row["accuracy"] is not None else float("nan")})


# --------------------------------------------------------------------------------------------------
# the driver side


def _recorder_callback(store: MetaDatasetStore, plan: SweepPlan, space_name: str, provenance: dict):
    from ray import tune

    class RecordRuns(tune.Callback):
        """Writes each trial's row to the store as soon as it arrives; prints one progress line."""

        def __init__(self) -> None:
            self.recorded = 0
            self.started = time.monotonic()
            configs = [t.config for t in plan.trials]
            keys = sorted({k for c in configs for k in c})
            # Show what tells runs apart: the backbone (a translated space's model) and every
            # hyperparameter the plan varies (among the configs that have it).
            lead = [k for k in ("backbone", "model") if k in keys]
            self.shown = lead + [k for k in keys if k not in lead
                                 and len({canonical_json(c[k]) for c in configs if k in c}) > 1]

        def _progress(self, row: dict[str, Any]) -> None:
            self.recorded += 1
            config = row_config(row)
            cfg = " ".join(f"{k}={config[k]}" for k in self.shown if k in config)
            acc = "-" if row["accuracy"] is None else f"{row['accuracy']:.3f}"
            secs = "-" if row["cost_seconds"] is None else f"{row['cost_seconds']:.1f}s"
            elapsed = time.monotonic() - self.started
            print(f"[{self.recorded}/{len(plan.trials)} | {elapsed:.0f}s] {row['status']:6s} {row['dataset_id']} "
                  f"acc={acc} time={secs} {cfg}", flush=True)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if "row_json" in result:
                row = json.loads(result["row_json"])
                store.write_run(row)
                self._progress(row)

        def on_trial_error(self, iteration, trials, trial, **info):
            # The worker died (killed, out of memory) more often than FailureConfig retries: a failed row.
            spec = trial.config["trial"]
            if spec["run_id"] in store.run_ids():
                return
            error = f"trial errored in Ray (worker died or was killed): {getattr(trial, 'error_file', '') or ''}"
            row = build_row(spec, plan.datasets[spec["dataset_id"]], space_name, provenance, None, error)
            store.write_run(row)
            self._progress(row)

    return RecordRuns()


@dataclass
class SweepResult:
    store: Path
    n_planned: int
    n_skipped: int
    n_recorded_now: int
    wall_seconds: float


def run_sweep(cfg: Mapping[str, Any]) -> SweepResult:
    """Run a sweep from its (Hydra) config; see conf/sweep.yaml for the keys."""
    import ray
    from ray import tune

    cfg = _plain(cfg)
    started = time.monotonic()
    space = cfg["space"]
    space_name = str(space.get("name", "custom"))
    points = expand_space_points(space)
    allow_download = bool(cfg.get("allow_download", False))
    check_space_weights(points, allow_download=allow_download)
    dataset_cfgs = [cfg["dataset"]] if cfg.get("dataset") else list(cfg.get("datasets") or [])
    datasets = prepare_datasets(dataset_cfgs)
    seeds = list(cfg.get("seeds") or [0])

    store = MetaDatasetStore(Path(cfg["store"]).expanduser())
    done = store.finished_run_ids(include_failed=not cfg.get("retry_failed", False))
    plan = plan_sweep(datasets, points, seeds, done, space_translation(space))
    provenance = driver_provenance()
    n_runs = len(plan.trials) + len(plan.skipped) + sum(plan.left_out.values())
    print(f"metallmix sweep: {len(datasets)} datasets x {len(points)} configs x {len(seeds)} seeds = "
          f"{n_runs} runs; {len(plan.skipped)} already recorded in {store.root}, "
          f"{len(plan.trials)} to run", flush=True)
    if plan.left_out:
        why = "; ".join(f"{reason} ({n})" for reason, n in sorted(plan.left_out.items()))
        print(f"metallmix sweep: {sum(plan.left_out.values())} runs left out: {why}", flush=True)

    configs = [point.config for point in points]
    store.write_manifest(_manifest(cfg, datasets, configs, seeds, provenance, store))
    recorded_before = len(store.run_ids())
    if plan.trials:
        init_ray(cfg.get("ray") or {})
        try:
            res = cfg.get("resources") or {}
            trainable = tune.with_resources(
                tune.with_parameters(sweep_trial, datasets=datasets, space_name=space_name,
                                     provenance=provenance, allow_download=allow_download),
                {"cpu": float(res.get("cpu", 1)), "gpu": float(res.get("gpu", 0))},
            )
            tuner = tune.Tuner(
                trainable,
                param_space={"trial": tune.grid_search([t.as_tune_config() for t in plan.trials])},
                tune_config=tune.TuneConfig(max_concurrent_trials=cfg.get("max_concurrent_trials"),
                                            reuse_actors=bool(cfg.get("reuse_actors", True))),
                run_config=tune.RunConfig(
                    name=f"metallmix-sweep-{space_name}",
                    storage_path=cfg.get("tune_storage") or None,
                    callbacks=[_recorder_callback(store, plan, space_name, provenance)],
                    failure_config=tune.FailureConfig(max_failures=int(cfg.get("max_failures", 1))),
                    verbose=int(cfg.get("tune_verbose", 0)),
                ),
            )
            tuner.fit()
        finally:
            ray.shutdown()
    path = store.consolidate()
    result = SweepResult(path, len(plan.trials) + len(plan.skipped), len(plan.skipped),
                         len(store.run_ids()) - recorded_before, time.monotonic() - started)
    print(summary_table(store), flush=True)
    print(f"meta-dataset: {path} ({len(store.run_ids())} runs; {result.n_recorded_now} recorded now, "
          f"{result.n_skipped} skipped as already recorded; wall time {result.wall_seconds:.0f} s)", flush=True)
    return result


def init_ray(ray_cfg: Mapping[str, Any]) -> None:
    """Start a local Ray (``ray.address`` null) or join the cluster at ``ray.address`` (``auto`` or HOST:PORT);
    a cluster that cannot be joined is a ConfigError saying what to fix."""
    import ray

    address = str(ray_cfg.get("address") or "local")
    kwargs: dict[str, Any] = {"address": address, "include_dashboard": False,
                              "log_to_driver": bool(ray_cfg.get("log_to_driver", False))}
    if address == "local" and ray_cfg.get("num_cpus"):
        kwargs["num_cpus"] = int(ray_cfg["num_cpus"])
    if address not in ("local", "auto"):
        check_ray_address(address)
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError) as exc:
        if address == "local":
            raise
        raise ConfigError(ray_connect_error(address, exc)) from exc


def check_ray_address(address: str, timeout_s: float = 10.0) -> None:
    """Fail fast, saying what to fix, when nothing listens at ``ray.address`` (HOST:PORT): ``ray.init`` would
    retry an unreachable address for minutes."""
    if address.startswith("ray://"):
        return  # Ray Client: a different protocol, checked by ray.init itself
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"ray.address={address!r} is not HOST:PORT; give the head's address (e.g. 10.0.0.5:6379, "
                          "the GCS port `ray start --head --port` opened), auto on a node of the cluster, or null "
                          "for a local Ray")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConfigError(f"nothing answers at ray.address={address} ({exc}); start the cluster's head there "
                          "(`ray start --head --port PORT` or `ray up cluster.yaml`) or fix the address") from exc


def ray_connect_error(address: str, exc: BaseException) -> str:
    """What to fix when ``ray.init(address=...)`` fails: token authentication, or no cluster there."""
    from ray.exceptions import AuthenticationError

    chain, seen = [], exc
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    # Ray wraps the AuthenticationError's traceback into the text of the RuntimeError it raises.
    if any(isinstance(e, AuthenticationError) or "AuthenticationError" in str(e) or "InvalidAuthToken" in str(e)
           for e in chain):
        return (f"the Ray cluster at ray.address={address} uses token authentication and refused this driver "
                "(it sent no token, or not the cluster's): export RAY_AUTH_MODE=token with the cluster's token in "
                "~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN (ray.address=auto on a node of the "
                "cluster turns token mode on by itself when ~/.ray/auth_token exists); docs/sweep.md, "
                "'On a Ray cluster'")
    return (f"no Ray cluster could be joined at ray.address={address} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); start one (`ray start --head` or `ray up cluster.yaml`) "
            "and give its address as HOST:PORT (the head's GCS port, 6379 by default) or auto on one of its "
            "nodes, or leave ray.address null for a local Ray")


def check_space_weights(points: Sequence[SpacePoint], *, allow_download: bool) -> None:
    """Stop before any trial if a backbone of the space lacks weights that may not be downloaded:
    one WeightsUnavailableError saying, for each such backbone, what to place where."""
    messages = []
    for backbone, weights in sorted({(p.training["backbone"], p.training["weights"]) for p in points}):
        try:
            check_weights_available(backbone, weights, allow_download=allow_download)
        except WeightsUnavailableError as exc:
            messages.append(str(exc))
    if len(messages) == 1:
        raise WeightsUnavailableError(messages[0])
    if messages:
        raise WeightsUnavailableError(f"{len(messages)} backbones of the space lack their weights (or pass "
                                      "allow_download=true):\n" + "\n".join(f"- {m}" for m in messages))


def _manifest(cfg, datasets, configs, seeds, provenance, store) -> dict[str, Any]:
    return {
        "what": "metallmix meta-dataset recorded by python -m metallmix.sweep",
        "command": provenance["command"],
        "git_sha": provenance["git_sha"],
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hardware": worker_hardware(),
        "versions": provenance["versions"],
        "config": cfg,
        "datasets": {k: {"cfg": v.cfg, "kind": v.dataset.kind, "parent": v.dataset.parent,
                         "modality": v.dataset.modality, "meta_features": v.meta_features}
                     for k, v in datasets.items()},
        "n_configs": len(configs),
        "seeds": seeds,
        "store": str(store.root),
    }


def summary_table(store: MetaDatasetStore) -> str:
    """Per dataset x backbone: runs, failures, best and median accuracy, mean training time."""
    df = store.read()
    if df.empty:
        return "(no runs recorded)"
    # A translated space's rows name their backbone in their own vocabulary (MedMNIST+: cfg_model).
    columns = [c for c in ("cfg_backbone", "cfg_model") if c in df.columns]
    backbone = df[columns].bfill(axis=1).iloc[:, 0].fillna("?") if columns else "?"
    df = df.assign(backbone=backbone, ok=df["status"] == STATUS_OK)
    rows = []
    for (ds, bb), g in df.groupby(["dataset_id", "backbone"], sort=True):
        okg = g[g["ok"]]
        rows.append((ds, bb, len(g), int((~g["ok"]).sum()),
                     f"{okg['accuracy'].max():.3f}" if len(okg) else "-",
                     f"{okg['accuracy'].median():.3f}" if len(okg) else "-",
                     f"{okg['cost_seconds'].mean():.1f}" if len(okg) else "-"))
    header = ("dataset", "backbone", "runs", "failed", "best_acc", "median_acc", "mean_s")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths)), *(fmt.format(*r) for r in rows)])


def main() -> None:
    import hydra

    @hydra.main(version_base="1.3", config_path=str(REPO_ROOT / "conf"), config_name="sweep")
    def _app(cfg) -> None:
        try:
            run_sweep(cfg)
        except MetallmixError as exc:
            print(f"metallmix sweep: error: {exc}", file=sys.stderr)
            sys.exit(2)

    _app()


if __name__ == "__main__":
    main()
