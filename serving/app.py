"""metallmix's Ray Serve application: HTTP ingress -> recommender -> LLM engine, and the judge.

    cd <repo>
    .venv/bin/serve run serving/config.yaml                        # local: starts Ray, blocks
    .venv/bin/ray start --head                                     # or on a running cluster:
    .venv/bin/serve deploy serving/config.yaml

``serving`` is installed with metallmix (``bash setup.sh``), so every node imports it without PYTHONPATH;
setup.sh also makes ``ray`` and ``serve`` use Ray's token authentication when the head does
(serving/metallmix_ray_auth.pth; docs/llm.md, "Serving").

Deployments (backpressure in docs/llm.md):

- ``llm_engine`` (``serving.engine.EngineDeployment``): vLLM, run by the vLLM environment's Python
  (``runtime_env.py_executable``); absent when the LLM is ``none`` or an OpenAI-compatible URL;
- ``judge_engine``: a second engine, only when the judge's model differs from the picker's;
- ``recommender``: holds a ``metallmix.service.RecommendationService`` (the Recommender loaded, or fitted
  once and cached) and answers each request with it: shortlist, LLM pick, one repair, the flagged
  fallback, judge, validation -- the same code as ``metallmix recommend`` in process;
- ``judge``: scores an answer for the service (``metallmix.service.LocalJudge``: rubric + deterministic checks);
- ``ingress``: FastAPI: ``POST /recommend``, ``GET /health``, OpenAPI docs at ``/docs``.

The deployments add nothing to the service: they only place its parts on replicas. Bad requests never
reach the recommender: the body is limited to ``MAX_BODY_BYTES`` (413), and the service's
``RecommendRequest`` (strict types, no unknown fields, finite numbers within ``MAX_META_FEATURE_VALUE``,
typed constraints) answers 422 with a ``detail`` that names each wrong field and what to send instead.
Errors found later: a dataset name the server does not have, 404; any other metallmix error (e.g. an
unknown meta-feature, infeasible constraints), 422; a full queue, 503 (backpressure, retry later).
"""

from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from metallmix.errors import ConfigError, DatasetNotFoundError, MetallmixError
from metallmix.llm.answer import describe_error
from metallmix.llm.engines import DEFAULT_MODEL, REPO_ROOT, engine_config, llm_runtime_env, make_engine
from metallmix.llm.prompt import PromptOptions
from metallmix.service import (  # noqa: F401 - the limits are re-exported: the API documents them
    DEFAULT_MIN_JUDGE_SCORE,
    MAX_DESCRIPTION_CHARS,
    MAX_META_FEATURE_VALUE,
    MAX_META_FEATURES,
    MAX_TOP_K,
    LLMOptions,
    LocalJudge,
    RecommendationService,
    RecommendRequest,
    RecommendResponse,
    RequestConstraints,
    obtain_recommender,
)
from serving.engine import DeploymentEngine, EngineDeployment

DEFAULT_META_DATASET = "quicktune:builtin"  # the Quick-Tune runs shipped with metallmix
SPEC_PREFIXES = ("quicktune:", "medmnistplus:", "qtt:")  # metallmix.metadataset.load_meta_dataset's importers
MAX_BODY_BYTES = 1 << 20  # 1 MiB: room for the longest description, JSON-escaped
RETRY_AFTER_S = 5  # what a 503 (full queue) asks the client to wait

class AppArgs(BaseModel):
    """Arguments of the application (``args:`` in serving/config.yaml, or ``key=value`` to ``serve run``).

    Args:
        recommender: a saved Recommender folder, or a meta-dataset spec to fit one on at start (cached
            under ~/.cache/metallmix/recommenders by content hash); relative paths: from the repo root.
        llm: the picker: a conf/llm name, a model alias or folder, an OpenAI-compatible URL, or ``none``.
        judge_llm: ``same`` (the picker's engine), another spec, or ``none`` (deterministic checks only).
        llm_python: the vLLM environment's Python (default ``<repo>/.venv-llm/bin/python``).
        timeout_s: longest wait for one LLM call before the fallback.
        min_judge_score: an answer the judge scores below this mean (1-5) is repaired once, then falls back.
        prompt: ``PromptOptions`` fields.
    """

    model_config = ConfigDict(extra="forbid")

    recommender: str = DEFAULT_META_DATASET
    llm: str | dict[str, Any] = "none"  # measured: no CPU model passes (docs/llm.md, "Which model")
    judge_llm: str | dict[str, Any] = "same"
    llm_python: str | None = None
    timeout_s: float = Field(300.0, gt=0)
    min_judge_score: float = Field(DEFAULT_MIN_JUDGE_SCORE, ge=0, le=5)
    prompt: dict[str, Any] = Field(default_factory=dict)


def resolve_spec(spec: str) -> str:
    """A meta-dataset spec or folder with a relative path made absolute against the repo root.

    ``PREFIX:builtin`` (a knowledge base shipped with metallmix) stays as it is; a path that does not
    exist is refused here, at deploy time, instead of failing in the recommender's replica.
    """
    prefix = next((p for p in SPEC_PREFIXES if spec.startswith(p)), "")
    rest = spec[len(prefix):]
    if prefix and rest == "builtin":
        return spec
    path = Path(rest).expanduser()
    if not path.is_absolute():
        path = REPO_ROOT / path
    if not path.exists():
        raise ConfigError(
            f"recommender {spec!r}: {path} does not exist; give a saved Recommender folder, a meta-dataset "
            f"(.parquet file, store folder, or {', '.join(p + 'DIR' for p in SPEC_PREFIXES)}), or a knowledge base "
            f"shipped with metallmix: {', '.join(p + 'builtin' for p in SPEC_PREFIXES)}")
    return f"{prefix}{path}"


@serve.deployment(max_ongoing_requests=16, max_queued_requests=64, ray_actor_options={"num_cpus": 0})
class JudgeDeployment:
    """The judge (``metallmix.service.LocalJudge``): rubric scores from its engine (if any) and the checks."""

    def __init__(self, engine: DeploymentHandle | dict[str, Any] | None, model: str | None, options: dict[str, Any]):
        self.local = LocalJudge(_engine_from(engine, model), _options(options))

    async def judge(self, document: dict[str, Any], answer: dict[str, Any] | None, errors: list[str],
                    description: str | None, use_llm: bool) -> dict[str, Any]:
        return await self.local(document, answer, errors, description, use_llm)


class RemoteJudge:
    """A ``metallmix.service.Judge`` that asks the judge deployment; when its replica fails, the answer's
    checks are still run here (``judge.error`` says why there are no scores)."""

    def __init__(self, handle: DeploymentHandle, options: LLMOptions):
        self.handle = handle
        self.checks_only = LocalJudge(None, options)

    async def __call__(self, document: dict[str, Any], answer: dict[str, Any] | None, errors: list[str],
                       description: str | None = None, use_llm: bool = True) -> dict[str, Any]:
        try:
            return await self.handle.judge.remote(document, answer, errors, description, use_llm)
        except Exception as exc:  # the judge's replica failed: the answer goes out with the checks only
            verdict = await self.checks_only(document, answer, errors, description, False)
            verdict["error"] = f"judge deployment failed: {describe_error(exc)}"
            return verdict


@serve.deployment(max_ongoing_requests=16, max_queued_requests=64, ray_actor_options={"num_cpus": 0})
class RecommenderDeployment:
    """Holds the ``metallmix.service.RecommendationService`` (its Recommender loaded once, the picker's engine);
    judges through the judge deployment."""

    def __init__(self, recommender: str, engine: DeploymentHandle | dict[str, Any] | None, model: str | None,
                 judge: DeploymentHandle, options: dict[str, Any]):
        folder = Path(recommender)
        if (folder / "manifest.json").is_file():
            loaded = obtain_recommender(None, str(folder), None)
        else:
            loaded = obtain_recommender(recommender, None, None)
        llm_options = _options(options)
        self.service = RecommendationService(
            loaded, picker=_engine_from(engine, model), judge=RemoteJudge(judge, llm_options), options=llm_options,
            selection={"default": False, "reason": "the knowledge base this server was deployed with "
                                                   "(serving/config.yaml, args.recommender)"})

    async def recommend(self, request: dict[str, Any]) -> dict[str, Any]:
        return await self.service.recommend(request)

    async def health(self) -> dict[str, Any]:
        return await self.service.health()


api = FastAPI(
    title="metallmix",
    description="Zero-shot recommendation of a pretrained backbone and its fine-tuning hyperparameters, "
                "picked and justified by a local LLM among the meta-learner's shortlist, scored by an LLM judge.",
    version="0.1.0",
)
EXAMPLE_BODY = '{"meta_features": {"n_images": 2000, "n_classes": 5}, "llm": false}'


# Everything the routes use comes before the Ingress class: @serve.ingress freezes a copy of `api` (its
# routes, handlers and middleware, and the globals they use) when the class is defined; a helper defined
# after it is a NameError in the replica.


def describe_validation_errors(errors: list[dict[str, Any]], limit: int = 10) -> str:
    """One sentence per validation error, naming the field (``meta_features.n_images``) and what to send."""
    known = {(): list(RecommendRequest.model_fields), ("constraints",): list(RequestConstraints.model_fields)}
    parts = []
    for error in errors[:limit]:
        loc = tuple(str(part) for part in error.get("loc", ()))
        loc = loc[1:] if loc[:1] == ("body",) else loc
        kind = error.get("type", "")
        if kind == "json_invalid":
            parts.append(f"the body is not valid JSON (decode error at character {loc[-1] if loc else '?'}): "
                         f"send one JSON object, e.g. {EXAMPLE_BODY}")
        elif not loc:  # the body itself: missing, or not an object
            parts.append(f"the body must be one JSON object sent with Content-Type: application/json, e.g. {EXAMPLE_BODY}")
        elif kind == "extra_forbidden":
            fields = known.get(loc[:-1])
            parts.append(f"{'.'.join(loc)}: unknown field" + (f"; the known ones are {', '.join(fields)}" if fields else ""))
        elif kind == "string_pattern_mismatch" and loc == ("dataset",):
            parts.append("dataset: give a registered dataset name (letters, digits, _ or -, optionally @SIZE, "
                         "e.g. breastmnist or retinamnist@64), not a path")
        else:
            parts.append(f"{'.'.join(loc)}: {error.get('msg', 'invalid')}")
    if len(errors) > limit:
        parts.append(f"and {len(errors) - limit} more")
    return "; ".join(parts)


def _content_length(scope: dict[str, Any]) -> int | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large(exc: "BodyTooLargeError") -> JSONResponse:
    size = f"{exc.size:,} bytes" if exc.declared else f"over {MAX_BODY_BYTES:,} bytes"
    return JSONResponse(status_code=413, content={
        "detail": f"the request body is {size}; the limit is {MAX_BODY_BYTES:,} bytes: send only meta_features or "
                  f"dataset, constraints, top_k and a description of at most {MAX_DESCRIPTION_CHARS:,} characters"})


def _clip(exc: BaseException, chars: int = 1000) -> str:
    return str(exc)[:chars]


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    lines = [line for line in str(cause).splitlines() if line.strip()]
    return (lines[0] if lines else type(cause).__name__)[:500]


class BodyTooLargeError(Exception):
    """A request body over ``MAX_BODY_BYTES`` (raised while it is read; answered 413)."""

    def __init__(self, size: int, declared: bool):
        self.size, self.declared = size, declared
        super().__init__(f"request body of {'' if declared else 'more than '}{size} bytes")


class BodyLimitMiddleware:
    """ASGI middleware: a body over ``max_bytes`` is refused (413) before anything parses it -- at once when
    its Content-Length says so, else as soon as the bytes read pass the limit."""

    def __init__(self, app: Any, max_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _too_large(BodyTooLargeError(declared, True))(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLargeError(received, False)
            return message

        async def tracked_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except BodyTooLargeError as exc:
            if started:
                raise
            await _too_large(exc)(scope, receive, send)


api.add_middleware(BodyLimitMiddleware, max_bytes=MAX_BODY_BYTES)


@api.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422: ``detail`` says, field by field, what is wrong and what to send; ``errors`` lists where and why,
    without echoing the input (it may be huge, or NaN, which JSON cannot carry)."""
    errors = [{key: error[key] for key in ("loc", "msg", "type") if key in error} for error in exc.errors()]
    return JSONResponse(status_code=422, content={"detail": describe_validation_errors(errors), "errors": errors[:20]})


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """FastAPI answers a body it cannot read with a bare 400; say why instead: 413 for a body over the limit,
    422 for JSON that Python's parser refuses (numbers of over 4,300 digits, nesting too deep)."""
    cause = exc.__cause__
    if exc.status_code == 400 and isinstance(cause, BodyTooLargeError):
        return _too_large(cause)
    if exc.status_code == 400 and isinstance(cause, (ValueError, RecursionError)):
        reason = "it nests too deeply" if isinstance(cause, RecursionError) else _first_line(cause)
        return JSONResponse(status_code=422, content={
            "detail": f"the body is not JSON this server can read ({reason}): send one JSON object of plain "
                      f"numbers and strings, e.g. {EXAMPLE_BODY}"})
    return JSONResponse(status_code=exc.status_code, content={"detail": exc.detail}, headers=exc.headers)


@serve.deployment(max_ongoing_requests=64, max_queued_requests=256, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Ingress:
    """HTTP front: validates requests and maps metallmix's errors to HTTP statuses."""

    def __init__(self, recommender: DeploymentHandle):
        self.recommender = recommender

    @api.post("/recommend", summary="Recommend a config for a dataset, with the LLM's justification and the judge's scores",
              responses={404: {"description": "the dataset name is not one this server has"},
                         413: {"description": f"the body is over {MAX_BODY_BYTES} bytes"},
                         422: {"description": "bad input; `detail` says what to fix"},
                         503: {"description": "the server's queues are full; retry after `Retry-After` seconds"},
                         200: {"model": RecommendResponse, "description": "the recommendation (validated by the service)"}})
    async def recommend(self, body: RecommendRequest) -> dict[str, Any]:
        try:
            body.check_source()
        except ConfigError as exc:
            raise HTTPException(422, str(exc)) from None
        try:
            return await self.recommender.recommend.remote(body.model_dump())
        except BackPressureError:
            raise HTTPException(503, f"the recommender's queue is full: retry in {RETRY_AFTER_S} s",
                                headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        except Exception as exc:
            cause = getattr(exc, "cause", None) or exc  # errors of another replica arrive as RayTaskError
            if isinstance(cause, DatasetNotFoundError):
                raise HTTPException(404, f"dataset {body.dataset!r} is not available on this server: {_clip(cause)}; "
                                         "or send its meta_features instead") from None
            if isinstance(cause, MetallmixError):
                raise HTTPException(422, _clip(cause)) from None
            if isinstance(cause, BackPressureError):
                raise HTTPException(503, f"the server's queues are full: retry in {RETRY_AFTER_S} s",
                                    headers={"Retry-After": str(RETRY_AFTER_S)}) from None
            raise HTTPException(500, f"internal error ({type(cause).__name__}: {_first_line(cause)}); the request "
                                     "itself was accepted: this is a server fault, see the Serve logs") from None

    @api.get("/health", summary="Whether the recommender and the LLM engine answer")
    async def health(self) -> dict[str, Any]:
        try:
            return {"status": "ok", **await self.recommender.health.remote()}
        except Exception as exc:  # any failure of a dependency is reported, not raised
            raise HTTPException(503, f"unhealthy: {type(exc).__name__}: {_first_line(exc)}") from None


def build_app(args: dict[str, Any]) -> serve.Application:
    """The application for ``serve run`` / ``serve deploy`` (``import_path: serving.app:build_app``)."""
    settings = AppArgs(**args)
    options = {"timeout_s": settings.timeout_s, "min_judge_score": settings.min_judge_score, "prompt": settings.prompt}
    _options(options)  # bad prompt options fail here, before any replica starts
    picker, picker_model = _engine_node(settings.llm, settings.llm_python, "llm_engine")
    if settings.judge_llm == "same":
        judge_engine, judge_model = picker, picker_model
    else:
        judge_engine, judge_model = _engine_node(settings.judge_llm, settings.llm_python, "judge_engine")
    judge = JudgeDeployment.options(name="judge").bind(judge_engine, judge_model, options)
    recommender = RecommenderDeployment.options(name="recommender").bind(
        resolve_spec(settings.recommender), picker, picker_model, judge, options)
    return Ingress.options(name="ingress").bind(recommender)


def _engine_node(spec: str | dict[str, Any], python: str | None, name: str) -> tuple[Any, str | None]:
    """A bound engine deployment (vLLM), an OpenAI config (built in the replica), or None."""
    config = engine_config(spec)
    if config is None:
        return None, None
    if config["engine"] == "openai":
        return config, config.get("model")
    config.pop("engine")
    runtime_env = llm_runtime_env(config.pop("python", None) or python)
    node = EngineDeployment.options(name=name, ray_actor_options={"num_cpus": 1, "runtime_env": runtime_env})
    return node.bind(config), str(config.get("model", DEFAULT_MODEL))


def _engine_from(engine: DeploymentHandle | dict[str, Any] | None, model: str | None) -> Any:
    if engine is None:
        return None
    if isinstance(engine, dict):
        return make_engine(engine)
    return DeploymentEngine(engine, model or "unknown")


def _options(options: dict[str, Any]) -> LLMOptions:
    return LLMOptions(timeout_s=options["timeout_s"], prompt=PromptOptions(**options.get("prompt", {})),
                      min_judge_score=options.get("min_judge_score", DEFAULT_MIN_JUDGE_SCORE))
