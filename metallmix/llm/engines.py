"""LLM engines behind one small protocol: schema-constrained chat generation.

An engine turns a ``GenerationRequest`` (chat messages + a JSON schema the answer must follow + a
token budget) into a ``Generation`` (text, finish reason, token counts, latency). The pick and the
judge know only this protocol. Implementations:

- ``VLLMEngine``: vLLM in this process (``AsyncLLM``, structured outputs by xgrammar). Needs ``vllm``
  importable here: on a CPU machine that is the ``.venv-llm`` made by ``setup_llm.sh``.
- ``RayVLLMEngine``: the same engine in a Ray actor run by ``.venv-llm``'s Python, for callers in the
  main environment (where vLLM cannot be installed beside torchvision).
- ``OpenAIEngine``: any OpenAI-compatible HTTP endpoint (``vllm serve``, Ray Serve LLM, ...), the
  schema sent as ``response_format`` ``json_schema``.

``make_engine(spec)`` builds one from a spec: ``none``, an ``http(s)://`` URL, the name of a
``conf/llm/*.yaml`` file, a model alias of ``metallmix.llm.models`` or a model folder. Only the
standard library is imported at module level: this module also runs in the vLLM environment.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from metallmix.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = REPO_ROOT / "conf" / "llm"
LLM_VENV_PYTHON = REPO_ROOT / ".venv-llm" / "bin" / "python"
DEFAULT_MODEL = "smollm2"

# vLLM on CPU, measured on this project's machines (docs/llm.md): no telemetry, no hub, 1 GiB of KV
# cache, no core held back. On a 2-core machine shared with other work, one OpenMP thread pinned to
# core 0 answered 5-8x faster than two threads (their barriers spin while the other core is busy).
VLLM_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    "VLLM_CPU_OMP_THREADS_BIND": "0" if (os.cpu_count() or 1) <= 2 else "auto",
}


@dataclass
class GenerationRequest:
    """One chat completion whose answer must follow ``schema``."""

    messages: list[dict[str, str]]
    schema: dict[str, Any]
    max_tokens: int
    temperature: float = 0.0
    seed: int | None = 0


@dataclass
class Generation:
    """What an engine returned."""

    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float
    model: str


@runtime_checkable
class LLMEngine(Protocol):
    """A chat model that writes JSON following a schema.

    ``kind`` names the implementation and ``model`` the model, both reported with every answer.
    ``generate`` may be awaited from any event loop; ``check_health`` raises when the engine is dead;
    ``close`` frees its resources.
    """

    kind: str
    model: str

    async def generate(self, request: GenerationRequest) -> Generation: ...

    async def check_health(self) -> None: ...

    def close(self) -> None: ...


@dataclass
class VLLMSettings:
    """How a vLLM engine is started (the fields of a conf/llm/*.yaml with ``engine: vllm``).

    Args:
        model: an alias of ``metallmix.llm.models`` (prepared on first use), an HF model folder, or a
            hub id (only when the hub is reachable and allowed).
        dtype: "bfloat16" suits short prompts; "float32" reads long prompts faster on CPUs without
            native bf16 (measured: docs/llm.md).
        max_model_len: prompt + answer tokens.
        enforce_eager: skip graph compilation (on CPU each start would otherwise recompile).
        engine_args: further ``vllm.AsyncEngineArgs`` fields (e.g. tensor_parallel_size on a GPU node).
    """

    model: str = DEFAULT_MODEL
    dtype: str = "float32"
    max_model_len: int = 4096
    enforce_eager: bool = True
    seed: int = 0
    engine_args: dict[str, Any] = field(default_factory=dict)


class VLLMEngine:
    """vLLM's ``AsyncLLM`` in this process, on an event loop of its own (usable from any caller's loop)."""

    kind = "vllm"

    def __init__(self, settings: VLLMSettings | dict[str, Any] | None = None):
        settings = _settings(settings)
        for key, value in VLLM_ENV.items():
            os.environ.setdefault(key, value)
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from metallmix.llm.models import resolve_model

        self.model = settings.model
        self.max_model_len = settings.max_model_len
        path = resolve_model(settings.model)
        args = AsyncEngineArgs(
            model=str(path),
            dtype=settings.dtype,
            max_model_len=settings.max_model_len,
            enforce_eager=settings.enforce_eager,
            seed=settings.seed,
            structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True},
            **settings.engine_args,
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-engine-loop", daemon=True)
        self._thread.start()

        async def start() -> Any:
            return AsyncLLM.from_engine_args(args)

        try:
            self._engine = asyncio.run_coroutine_threadsafe(start(), self._loop).result()
        except BaseException:
            self._stop_loop()
            raise
        self._tokenizer = self._engine.tokenizer

    async def generate(self, request: GenerationRequest) -> Generation:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._generate(request), self._loop))

    async def _generate(self, request: GenerationRequest) -> Generation:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        started = time.perf_counter()
        text = self._tokenizer.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
        prompt_ids = self._tokenizer.encode(text, add_special_tokens=False)
        if len(prompt_ids) + request.max_tokens > self.max_model_len:
            raise ConfigError(
                f"the prompt ({len(prompt_ids)} tokens) plus the answer budget ({request.max_tokens}) exceeds "
                f"max_model_len={self.max_model_len}; raise max_model_len in the llm config or show less evidence"
            )
        params = SamplingParams(
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            seed=request.seed,
            structured_outputs=StructuredOutputsParams(json=request.schema),
        )
        final = None
        async for output in self._engine.generate({"prompt_token_ids": prompt_ids}, params, request_id=uuid.uuid4().hex):
            final = output
        completion = final.outputs[0]
        return Generation(
            text=completion.text,
            finish_reason=completion.finish_reason,
            prompt_tokens=len(prompt_ids),
            completion_tokens=len(completion.token_ids),
            latency_s=round(time.perf_counter() - started, 3),
            model=self.model,
        )

    async def check_health(self) -> None:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._engine.check_health(), self._loop))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._engine.shutdown()
        self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


class VLLMActor:
    """Ray actor body holding a ``VLLMEngine``; requests and answers travel as dicts."""

    def __init__(self, settings: dict[str, Any]):
        self.engine = VLLMEngine(settings)

    async def generate(self, request: dict[str, Any]) -> dict[str, Any]:
        return asdict(await self.engine.generate(GenerationRequest(**request)))

    async def check_health(self) -> None:
        await self.engine.check_health()


class RayVLLMEngine:
    """A ``VLLMEngine`` in a Ray actor run by the vLLM environment's Python.

    Joins the Ray cluster of this process if there is one; otherwise starts a local one (stopped by
    ``close``). ``python`` defaults to ``$METALLMIX_LLM_PYTHON`` or ``<repo>/.venv-llm/bin/python``.
    """

    kind = "vllm-ray"

    def __init__(self, settings: VLLMSettings | dict[str, Any] | None = None, *, python: str | None = None,
                 startup_timeout_s: float = 900.0):
        import ray

        settings = _settings(settings)
        self.model = settings.model
        runtime_env = llm_runtime_env(python)
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
        self._actor = ray.remote(VLLMActor).options(num_cpus=1, runtime_env=runtime_env).remote(asdict(settings))
        try:
            ray.get(self._actor.check_health.remote(), timeout=startup_timeout_s)
        except Exception as exc:
            self.close()
            raise ConfigError(f"the vLLM engine for {self.model!r} did not start: {exc}") from exc

    async def generate(self, request: GenerationRequest) -> Generation:
        return Generation(**await self._actor.generate.remote(asdict(request)))

    async def check_health(self) -> None:
        await self._actor.check_health.remote()

    def close(self) -> None:
        import ray

        if self._actor is not None:
            ray.kill(self._actor)
            self._actor = None
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()


class OpenAIEngine:
    """An OpenAI-compatible chat-completions endpoint (e.g. ``vllm serve``), reached over HTTP.

    Args:
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1``.
        model: the served model's name; default: the first one ``GET /models`` lists.
        api_key_env: environment variable holding a bearer token, if the server needs one.
        timeout_s: per request.
    """

    kind = "openai"

    def __init__(self, base_url: str, model: str | None = None, *, api_key_env: str = "OPENAI_API_KEY",
                 timeout_s: float = 300.0):
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._api_key = os.environ.get(api_key_env)
        self.model = model or self._first_model()

    def _request(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise ConnectionError(f"{self.base_url}{path} answered HTTP {exc.code}: {exc.read()[:300]!r}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ConnectionError(f"cannot reach {self.base_url}{path}: {exc}") from None

    def _first_model(self) -> str:
        models = self._request("GET", "/models").get("data") or []
        if not models:
            raise ConfigError(f"{self.base_url}/models lists no model; give the model name in the llm config")
        return str(models[0]["id"])

    async def generate(self, request: GenerationRequest) -> Generation:
        payload = {
            "model": self.model,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "answer", "schema": request.schema, "strict": True}},
        }
        if request.seed is not None:
            payload["seed"] = request.seed
        started = time.perf_counter()
        body = await asyncio.to_thread(self._request, "POST", "/chat/completions", payload)
        choice = body["choices"][0]
        usage = body.get("usage") or {}
        return Generation(
            text=choice["message"].get("content") or "",
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            latency_s=round(time.perf_counter() - started, 3),
            model=self.model,
        )

    async def check_health(self) -> None:
        await asyncio.to_thread(self._request, "GET", "/models")

    def close(self) -> None:
        """Nothing to free: every request opens its own connection."""


def llm_runtime_env(python: str | None = None) -> dict[str, Any]:
    """Ray runtime_env that runs an actor with the vLLM environment's Python and this checkout on its path."""
    executable = Path(python or os.environ.get("METALLMIX_LLM_PYTHON") or LLM_VENV_PYTHON)
    if not executable.is_file():
        raise ConfigError(
            f"no vLLM environment at {executable}: run `bash setup_llm.sh` in {REPO_ROOT} "
            "(or set METALLMIX_LLM_PYTHON to a Python that imports vllm)"
        )
    env = {key: os.environ.get(key, value) for key, value in VLLM_ENV.items()}
    return {"py_executable": str(executable), "env_vars": {"PYTHONPATH": str(REPO_ROOT), **env}}


def load_llm_config(name: str) -> dict[str, Any]:
    """The config ``conf/llm/<name>.yaml`` (or a YAML file path) as a dict."""
    import yaml

    path = Path(name) if name.endswith((".yaml", ".yml")) else CONF_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CONF_DIR.glob("*.yaml"))
        raise ConfigError(f"no llm config {name!r} ({path} does not exist); known: {known}")
    config = yaml.safe_load(path.read_text()) or {}
    if not isinstance(config, dict):
        raise ConfigError(f"{path} must hold a mapping, got {type(config).__name__}")
    return config


def engine_config(spec: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """A spec (module docstring) as a config mapping with ``engine`` set; None for ``none``.

    ``engine: vllm`` takes ``VLLMSettings``'s fields and ``python`` (the vLLM environment's
    interpreter, for the Ray actor); ``engine: openai`` takes ``base_url``, ``model``,
    ``api_key_env`` and ``timeout_s``.
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec.strip().lower() == "none":
            return None
        if spec.startswith(("http://", "https://")):
            return {"engine": "openai", "base_url": spec}
        if spec.endswith((".yaml", ".yml")) or (CONF_DIR / f"{spec}.yaml").is_file():
            return engine_config(load_llm_config(spec))
        return {"engine": "vllm", "model": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"an llm spec is a string, a mapping or an engine, got {type(spec).__name__}")
    config = {"engine": "vllm", **spec}
    if config["engine"] == "none":
        return None
    known = {"vllm": {"engine", "python", *VLLMSettings.__dataclass_fields__},
             "openai": {"engine", "base_url", "model", "api_key_env", "timeout_s"}}
    if config["engine"] not in known:
        raise ConfigError(f"unknown llm engine {config['engine']!r}; known: {sorted(known)}")
    unknown = sorted(set(config) - known[config["engine"]])
    if unknown:
        raise ConfigError(f"unknown {config['engine']} llm setting(s) {unknown}; known: {sorted(known[config['engine']])}")
    if config["engine"] == "openai" and "base_url" not in config:
        raise ConfigError("an openai llm config needs base_url (e.g. http://127.0.0.1:8000/v1)")
    return config


def make_engine(spec: str | dict[str, Any] | LLMEngine | None) -> LLMEngine | None:
    """An engine from a spec (see ``engine_config``); None for ``none``.

    vLLM runs in this process when ``vllm`` imports here, else in a Ray actor of the vLLM environment.
    """
    if isinstance(spec, LLMEngine):
        return spec
    config = engine_config(spec)
    if config is None:
        return None
    kind = config.pop("engine")
    if kind == "openai":
        return OpenAIEngine(**config)
    python = config.pop("python", None)
    if python is None and importlib.util.find_spec("vllm") is not None:
        return VLLMEngine(config)
    return RayVLLMEngine(config, python=python)


def _settings(settings: VLLMSettings | dict[str, Any] | None) -> VLLMSettings:
    if settings is None:
        return VLLMSettings()
    if isinstance(settings, VLLMSettings):
        return settings
    unknown = sorted(set(settings) - set(VLLMSettings.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"unknown vllm setting(s) {unknown}; known: {sorted(VLLMSettings.__dataclass_fields__)}")
    return VLLMSettings(**settings)
