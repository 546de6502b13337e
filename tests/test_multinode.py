"""A real multi-node Ray cluster on this machine: the sweep and a train-mode benchmark job through `ray.address`.

The cluster is made the way cluster.yaml makes one, with the project's own commands: a head node that
offers no CPU (`.venv/bin/ray start --head --num-cpus 0`, as cluster.yaml's `resources: {"CPU": 0}`), so
no trial can run there, and a worker node (`.venv/bin/ray start --address HEAD`) with 2 CPUs. Token
authentication is on, as on a cluster that uses it: every node and driver gets `RAY_AUTH_MODE=token` and
the same (generated) token in `RAY_AUTH_TOKEN`. Drivers are the documented commands
(`.venv/bin/python -m metallmix.sweep ... ray.address=HOST:PORT`, `python -m metallmix.bench mode=train
... train.ray.address=HOST:PORT`) in their own processes.

What it shows:
- every trial of the sweep ran on a worker node: each row's provenance names the node that ran it
  (`provenance_json.ray_node.node_id`), and it is a worker's, never the head's;
- the driver writes the rows: they are in the store the sweep command names (trials get no store path;
  their rows travel back through Tune's results);
- a run interrupted by losing both the driver (SIGKILL) and the worker node it ran on, resumed by the
  same command on a replacement worker node, ends with every run exactly once, the rows written before
  the loss byte-for-byte unchanged and the rest on the new node;
- a train-mode benchmark job trains its trials on the worker node (the cluster's actor table: the job's
  result document records no node).

Isolation from anything else on the machine: the cluster has its own temp dir and free ports, and is
ended by its process ids (each `ray start --block` in its own process session); `ray stop` is never used.
Every wait is bounded; ~1.5-3 minutes on 2 shared cores. One machine shares its filesystem between the
nodes, so this does not show a run without shared storage; the sweep needs none by design (datasets go
through Ray's object store, rows through Tune's results).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from metallmix.metadataset import MetaDatasetStore, load_meta_dataset
from serving.local_head import REPO_ROOT, VENV_BIN, clean_env, free_port

PYTHON = str(VENV_BIN / "python")
RAY = str(VENV_BIN / "ray")
WORKER_CPUS = 2

# Test data (as in test_sweep.py): a tiny generated dataset, labelled generated everywhere, and a tiny grid.
TINY_DATASET = {"kind": "generated", "n_classes": 2, "n_images": 160, "resolution": 16, "channels": 1,
                "imbalance": 1.0, "difficulty": 0.1, "seed": 3}
LRS = [0.001, 0.002, 0.003, 0.004, 0.005, 0.006]
SPACE = {"name": "tiny_multinode", "grid": [{"backbone": ["mobilenet_v3_small"], "lr": LRS}],
         "fixed": {"weights": "none", "strategy": "full", "optimizer": "adam", "epochs": 3, "batch_size": 32,
                   "input_size": 16, "augmentation": "none"}}

# Run by the cluster's Python as a driver: the nodes, and every actor the cluster has run (dead ones too).
QUERY = r"""
import json, sys, time
import ray
args = json.loads(sys.argv[1])
ray.init(address=args["address"], include_dashboard=False, log_to_driver=False, logging_level="ERROR")
deadline = time.monotonic() + args.get("timeout_s", 0)
while True:
    nodes = [{"node_id": n["NodeID"], "alive": n["Alive"], "cpu": n["Resources"].get("CPU", 0.0),
              "head": "node:__internal_head__" in n["Resources"]} for n in ray.nodes()]
    workers = {n["node_id"] for n in nodes if n["alive"] and n["cpu"] > 0}
    dead = {n["node_id"] for n in nodes if not n["alive"]}
    new_ok = "new_besides" not in args or bool(workers - set(args["new_besides"]))
    if new_ok and set(args.get("dead", [])) <= dead:
        break
    if time.monotonic() > deadline:
        break
    time.sleep(0.5)
from ray._private.state import actors  # the GCS actor table (no dashboard needed)
table = [{"actor_id": a["ActorID"], "class_name": a["ActorClassName"], "node_id": a["Address"]["NodeID"],
          "state": a["State"]} for a in actors().values()]
print("QUERY-RESULT " + json.dumps({"nodes": nodes, "actors": table}))
ray.shutdown()
"""

skip_without_venv = pytest.mark.skipif(not (VENV_BIN / "ray").is_file(), reason="no .venv/bin/ray: run `bash setup.sh`")


class LocalCluster:
    """A head node without CPUs and worker nodes, each `ray start --block` in its own process session."""

    def __init__(self, temp_dir: Path):
        self.temp_dir = temp_dir
        self.env = clean_env({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                              "RAY_USAGE_STATS_ENABLED": "0"})
        self.address: str | None = None
        self.head: subprocess.Popen | None = None
        self.workers: dict[str, subprocess.Popen] = {}  # live worker nodes: node id -> its `ray start`
        self.worker_ids: set[str] = set()  # every worker node this cluster has had
        self._logs: list = []

    def _ray_start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.temp_dir / f"{name}.log", "wb")  # noqa: SIM115 -- closed in stop()
        self._logs.append(log)
        command = [RAY, "start", "--block", "--disable-usage-stats", "--num-gpus", "0",
                   "--object-store-memory", str(200 * 1024 * 1024),
                   "--min-worker-port", "0", "--max-worker-port", "0",
                   "--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
                   "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port()),
                   "--dashboard-agent-listen-port", str(free_port()),
                   "--dashboard-agent-grpc-port", str(free_port()), *args]
        return subprocess.Popen(command, cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)

    def log_tail(self, name: str, chars: int = 3000) -> str:
        try:
            return (self.temp_dir / f"{name}.log").read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def start_head(self, timeout_s: float = 120) -> None:
        address_file = self.temp_dir / "ray_current_cluster"  # `ray start` writes the GCS address there
        self.head = self._ray_start("head", "--head", "--num-cpus", "0", "--temp-dir", str(self.temp_dir),
                                    "--port", str(free_port()), "--include-dashboard", "false",
                                    "--dashboard-port", str(free_port()),
                                    "--ray-client-server-port", str(free_port()))
        deadline = time.monotonic() + timeout_s
        while not (address_file.is_file() and address_file.read_text().strip()):
            if self.head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"`ray start --head` did not come up (exit {self.head.poll()}):\n"
                                   f"{self.log_tail('head')}")
            time.sleep(0.5)
        self.address = address_file.read_text().strip()

    def query(self, timeout_s: float = 0, **wait) -> dict:
        """The nodes and the actor table, seen by a driver, after waiting up to ``timeout_s`` for ``wait``:
        ``new_besides`` (a live worker node not in this list of node ids), ``dead`` (these nodes dead)."""
        out = subprocess.run([PYTHON, "-c", QUERY, json.dumps({"address": self.address, "timeout_s": timeout_s,
                                                                **wait})],
                             cwd=REPO_ROOT, env=self.env, capture_output=True, text=True, timeout=timeout_s + 120)
        lines = [line for line in out.stdout.splitlines() if line.startswith("QUERY-RESULT ")]
        assert out.returncode == 0 and lines, f"the cluster query failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        return json.loads(lines[-1].removeprefix("QUERY-RESULT "))

    def add_worker(self, timeout_s: float = 120) -> str:
        """Start a worker node with WORKER_CPUS CPUs; its node id once the cluster lists it alive."""
        before = {n["node_id"] for n in self.query()["nodes"]}
        name = f"worker{len(self.worker_ids) + 1}"
        process = self._ray_start(name, "--address", self.address, "--num-cpus", str(WORKER_CPUS))
        nodes = self.query(timeout_s=timeout_s, new_besides=sorted(before))
        new = [n["node_id"] for n in nodes["nodes"] if n["alive"] and n["cpu"] > 0 and n["node_id"] not in before]
        if len(new) != 1:
            _end(process)
            raise RuntimeError(f"the worker node did not join within {timeout_s} s (new: {new}):\n"
                               f"{self.log_tail(name)}")
        self.workers[new[0]] = process
        self.worker_ids.add(new[0])
        return new[0]

    def remove_worker(self, node_id: str, timeout_s: float = 120) -> None:
        """The worker machine is lost: every process of that node is killed at once; returns once the
        cluster has marked the node dead (so nothing is scheduled on it any more)."""
        _kill_session(self.workers.pop(node_id))
        nodes = self.query(timeout_s=timeout_s, dead=[node_id])["nodes"]
        assert any(n["node_id"] == node_id and not n["alive"] for n in nodes), \
            f"the cluster did not mark the killed worker node {node_id} dead within {timeout_s} s"

    def stop(self) -> None:
        for process in [*self.workers.values(), self.head]:
            if process is not None:
                _end(process)
        for log in self._logs:
            log.close()


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) of every process, from /proc."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        table[int(stat.parent.name)] = (int(fields[1]), fields[19])  # ppid, starttime
    return table


def _descendants(pid: int) -> set[tuple[int, str]]:
    """(pid, start time) of every process below ``pid``: Ray starts some workers in process groups of their
    own, out of reach of a signal to the session."""
    table = _processes()
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, started) in table.items():
            if ppid == parent:
                found.add((child, started))
                todo.append(child)
    return found


def _kill(process: subprocess.Popen, descendants: set[tuple[int, str]]) -> None:
    """SIGKILL to the process's session (start_new_session: its group id is its pid) and to the given
    descendants that still run (same pid and start time: never a process that reused the id)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    table = _processes()
    for pid, started in descendants:
        if pid in table and table[pid][1] == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


def _kill_session(process: subprocess.Popen) -> None:
    """A lost machine: every process of the node killed at once, by their ids."""
    _kill(process, _descendants(process.pid))


def _end(process: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGTERM to `ray start --block` (it stops the node's processes), then SIGKILL to whatever is left of
    it. Only this node's processes are touched."""
    descendants = _descendants(process.pid)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
    if process.poll() is None:  # still ours: what it started since
        descendants |= _descendants(process.pid)
    _kill(process, descendants)


@pytest.fixture(scope="module")
def cluster():
    temp_dir = Path(tempfile.mkdtemp(prefix="mlx-mn-"))  # short: Ray's socket paths must stay < 108 chars
    local = LocalCluster(temp_dir)
    try:
        local.start_head()
        local.add_worker()
        yield local
    finally:
        local.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _conf_dir(tmp_path: Path, space: dict) -> Path:
    conf_dir = tmp_path / "conf"
    (conf_dir / "space").mkdir(parents=True)
    (conf_dir / "space" / f"{space['name']}.yaml").write_text(yaml.safe_dump(space))
    return conf_dir


def _sweep_command(cluster: LocalCluster, conf_dir: Path, store: Path) -> list[str]:
    return [PYTHON, "-m", "metallmix.sweep", f"--config-dir={conf_dir}", f"space={SPACE['name']}",
            "dataset=generated", *[f"dataset.{k}={v}" for k, v in TINY_DATASET.items() if k != "kind"],
            f"store={store}", f"ray.address={cluster.address}", f"tune_storage={conf_dir.parent / 'tune'}",
            f"hydra.run.dir={conf_dir.parent / 'hydra'}"]


def _ray_nodes(df) -> list[str]:
    return [json.loads(p)["ray_node"]["node_id"] for p in df["provenance_json"]]


@skip_without_venv
def test_sweep_through_ray_address_runs_on_the_worker_and_resumes_after_losing_driver_and_worker(cluster, tmp_path):
    started = time.monotonic()
    head = next(n["node_id"] for n in cluster.query()["nodes"] if n["head"])
    (worker,) = [n for n, p in cluster.workers.items() if p.poll() is None]
    conf_dir = _conf_dir(tmp_path, SPACE)
    store = tmp_path / "store"
    runs = MetaDatasetStore(store)

    # 1. The sweep through ray.address, lost part-way: its driver killed, and the worker machine with it.
    proc = subprocess.Popen(_sweep_command(cluster, conf_dir, store), cwd=REPO_ROOT, env=cluster.env,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not runs.run_ids() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)
    before = {p.name: p.read_bytes() for p in runs.runs_dir.glob("*.parquet")}  # all the dead driver wrote
    cluster.remove_worker(worker)
    assert 0 < len(before) < len(LRS), f"the test needs the loss mid-sweep; recorded {len(before)}:\n{out[-4000:]}"
    first = load_meta_dataset(store)
    assert set(_ray_nodes(first)) == {worker}, "rows recorded before the loss must name the worker that ran them"

    # 2. A replacement worker joins; the same command resumes the sweep.
    replacement = cluster.add_worker()
    resumed = subprocess.run(_sweep_command(cluster, conf_dir, store), cwd=REPO_ROOT, env=cluster.env,
                             capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-4000:]
    assert f"{len(before)} already recorded" in resumed.stdout

    df = load_meta_dataset(store / "metadataset.parquet")
    assert len(df) == len(LRS) and df["run_id"].is_unique, "every run exactly once: none lost, none duplicated"
    assert sorted(df["cfg_lr"]) == LRS
    assert (df["status"] == "ok").all(), "a run cut by the loss must be re-run, not recorded as failed"
    for name, content in before.items():  # rows written before the loss are untouched
        assert (runs.runs_dir / name).read_bytes() == content
    nodes = dict(zip(df["run_id"], _ray_nodes(df)))
    assert head not in nodes.values(), "no trial may run on the head node (it has no CPU)"
    assert {nodes[Path(name).stem] for name in before} == {worker}
    assert {n for r, n in nodes.items() if f"{r}.parquet" not in before} == {replacement}
    provenance = [json.loads(p) for p in df["provenance_json"]]
    assert all(p["ray_node"]["node_ip"] and p["hardware"]["host"] for p in provenance)
    print(f"\nmulti-node sweep: {len(before)} of {len(LRS)} rows before the loss (worker {worker[:8]}), "
          f"{len(LRS) - len(before)} after it (worker {replacement[:8]}), head {head[:8]} ran none; "
          f"{time.monotonic() - started:.0f} s")


@skip_without_venv
def test_train_mode_benchmark_job_through_ray_address_trains_on_the_worker(cluster, tmp_path):
    started = time.monotonic()
    before = cluster.query()
    head = next(n["node_id"] for n in before["nodes"] if n["head"])
    known = {a["actor_id"] for a in before["actors"]}
    space = {**SPACE, "name": "tiny_multinode_bench",
             "grid": [{"backbone": ["mobilenet_v3_small"], "lr": [0.001, 0.003, 0.01]}],
             "fixed": {**SPACE["fixed"], "epochs": 2}}
    conf_dir = _conf_dir(tmp_path, space)
    held_out = "{" + ",".join(f"{k}:{v}" for k, v in {**TINY_DATASET, "seed": 5}.items()) + "}"
    job_dir = tmp_path / "job"
    command = [PYTHON, "-m", "metallmix.bench", f"--config-dir={conf_dir}", f"space={space['name']}", "mode=train",
               "method=random", f"held_out={held_out}", "meta_dataset=sweeps/default", "budget.trials=2",
               f"train.ray.address={cluster.address}", f"train.storage={tmp_path / 'tune'}",
               f"hydra.run.dir={job_dir}"]
    job = subprocess.run(command, cwd=REPO_ROOT, env=cluster.env, capture_output=True, text=True, timeout=400)
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-4000:]
    result = json.loads((job_dir / "bench_result.json").read_text())
    assert result["mode"] == "train" and result["n_trials"] == 2
    assert all(t["epochs"] >= 1 for t in result["trials"]) and 0.0 <= result["accuracy"] <= 1.0

    # The job's trainable actors (Tune's function trainable class, ImplicitFunc): those new in the table.
    actors = [a for a in cluster.query()["actors"] if a["actor_id"] not in known]
    trials = [a for a in actors if a["class_name"] == "ImplicitFunc"]
    assert trials, f"the cluster's actor table shows no trainable actor of the job: {actors}"
    assert head not in {a["node_id"] for a in trials}, "no trial may run on the head node (it has no CPU)"
    assert {a["node_id"] for a in trials} <= cluster.worker_ids
    print(f"\ntrain-mode benchmark job: {result['n_trials']} trials in {len(trials)} trainable actor(s) on worker "
          f"node(s) {sorted(n[:8] for n in {a['node_id'] for a in trials})}; {time.monotonic() - started:.0f} s")


@skip_without_venv
def test_a_driver_without_the_clusters_token_is_told_what_to_fix(cluster, tmp_path):
    """Token authentication on and no RAY_AUTH_MODE=token in the driver's environment (an explicit address
    never turns it on): exit 2 and a message naming the fix, no traceback (Ray retries ~20 s first)."""
    env = {k: v for k, v in cluster.env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    proc = subprocess.run(_sweep_command(cluster, _conf_dir(tmp_path, SPACE), tmp_path / "store"), cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "metallmix sweep: error:" in proc.stderr and "RAY_AUTH_MODE=token" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not MetaDatasetStore(tmp_path / "store").run_ids()


def test_a_ray_address_where_nothing_listens_fails_at_once(tmp_path):
    from metallmix.errors import ConfigError
    from metallmix.sweep import run_sweep

    cfg = {"space": SPACE, "dataset": TINY_DATASET, "seeds": [0], "store": str(tmp_path / "store"),
           "ray": {"address": f"127.0.0.1:{free_port()}"}}
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"nothing answers at ray\.address=127\.0\.0\.1:\d+.*ray start --head"):
        run_sweep(cfg)
    assert time.monotonic() - started < 60
    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        run_sweep({**cfg, "ray": {"address": "headnode"}})
