"""The ``zeroshot_llm`` method: the configured LLM picks among the meta-learner's shortlist.

The Recommender (meta-learner, SHAP explainer, retrieval index) is fitted on the meta-dataset without
the held-out dataset; its shortlist is built over the held-out dataset's recorded configurations
(``Recommender.shortlist_document``) and ``metallmix.service`` picks one, exactly as ``metallmix recommend
--llm`` does (deterministic checks; one repair; then the meta-learner's pick, flagged as a fallback). The
judge is off and the role is "pick" here: the benchmark measures the LLM's own pick, not the judge.
The engine (``llm_engine=...``: smollm2, qwen2.5-coder-1.5b, a model folder, an OpenAI-compatible URL) is
started once per process and reused by every job of a multirun.
"""

from __future__ import annotations

import asyncio
import atexit
import time
from collections.abc import Mapping
from typing import Any

import pandas as pd

from metallmix.errors import ConfigError

_ENGINES: dict[str, Any] = {}


def _engine(spec: Any) -> Any:
    from metallmix.llm import make_engine

    key = str(spec)
    if key not in _ENGINES:
        engine = make_engine(spec)
        if engine is None:
            raise ConfigError(f"llm_engine={spec!r} names no engine; method=zeroshot_llm needs one, e.g. llm_engine=smollm2")
        _ENGINES[key] = engine
        atexit.register(engine.close)
    return _ENGINES[key]


def llm_pick(cfg: Mapping[str, Any], held_out: str, meta_features: dict[str, float],
             candidates: pd.DataFrame) -> tuple[str, float, float, dict[str, Any]]:
    """(picked candidate id, response seconds, fit seconds, extra result fields)."""
    from metallmix.bench.run import fitted_without, learner_params
    from metallmix.llm.prompt import PromptOptions
    from metallmix.recommend import Recommender
    from metallmix.service import LLMOptions, RecommendationService

    if not cfg.get("llm_engine"):
        raise ConfigError("method=zeroshot_llm needs an engine: set llm_engine=smollm2 (or another conf/llm name, a model "
                          "folder, an OpenAI-compatible URL); run setup_llm.sh first for the local models")
    engine = _engine(cfg["llm_engine"])
    params = learner_params(str(cfg["meta_dataset"]), cfg.get("learner"))
    recommender, fit_seconds = fitted_without("recommender", lambda: Recommender(metalearner_params=dict(params)),
                                              str(cfg["meta_dataset"]), held_out, params)
    started = time.perf_counter()
    document = recommender.shortlist_document(meta_features, candidates, int(cfg.get("llm_top_k", 5)))
    options = LLMOptions(judge=False, prompt=PromptOptions(role="pick"))  # the LLM's own pick is what is measured
    service = RecommendationService(recommender, picker=engine, options=options)
    picked = asyncio.run(service.pick(document, use_judge=False, validate=False))  # a shortlist, not a whole answer
    response_seconds = time.perf_counter() - started
    llm = picked["llm"]
    extra = {"llm": {"engine": str(cfg["llm_engine"]), "chosen_rank": llm["chosen_rank"], "fallback": llm["fallback"],
                     "fallback_reason": llm["fallback_reason"], "latency_s": llm["latency_s"],
                     "metalearner_pick": document["candidate_id"]}}
    return str(picked["candidate_id"]), response_seconds, fit_seconds, extra
