"""A private local Ray head started with the ``ray`` CLI, then ``serve deploy``: for tests and benchmarks.

It runs the documented sequence (docs/llm.md, "Serving") -- ``ray start --head`` then ``serve deploy
CONFIG`` -- with the project's ``.venv`` commands, but isolated from anything else on the machine:

- its own ``--temp-dir`` (so ``ray.init()`` elsewhere never finds it), free ports for every listening
  Ray process, and the Serve HTTP port from the config;
- ``ray start --head --block`` in its own process session, so that :meth:`LocalHead.stop` ends this
  head's processes -- and only those -- by their ids. ``ray stop`` is never used: it stops every Ray
  process of the user on the machine, other people's clusters included.

The environment given to the commands is the caller's, less the variables that would make the run
depend on more than the project (``PYTHONPATH``, ``RAY_ADDRESS``, ``RAY_AUTH_MODE``, ``RAY_AUTH_TOKEN*``):
what works here works from a fresh clone after ``bash setup.sh``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = REPO_ROOT / ".venv" / "bin"
# Not inherited by the commands: a fresh shell in a fresh clone has none of them.
DROPPED_ENV = ("PYTHONPATH", "RAY_ADDRESS", "RAY_DASHBOARD_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN",
               "RAY_AUTH_TOKEN_PATH")
TERMINAL_STATUSES = ("RUNNING", "DEPLOY_FAILED", "UNHEALTHY")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without ``DROPPED_ENV``, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if key not in DROPPED_ENV}
    env.update(extra or {})
    return env


def write_config(source: str | Path, target: str | Path, *, port: int, args: dict[str, Any] | None = None,
                 deployments: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A copy of a Serve config (``source``) at ``target`` with the HTTP port set, ``args`` merged into the
    (single) application's args and ``deployments`` (Serve's per-deployment overrides) set; returns it."""
    config = yaml.safe_load(Path(source).read_text())
    config.setdefault("http_options", {})["port"] = port
    (app,) = config["applications"]
    app.setdefault("args", {}).update(args or {})
    if deployments is not None:
        app["deployments"] = deployments
    Path(target).write_text(yaml.safe_dump(config, sort_keys=False))
    return config


class LocalHead:
    """``ray start --head --block`` in ``temp_dir`` on free ports; ``deploy`` / ``status`` through ``serve``.

    Use as a context manager (or call :meth:`start` and, always, :meth:`stop`)::

        with LocalHead("/tmp/mlx-ray", num_cpus=2) as head:
            head.deploy("serving/config.yaml")
            head.wait_running("metallmix", timeout_s=600)
    """

    def __init__(self, temp_dir: str | Path, *, num_cpus: int = 2, env: dict[str, str] | None = None,
                 cwd: str | Path = REPO_ROOT):
        self.temp_dir = Path(temp_dir)
        self.num_cpus = num_cpus
        self.env = clean_env(env)
        self.cwd = Path(cwd)
        self.dashboard_port = free_port()
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        self.process: subprocess.Popen | None = None
        self.log_path = self.temp_dir / "ray-start.log"

    def start(self, timeout_s: float = 180) -> None:
        """Start the head and wait until its dashboard answers (the endpoint ``serve deploy`` talks to)."""
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        command = [
            str(VENV_BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
            "--temp-dir", str(self.temp_dir), "--num-cpus", str(self.num_cpus), "--num-gpus", "0",
            "--node-ip-address", "127.0.0.1", "--port", str(free_port()),
            "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
            "--dashboard-port", str(self.dashboard_port),
            "--ray-client-server-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()),
            "--dashboard-agent-grpc-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()),
            "--metrics-export-port", str(free_port()),
            "--node-manager-port", str(free_port()),
            "--object-manager-port", str(free_port()),
        ]
        log = open(self.log_path, "wb")  # noqa: SIM115 -- closed in stop()
        self._log = log
        self.process = subprocess.Popen(command, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"`ray start --head` exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                # 200 without token authentication; 401 with it (the head has a token, this request none)
                urllib.request.urlopen(self.dashboard_url + "/api/version", timeout=5).close()
                return
            except urllib.error.HTTPError as exc:
                if exc.code in (401, 403):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(1)
        raise TimeoutError(f"the Ray head's dashboard {self.dashboard_url} did not answer within {timeout_s} s:\n"
                           f"{self.log_tail()}")

    def token_auth(self) -> bool:
        """Whether the head enforces Ray's token authentication (its dashboard refuses a request without one)."""
        try:
            urllib.request.urlopen(self.dashboard_url + "/api/version", timeout=10).close()
            return False
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                return True
            raise

    def serve(self, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
        """Run ``.venv/bin/serve ARGS -a <this head's dashboard>`` (no extra environment)."""
        return subprocess.run([str(VENV_BIN / "serve"), *args, "-a", self.dashboard_url], cwd=self.cwd,
                              env=self.env, capture_output=True, text=True, timeout=timeout_s, check=False)

    def deploy(self, config: str | Path, timeout_s: float = 300) -> subprocess.CompletedProcess:
        """``serve deploy CONFIG``; raises with the command's output when it fails."""
        result = self.serve("deploy", str(config), timeout_s=timeout_s)
        if result.returncode != 0:
            raise RuntimeError(f"`serve deploy {config}` failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def status(self) -> dict[str, Any]:
        """``serve status`` parsed (its output is YAML)."""
        result = self.serve("status", timeout_s=120)
        if result.returncode != 0:
            raise RuntimeError(f"`serve status` failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return yaml.safe_load(result.stdout) or {}

    def wait_running(self, app: str, timeout_s: float = 600, poll_s: float = 3,
                     deployed_after: float | None = None) -> dict[str, Any]:
        """Poll ``serve status`` until ``app`` is RUNNING; raise with its status when it failed or time ran out.

        ``deployed_after`` (a ``time.time()``): wait for a deployment made after it (a redeploy), not the one
        that was running before."""
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = self.status()
            state = (last.get("applications") or {}).get(app) or {}
            fresh = deployed_after is None or (state.get("last_deployed_time_s") or 0) >= deployed_after
            if state.get("status") == "RUNNING" and fresh:
                return state
            if state.get("status") in ("DEPLOY_FAILED", "UNHEALTHY"):
                raise RuntimeError(f"application {app!r} is {state['status']}:\n{json.dumps(state, indent=1)[:6000]}")
            time.sleep(poll_s)
        raise TimeoutError(f"application {app!r} not RUNNING within {timeout_s} s; last status:\n"
                           f"{json.dumps(last, indent=1)[:6000]}")

    def stop(self, timeout_s: float = 60) -> None:
        """End this head: SIGTERM to ``ray start --block`` (it stops the processes it started), then SIGKILL
        to its process session (workers included) if anything is left. Touches no other process."""
        if self.process is None:
            return
        pgid = self.process.pid  # start_new_session: the session and group ids are its pid
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.process.poll() is None:
            self.process.wait(timeout=30)
        self._log.close()
        self.process = None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> LocalHead:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
