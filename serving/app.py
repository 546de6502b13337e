"""metallmix's Ray Serve application: HTTP ingress -> recommender -> LLM engine, and the judge.

    cd <repo>
    .venv/bin/serve run serving/config.yaml                        # local: starts Ray, blocks
    PYTHONPATH=$PWD .venv/bin/ray start --head --num-cpus 2        # or on a running cluster:
    .venv/bin/serve deploy serving/config.yaml

Deployments (backpressure in docs/llm.md):

- ``llm_engine`` (``serving.engine.EngineDeployment``): vLLM, run by the vLLM environment's Python
  (``runtime_env.py_executable``); absent when the LLM is ``none`` or an OpenAI-compatible URL;
- ``judge_engine``: a second engine, only when the judge's model differs from the picker's;
- ``recommender``: loads (or fits once, cached) the Recommender, scores the shortlist, asks the LLM
  to pick (one repair, then the flagged fallback);
- ``judge``: scores the pick (rubric + deterministic checks);
- ``ingress``: FastAPI: ``POST /recommend``, ``GET /health``, OpenAPI docs at ``/docs``.
"""

import asyncio
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from metallmix.errors import MetallmixError
from metallmix.llm.answer import describe_error
from metallmix.llm.engines import DEFAULT_MODEL, REPO_ROOT, engine_config, llm_runtime_env, make_engine
from metallmix.llm.pipeline import LLMOptions, choose_candidate, judge_pick, validate_recommendation
from metallmix.llm.prompt import PromptOptions
from serving.engine import DeploymentEngine, EngineDeployment

DEFAULT_META_DATASET = "quicktune:builtin"  # the Quick-Tune runs shipped with metallmix
DATASET_NAME = r"^[A-Za-z][A-Za-z0-9_\-]{0,63}(@[0-9]{1,4})?$"
MAX_DESCRIPTION_CHARS = 100_000
MAX_TOP_K = 20

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class AppArgs(BaseModel):
    """Arguments of the application (``args:`` in serving/config.yaml, or ``key=value`` to ``serve run``).

    Args:
        recommender: a saved Recommender folder, or a meta-dataset spec to fit one on at start (cached
            under ~/.cache/metallmix/recommenders by content hash); relative paths: from the repo root.
        llm: the picker: a conf/llm name, a model alias or folder, an OpenAI-compatible URL, or ``none``.
        judge_llm: ``same`` (the picker's engine), another spec, or ``none`` (deterministic checks only).
        llm_python: the vLLM environment's Python (default ``<repo>/.venv-llm/bin/python``).
        timeout_s: longest wait for one LLM call before the fallback.
        prompt: ``PromptOptions`` fields.
    """

    model_config = ConfigDict(extra="forbid")

    recommender: str = DEFAULT_META_DATASET
    llm: str | dict[str, Any] = "smollm2"
    judge_llm: str | dict[str, Any] = "same"
    llm_python: str | None = None
    timeout_s: float = Field(300.0, gt=0)
    prompt: dict[str, Any] = Field(default_factory=dict)


class RecommendRequest(BaseModel):
    """Body of POST /recommend: meta-features or a registered dataset name, plus constraints."""

    model_config = ConfigDict(extra="forbid")

    meta_features: dict[str, FiniteFloat] | None = Field(
        None, description="the dataset's meta-features by name, e.g. {\"n_images\": 2000, \"n_classes\": 5}")
    dataset: str | None = Field(None, pattern=DATASET_NAME,
                                description="a dataset name the server has registered (e.g. breastmnist, retinamnist@64)")
    constraints: dict[str, Any] = Field(default_factory=dict,
                                        description="budget_minutes, max_params, backbones, max_p_fail (all optional)")
    top_k: int = Field(5, ge=1, le=MAX_TOP_K, description="shortlist length")
    description: str | None = Field(None, max_length=MAX_DESCRIPTION_CHARS,
                                    description="free text about the dataset; untrusted, cut before it reaches the LLM")
    llm: bool = Field(True, description="let the LLM pick and justify (false: the meta-learner's top, template text)")
    judge: bool = Field(True, description="let the judge score the LLM's answer")


def resolve_spec(spec: str) -> str:
    """A meta-dataset spec or folder with a relative path made absolute against the repo root."""
    prefix, sep, rest = spec.rpartition(":") if spec.startswith("quicktune:") else ("", "", spec)
    path = Path(rest).expanduser()
    if not path.is_absolute():
        path = REPO_ROOT / path
    return f"{prefix}{sep}{path}"


@serve.deployment(max_ongoing_requests=16, max_queued_requests=64, ray_actor_options={"num_cpus": 0})
class JudgeDeployment:
    """The judge: rubric scores from its engine (if any) and the deterministic checks."""

    def __init__(self, engine: DeploymentHandle | dict[str, Any] | None, model: str | None, options: dict[str, Any]):
        self.engine = _engine_from(engine, model)
        self.options = _options(options)

    async def judge(self, picked: dict[str, Any], description: str | None, use_llm: bool) -> dict[str, Any]:
        options = self.options if use_llm else _options_without_judge(self.options)
        return await judge_pick(picked, self.engine, options=options, description=description)


@serve.deployment(max_ongoing_requests=16, max_queued_requests=64, ray_actor_options={"num_cpus": 0})
class RecommenderDeployment:
    """Holds the Recommender (loaded once) and the picker's engine; judge through the judge deployment."""

    def __init__(self, recommender: str, engine: DeploymentHandle | dict[str, Any] | None, model: str | None,
                 judge: DeploymentHandle, options: dict[str, Any]):
        from metallmix.cli import obtain_recommender

        folder = Path(recommender)
        if (folder / "manifest.json").is_file():
            self.recommender = obtain_recommender(None, str(folder), None)
        else:
            self.recommender = obtain_recommender(recommender, None, None)
        self.engine = _engine_from(engine, model)
        self.judge = judge
        self.options = _options(options)

    async def recommend(self, request: dict[str, Any]) -> dict[str, Any]:
        from metallmix.recommend import recommend_for_dataset

        document = await asyncio.to_thread(
            recommend_for_dataset, self.recommender, dataset=request["dataset"], meta_features=request["meta_features"],
            constraints=request["constraints"] or None, top_k=request["top_k"],
        )
        if not request["llm"] or self.engine is None:
            return document
        picked = await choose_candidate(document, self.engine, options=self.options, description=request["description"])
        try:
            picked["judge"] = await self.judge.judge.remote(picked, request["description"], request["judge"])
        except Exception as exc:  # the judge's replica failed: the answer goes out with the checks only
            no_llm = _options_without_judge(self.options)
            picked["judge"] = await judge_pick(picked, None, options=no_llm, description=request["description"])
            picked["judge"]["error"] = f"judge deployment failed: {describe_error(exc)}"
        validate_recommendation(picked)
        return picked

    async def health(self) -> dict[str, Any]:
        llm = None
        if self.engine is not None:
            await asyncio.wait_for(self.engine.check_health(), 30)
            llm = {"model": self.engine.model, "engine": self.engine.kind}
        return {"meta_dataset": self.recommender.meta_dataset_, "llm": llm}


api = FastAPI(
    title="metallmix",
    description="Zero-shot recommendation of a pretrained backbone and its fine-tuning hyperparameters, "
                "picked and justified by a local LLM among the meta-learner's shortlist, scored by an LLM judge.",
    version="0.1.0",
)


@api.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with where and why, without echoing the input (it may be huge, or NaN, which JSON cannot carry)."""
    errors = [{key: error[key] for key in ("loc", "msg", "type") if key in error} for error in exc.errors()]
    return JSONResponse(status_code=422, content={"detail": errors})


@serve.deployment(max_ongoing_requests=64, max_queued_requests=256, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Ingress:
    """HTTP front: validates requests and maps metallmix's errors to HTTP statuses."""

    def __init__(self, recommender: DeploymentHandle):
        self.recommender = recommender

    @api.post("/recommend", summary="Recommend a config for a dataset, with the LLM's justification and the judge's scores")
    async def recommend(self, body: RecommendRequest) -> dict[str, Any]:
        if (body.meta_features is None) == (body.dataset is None):
            raise HTTPException(422, "give exactly one of meta_features (an object of numbers) and dataset (a registered name)")
        try:
            return await self.recommender.recommend.remote(body.model_dump())
        except Exception as exc:
            cause = getattr(exc, "cause", None) or exc  # errors of another replica arrive as RayTaskError
            if isinstance(cause, MetallmixError):
                raise HTTPException(422, str(cause)[:1000]) from None
            raise

    @api.get("/health", summary="Whether the recommender and the LLM engine answer")
    async def health(self) -> dict[str, Any]:
        try:
            return {"status": "ok", **await self.recommender.health.remote()}
        except Exception as exc:  # any failure of a dependency is reported, not raised
            raise HTTPException(503, f"unhealthy: {type(exc).__name__}: {_first_line(exc)}") from None


def build_app(args: dict[str, Any]) -> serve.Application:
    """The application for ``serve run`` / ``serve deploy`` (``import_path: serving.app:build_app``)."""
    settings = AppArgs(**args)
    options = {"timeout_s": settings.timeout_s, "prompt": settings.prompt}
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
    return LLMOptions(timeout_s=options["timeout_s"], prompt=PromptOptions(**options["prompt"]))


def _options_without_judge(options: LLMOptions) -> LLMOptions:
    return LLMOptions(prompt=options.prompt, temperature=options.temperature, seed=options.seed,
                      timeout_s=options.timeout_s, judge=False)


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    lines = [line for line in str(cause).splitlines() if line.strip()]
    return (lines[0] if lines else type(cause).__name__)[:500]
