"""`serve deploy serving/config.yaml` as documented (docs/llm.md, "Serving"), with the project's commands only.

The sequence a user runs from a fresh clone after `bash setup.sh` -- `.venv/bin/ray start --head`, then
`.venv/bin/serve deploy serving/config.yaml`, `serve status` until RUNNING, POST /recommend -- with no
PYTHONPATH, no RAY_AUTH_MODE and nothing outside the project. Isolated from anything else on the machine
(serving/local_head.py): the head gets its own temp dir and free ports, and is ended by its process ids
(never `ray stop`, which would end every Ray cluster of the user). The config is the real one, copied
with two changes: the HTTP port (a free one) and `llm: none` (the LLM needs .venv-llm; the LLM path is
tested in test_llm_serving.py). The recommender cache is an empty temp folder (METALLMIX_CACHE_DIR), as
on a fresh machine: the replica fits its Recommender from the shipped knowledge base (~15 s). Every wait
is bounded: the test stops by itself (~1-2 minutes on 2 cores).

When a Ray token exists (~/.ray/auth_token: any local ray.init() writes one), `ray start --head` enables
token authentication, and `serve deploy` works only because setup.sh installed
serving/metallmix_ray_auth.pth; the test prints which case it ran, and the parametrized test below
checks that file's rule in both cases (a temp HOME with and without a token).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from serving.local_head import REPO_ROOT, VENV_BIN, LocalHead, clean_env, free_port, write_config

CONFIG = REPO_ROOT / "serving" / "config.yaml"


def _post(url: str, body: dict, timeout: float = 120) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.mark.slow
@pytest.mark.skipif(not (VENV_BIN / "serve").is_file(), reason="no .venv/bin/serve: run `bash setup.sh`")
def test_ray_start_then_serve_deploy_config_serves_recommend():
    started = time.monotonic()
    temp_dir = Path(tempfile.mkdtemp(prefix="mlx-deploy-"))  # short: Ray's socket paths must stay < 108 chars
    try:
        port = free_port()
        config = write_config(CONFIG, temp_dir / "config.yaml", port=port, args={"llm": "none"})
        assert config["applications"][0]["args"]["recommender"].endswith(":builtin")  # nothing outside the project
        with LocalHead(temp_dir, num_cpus=2, env={"METALLMIX_CACHE_DIR": str(temp_dir / "cache")}) as head:
            auth = head.token_auth()
            head.deploy(temp_dir / "config.yaml", timeout_s=300)
            state = head.wait_running("metallmix", timeout_s=600)
            assert set(state["deployments"]) == {"ingress", "recommender", "judge"}
            ready_s = time.monotonic() - started

            url = f"http://127.0.0.1:{port}/recommend"
            status, out = _post(url, {"meta_features": {"n_images": 2000, "n_classes": 5, "resolution": 128,
                                                        "channels": 3}, "llm": False, "top_k": 3})
            assert status == 200, out
            assert {"config", "candidate_id", "predicted", "explanation", "evidence"} <= set(out)
            assert out["explanation_source"] == "template" and out["explanation"]
            assert out["meta_dataset"]["spec"] == "quicktune:builtin"
            assert 0 <= out["predicted"]["accuracy"] <= 1 and out["evidence"]["shap"]

            status, out = _post(url, {"meta_features": {"n_images": 1e308, "n_classes": 2}})
            assert status == 422 and "meta_features.n_images" in out["detail"], out
        print(f"\n`ray start --head` + `serve deploy serving/config.yaml`: RUNNING after {ready_s:.0f} s, "
              f"token authentication {'on' if auth else 'off'}; whole test {time.monotonic() - started:.0f} s")
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


LLM_PYTHON = REPO_ROOT / ".venv-llm" / "bin" / "python"


@pytest.mark.slow
@pytest.mark.skipif(not (VENV_BIN / "serve").is_file(), reason="no .venv/bin/serve: run `bash setup.sh`")
@pytest.mark.skipif(not LLM_PYTHON.is_file(), reason="no .venv-llm: run `bash setup_llm.sh` (setup.sh does)")
def test_serve_deploy_with_an_llm_answers_or_flags_its_fallback():
    """The same sequence with an LLM (SmolLM2, the fastest local model; the shipped config has none on a CPU,
    as measured in docs/llm.md): the answer is the LLM's only when it passed every check and the judge, else
    the template flagged as a fallback."""
    started = time.monotonic()
    temp_dir = Path(tempfile.mkdtemp(prefix="mlx-deploy-llm-"))
    try:
        port = free_port()
        config = write_config(CONFIG, temp_dir / "config.yaml", port=port, args={"llm": "smollm2"})
        assert config["applications"][0]["args"]["judge_llm"] == "same"
        with LocalHead(temp_dir, num_cpus=2, env={"METALLMIX_CACHE_DIR": str(temp_dir / "cache")}) as head:
            head.deploy(temp_dir / "config.yaml", timeout_s=300)
            state = head.wait_running("metallmix", timeout_s=900)
            assert "llm_engine" in state["deployments"]
            status, out = _post(f"http://127.0.0.1:{port}/recommend",
                                {"meta_features": {"n_images": 2000, "n_classes": 5, "resolution": 128, "channels": 3},
                                 "top_k": 3}, timeout=600)
            assert status == 200, out
            llm = out["llm"]
            assert out["explanation"]
            if llm["fallback"]:
                assert llm["fallback_reason"] and out["explanation_source"] == "template"
            else:
                assert out["explanation_source"] == "llm" and out["judge"]["checks"]["passed"] is True
        print(f"\nserve deploy with SmolLM2: {'fallback (' + llm['fallback_reason'][:120] + ')' if llm['fallback'] else 'LLM answer accepted'}; "
              f"whole test {time.monotonic() - started:.0f} s")
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.parametrize("command, token, preset, expected", [
    ("serve", True, None, "token"),        # what makes a bare `serve deploy` work against an authenticated head
    ("ray", True, None, "token"),
    ("serve", False, None, None),          # no token: the head runs without authentication, and so does serve
    ("python-tool", True, None, None),     # any other program of the venv: untouched
    ("serve", True, "disabled", "disabled"),  # an explicit RAY_AUTH_MODE always wins
])
def test_ray_auth_pth_applies_the_heads_rule_to_ray_and_serve(tmp_path, command, token, preset, expected):
    installed = Path(sysconfig.get_paths()["purelib"]) / "metallmix_ray_auth.pth"
    shipped = REPO_ROOT / "serving" / "metallmix_ray_auth.pth"
    assert installed.is_file() and installed.read_text() == shipped.read_text(), f"{installed} missing or stale: run `bash setup.sh`"
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    if token:
        (home / ".ray" / "auth_token").write_text("0" * 64)
    script = tmp_path / "bin" / command  # a program named like the venv's console scripts, run by its Python
    script.parent.mkdir()
    script.write_text(f"#!{sys.executable}\nimport os\nprint(os.environ.get('RAY_AUTH_MODE'))\n")
    script.chmod(0o755)
    env = clean_env({"HOME": str(home), **({"RAY_AUTH_MODE": preset} if preset else {})})
    out = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert out == [str(expected)], (command, token, preset, out)


def test_config_recommender_specs_resolve_inside_the_project(tmp_path):
    """serving/config.yaml's recommender needs nothing beside the clone; specs resolve against the repo root."""
    from metallmix.errors import ConfigError
    from serving.app import build_app, resolve_spec

    for spec in ("quicktune:builtin", "medmnistplus:builtin", "qtt:builtin"):
        assert resolve_spec(spec) == spec
    assert resolve_spec("metallmix/data/builtin/quicktune-metaalbum-extended") == \
        str(REPO_ROOT / "metallmix" / "data" / "builtin" / "quicktune-metaalbum-extended")
    assert resolve_spec(f"quicktune:{tmp_path}") == f"quicktune:{tmp_path}"
    with pytest.raises(ConfigError, match=r"does not exist; .*quicktune:builtin"):
        resolve_spec("quicktune:../no-such-folder/quicktune")
    with pytest.raises(ConfigError, match="does not exist"):  # at build time: `serve status` shows DEPLOY_FAILED with it
        build_app({"recommender": "no/such/recommender", "llm": "none"})
