"""The LLM step's parts: prompt, answer checks, engines, judge, and the client of the Serve app.

Modules: ``prompt`` (prompt + answer schema), ``answer`` (validation + deterministic checks),
``engines`` (the ``LLMEngine`` protocol: vLLM in process or in a Ray actor, OpenAI-compatible HTTP),
``judge`` (rubric scoring), ``models`` (offline model wheels converted for vLLM), ``client`` (the Serve
application's HTTP API). The orchestration -- pick, one repair, fallback, judge, validation -- is
``metallmix.service``, the one place a recommendation request is answered:

    from metallmix.service import RecommendationService
    with RecommendationService.from_specs("quicktune:builtin", llm="smollm2") as service:
        answer = service.recommend_sync({"meta_features": {"n_images": 2000, "n_classes": 5}})

Nothing here imports pandas, pydantic or vLLM at import time: the package also runs in the vLLM environment.
"""

from metallmix.llm.client import ServerError, recommend_via_server, server_health
from metallmix.llm.engines import (
    Generation,
    GenerationRequest,
    LLMEngine,
    OpenAIEngine,
    RayVLLMEngine,
    VLLMEngine,
    VLLMSettings,
    engine_config,
    load_llm_config,
    make_engine,
)
from metallmix.llm.judge import judge_answer
from metallmix.llm.prompt import PromptOptions, build_pick_prompt

__all__ = [
    "Generation",
    "GenerationRequest",
    "LLMEngine",
    "OpenAIEngine",
    "PromptOptions",
    "RayVLLMEngine",
    "ServerError",
    "VLLMEngine",
    "VLLMSettings",
    "build_pick_prompt",
    "engine_config",
    "judge_answer",
    "load_llm_config",
    "make_engine",
    "recommend_via_server",
    "server_health",
]
