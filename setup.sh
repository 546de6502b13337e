#!/usr/bin/env bash
# Creates ./.venv holding metallmix (editable) with every dependency and the test tools, then
# ./.venv-llm for the LLM step (setup_llm.sh). Idempotent: run it again after pulling. Needs only
# Python >= 3.11 and pip (package registries reachable).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# torch/torchvision pins known to work on this project's machines (CPU runs of the CUDA build on
# x86_64); elsewhere pip chooses. On a GPU cluster, install the torch build matching its CUDA first.
constraints=()
[ -f "constraints/$(uname -m).txt" ] && constraints=(-c "constraints/$(uname -m).txt")
.venv/bin/python -m pip install --quiet --disable-pip-version-check "${constraints[@]}" -e '.[test]'
# `ray` and `serve` of .venv use Ray's token authentication whenever `ray start --head` does (when a token
# exists); without it a bare `serve deploy` fails with "Missing authentication token". Why and how:
# serving/metallmix_ray_auth.pth. Delete the installed copy to opt out.
cp serving/metallmix_ray_auth.pth "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/"
echo "metallmix installed in $(pwd)/.venv"
# The LLM step's own environment (.venv-llm: vLLM + the default model); METALLMIX_SKIP_LLM=1 skips it.
if [ "${METALLMIX_SKIP_LLM:-0}" != 1 ]; then
    bash setup_llm.sh
fi
