"""The LLM step: pick one shortlisted candidate, justify it, judge it.

``pick_with_llm(document, engine, ...)`` takes recommend()'s document and returns it with the LLM's
choice applied and two keys added (schema: ``recommendation_with_llm_schema()``):

- ``llm``: model, engine, latency, attempts, whether it fell back and why, the LLM's answer;
- ``judge``: rubric scores (format, accuracy, completeness), deterministic checks, judge model/latency.

The LLM chooses among the shortlist only; the returned config, predictions and score are copied
from the chosen shortlist item, never from the LLM's text. An unusable answer gets one repair
attempt; if that fails too, or the engine fails or times out, the meta-learner's top candidate is
kept with the template explanation, flagged ``llm.fallback: true`` with the reason.
"""

from __future__ import annotations

import asyncio
import copy
import time
from dataclasses import dataclass, field
from typing import Any

from metallmix.errors import ConfigError
from metallmix.llm.answer import describe_error, parse_answer, repair_message
from metallmix.llm.engines import GenerationRequest, LLMEngine, make_engine
from metallmix.llm.judge import RUBRIC, judge_answer
from metallmix.llm.prompt import PromptOptions, build_pick_prompt

TOP_FIELDS = ("candidate_id", "config", "backbone", "param_count", "predicted", "score")


@dataclass(frozen=True)
class LLMOptions:
    """Settings of the LLM step.

    Args:
        prompt: what the prompt shows (``PromptOptions``).
        temperature: sampling temperature (0: greedy, reproducible).
        seed: sampling seed.
        timeout_s: longest wait for one engine call (pick, repair or judge) before falling back.
        judge: run the LLM judge (the deterministic checks always run).
    """

    prompt: PromptOptions = field(default_factory=PromptOptions)
    temperature: float = 0.0
    seed: int = 0
    timeout_s: float = 300.0
    judge: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.timeout_s, (int, float)) or self.timeout_s <= 0:
            raise ConfigError(f"timeout_s must be a positive number of seconds, got {self.timeout_s!r}")
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature!r}")


async def pick_with_llm(
    document: dict[str, Any],
    engine: LLMEngine,
    *,
    judge_engine: LLMEngine | None = None,
    options: LLMOptions | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    """recommend()'s document with the LLM's pick and justification (``llm``) and the verdict (``judge``)."""
    options = options or LLMOptions()
    picked = await choose_candidate(document, engine, options=options, description=description)
    picked["judge"] = await judge_pick(picked, judge_engine, options=options, description=description)
    return picked


async def choose_candidate(
    document: dict[str, Any],
    engine: LLMEngine,
    *,
    options: LLMOptions | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    """The LLM's pick applied to a copy of ``document``, with the ``llm`` key (no ``judge`` yet)."""
    options = options or LLMOptions()
    prompt = build_pick_prompt(document, options.prompt, description)
    messages = list(prompt.messages)
    answer, errors, failure = None, [], None
    attempts = prompt_tokens = completion_tokens = 0
    started = time.perf_counter()
    for _ in range(2):  # the answer, then at most one repair
        attempts += 1
        request = GenerationRequest(messages=messages, schema=prompt.schema, max_tokens=prompt.max_tokens,
                                    temperature=options.temperature, seed=options.seed)
        try:
            generation = await asyncio.wait_for(engine.generate(request), options.timeout_s)
        except TimeoutError:
            failure = f"engine timed out after {options.timeout_s:g} s"
            break
        except Exception as exc:  # a crashed or unreachable engine falls back, it does not lose the request
            failure = f"engine failed: {describe_error(exc)}"
            break
        prompt_tokens += generation.prompt_tokens or 0
        completion_tokens += generation.completion_tokens or 0
        answer, errors = parse_answer(generation.text, generation.finish_reason, prompt)
        if not errors:
            break
        messages = messages + [{"role": "assistant", "content": generation.text},
                               {"role": "user", "content": repair_message(errors, prompt)}]
    if failure is None and errors:
        failure = "invalid answer after one repair: " + "; ".join(errors)[:500]

    out = copy.deepcopy(document)
    chosen_rank = None
    if failure is None:
        chosen = next(item for item in document["shortlist"] if str(item["candidate_id"]) == answer["candidate_id"])
        chosen_rank = int(chosen["rank"])
        for key in TOP_FIELDS:
            out[key] = copy.deepcopy(chosen[key])
        out["explanation"] = answer["justification"]
        out["explanation_source"] = "llm"
    out["llm"] = {
        "model": engine.model,
        "engine": engine.kind,
        "latency_s": round(time.perf_counter() - started, 3),
        "attempts": attempts,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "fallback": failure is not None,
        "fallback_reason": failure,
        "chosen_rank": chosen_rank,
        "agrees_with_metalearner": None if chosen_rank is None else chosen_rank == 1,
        "answer": answer,
        "errors": errors,
        "evidence_shown": {"shap": options.prompt.include_shap, "neighbours": options.prompt.include_neighbours},
    }
    return out


async def judge_pick(
    picked: dict[str, Any],
    engine: LLMEngine | None,
    *,
    options: LLMOptions | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    """The ``judge`` entry of a document that ``choose_candidate`` returned.

    The prompt is rebuilt from ``picked`` (its shortlist, evidence and meta-features are the
    original document's), so the judge can run elsewhere (a Serve deployment) from the document alone.
    """
    options = options or LLMOptions()
    prompt = build_pick_prompt(picked, options.prompt, description)
    llm = picked["llm"]
    errors = llm["errors"] or ([f"no usable answer: {llm['fallback_reason']}"] if llm["fallback"] else [])
    return await judge_answer(engine if options.judge else None, prompt, llm["answer"], errors, picked,
                              timeout_s=options.timeout_s, temperature=options.temperature, seed=options.seed)


def recommend_with_llm(
    recommender: Any,
    meta_features: dict[str, Any] | None = None,
    constraints: Any = None,
    *,
    dataset: str | None = None,
    top_k: int = 5,
    engine: str | dict[str, Any] | LLMEngine | None = "smollm2",
    judge_engine: str | dict[str, Any] | LLMEngine | None = "same",
    description: str | None = None,
    options: LLMOptions | None = None,
) -> dict[str, Any]:
    """recommend() followed by the LLM step, in this process; what ``metallmix recommend --llm`` calls.

    Args:
        recommender: a fitted ``metallmix.recommend.Recommender``.
        meta_features: the new dataset's meta-features (or give ``dataset``: a path or registered name).
        constraints: as for recommend().
        engine: an ``LLMEngine`` or a spec for ``make_engine`` ("smollm2", "qwen2.5-coder-1.5b", a
            conf/llm name, a model folder, an OpenAI-compatible URL); ``none``/None: no LLM (the
            recommender's template explanation, ``explanation_source: template``, no llm/judge keys).
        judge_engine: "same" (the picker's engine), another spec, or ``none`` (checks only).
        description: free text about the dataset (untrusted; shown fenced and cut).

    Engines built here from specs are closed before returning; engines passed in are left open.
    """
    from metallmix.recommend import recommend_for_dataset

    document = recommend_for_dataset(
        recommender,
        dataset=dataset,
        meta_features=meta_features,
        constraints=constraints,
        top_k=top_k,
    )
    built = []
    try:
        picker = _engine(engine, built)
        if picker is None:
            return document
        judge = picker if judge_engine == "same" else _engine(judge_engine, built)
        result = asyncio.run(pick_with_llm(document, picker, judge_engine=judge, options=options, description=description))
    finally:
        for made in reversed(built):  # the first one may own the Ray cluster the others run on
            made.close()
    validate_recommendation(result)
    return result


def _engine(spec: Any, built: list[LLMEngine]) -> LLMEngine | None:
    if spec is None or isinstance(spec, LLMEngine):
        return spec
    engine = make_engine(spec)
    if engine is not None:
        built.append(engine)
    return engine


def recommendation_with_llm_schema() -> dict[str, Any]:
    """The recommendation schema extended with the ``llm`` and ``judge`` keys."""
    from metallmix.schemas import load_schema

    schema = copy.deepcopy(load_schema())
    number_or_null = {"type": ["number", "null"]}
    score = {"enum": [1, 2, 3, 4, 5]}
    schema["required"] = [*schema["required"], "llm", "judge"]
    schema["properties"]["llm"] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["model", "engine", "latency_s", "attempts", "prompt_tokens", "completion_tokens", "fallback",
                     "fallback_reason", "chosen_rank", "agrees_with_metalearner", "answer", "errors", "evidence_shown"],
        "properties": {
            "model": {"type": "string"},
            "engine": {"type": "string"},
            "latency_s": {"type": "number", "minimum": 0},
            "attempts": {"type": "integer", "minimum": 1, "maximum": 2},
            "prompt_tokens": {"type": "integer", "minimum": 0},
            "completion_tokens": {"type": "integer", "minimum": 0},
            "fallback": {"type": "boolean"},
            "fallback_reason": {"type": ["string", "null"]},
            "chosen_rank": {"type": ["integer", "null"], "minimum": 1},
            "agrees_with_metalearner": {"type": ["boolean", "null"]},
            "answer": {"type": ["object", "null"], "description": "the LLM's last parsed answer (also when rejected)"},
            "errors": {"type": "array", "items": {"type": "string"}, "description": "why that answer was rejected"},
            "evidence_shown": {"type": "object", "additionalProperties": {"type": "boolean"}},
        },
    }
    schema["properties"]["judge"] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["scores", "mean_score", "comment", "checks", "model", "engine", "latency_s", "error"],
        "properties": {
            "scores": {"oneOf": [{"type": "null"}, {"type": "object", "additionalProperties": False,
                                                    "required": list(RUBRIC), "properties": {n: score for n in RUBRIC}}]},
            "mean_score": number_or_null,
            "comment": {"type": ["string", "null"]},
            "checks": {"type": "object", "required": ["passed", "schema_valid", "candidate_in_shortlist"]},
            "model": {"type": ["string", "null"]},
            "engine": {"type": ["string", "null"]},
            "latency_s": number_or_null,
            "error": {"type": ["string", "null"]},
        },
    }
    return schema


def validate_recommendation(document: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError unless ``document`` follows the schema it claims.

    With ``llm``/``judge`` keys: ``recommendation_with_llm_schema()``; without: the recommender's.
    """
    import jsonschema

    from metallmix.schemas import load_schema

    schema = recommendation_with_llm_schema() if "llm" in document else load_schema()
    jsonschema.Draft202012Validator(schema).validate(document)
