"""The LLM step: a local LLM picks one shortlisted candidate and justifies it; an LLM judge scores it.

    from metallmix.llm import recommend_with_llm
    doc = recommend_with_llm(recommender, {"n_images": 2000, "n_classes": 5}, engine="smollm2")

Modules: ``prompt`` (prompt + answer schema), ``answer`` (validation + deterministic checks),
``engines`` (the ``LLMEngine`` protocol: vLLM in process or in a Ray actor, OpenAI-compatible HTTP),
``judge`` (rubric scoring), ``pipeline`` (pick, repair, fallback, judge), ``models`` (offline model
wheels converted for vLLM), ``client`` (the Serve application's HTTP API). Nothing here imports
pandas or vLLM at import time: the package also runs in the vLLM environment.
"""

from metallmix.llm.client import ServerError, recommend_via_server
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
from metallmix.llm.pipeline import (
    LLMOptions,
    choose_candidate,
    judge_pick,
    pick_with_llm,
    recommend_with_llm,
    recommendation_with_llm_schema,
    validate_recommendation,
)
from metallmix.llm.prompt import PromptOptions, build_pick_prompt

__all__ = [
    "Generation",
    "GenerationRequest",
    "LLMEngine",
    "LLMOptions",
    "OpenAIEngine",
    "PromptOptions",
    "RayVLLMEngine",
    "ServerError",
    "VLLMEngine",
    "VLLMSettings",
    "build_pick_prompt",
    "choose_candidate",
    "engine_config",
    "judge_answer",
    "judge_pick",
    "load_llm_config",
    "make_engine",
    "pick_with_llm",
    "recommend_via_server",
    "recommend_with_llm",
    "recommendation_with_llm_schema",
    "validate_recommendation",
]
