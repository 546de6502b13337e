"""The judge: a second LLM call that scores the pick on a rubric, beside deterministic checks.

Rubric, 1 (poor) to 5 (excellent) each:

- format: a clear, well-formed justification that cites evidence labels;
- accuracy: consistent with the evidence and the search space (the chosen candidate's numbers,
  the SHAP attributions and the neighbours' runs are stated correctly; nothing invented);
- completeness: every chosen value is justified (the backbone and the settings that set the chosen
  candidate apart, and the trade-off of accuracy, uncertainty, time and failure risk).

The judge's own answer is forced by a JSON schema (scores are enums 1-5) and validated like the
picker's; an unusable judge answer leaves the scores null with the reason in ``error``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import jsonschema

from metallmix.llm.answer import describe_error, deterministic_checks
from metallmix.llm.engines import GenerationRequest, LLMEngine
from metallmix.llm.prompt import PickPrompt

RUBRIC = ("format", "accuracy", "completeness")
COMMENT_MAX_CHARS = 200

JUDGE_SYSTEM_PROMPT = (
    "You are a strict reviewer of model-selection advice. An assistant chose one candidate configuration "
    "from a shortlist and justified it. Score the answer from 1 (poor) to 5 (excellent) on each criterion. "
    "format: the justification is clear, well formed and cites evidence labels. "
    "accuracy: every statement and number agrees with the evidence; nothing is invented. "
    "completeness: the justification covers the chosen backbone, the settings that set the candidate apart, "
    "and the trade-off between predicted accuracy, its uncertainty, training time and failure risk. "
    "Then write a one-sentence comment. Answer with the JSON object only."
)


def judge_schema() -> dict[str, Any]:
    """JSON schema of the judge's answer."""
    score = {"enum": [1, 2, 3, 4, 5]}
    return {
        "type": "object",
        "additionalProperties": False,
        "required": [*RUBRIC, "comment"],
        "properties": {**{name: score for name in RUBRIC},
                       "comment": {"type": "string", "minLength": 1, "maxLength": COMMENT_MAX_CHARS}},
    }


def judge_messages(prompt: PickPrompt, answer: dict[str, Any]) -> list[dict[str, str]]:
    """Chat messages asking the judge to score ``answer`` against the facts the picker saw."""
    return [
        {"role": "system", "content": JUDGE_SYSTEM_PROMPT},
        {"role": "user", "content": f"Evidence the assistant was given:\n{prompt.evidence_text}\n\n"
                                    f"The assistant's answer:\n{json.dumps(answer, ensure_ascii=False)}"},
    ]


async def judge_answer(
    engine: LLMEngine | None,
    prompt: PickPrompt,
    answer: dict[str, Any] | None,
    schema_errors: list[str],
    document: dict[str, Any],
    *,
    timeout_s: float,
    temperature: float = 0.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Rubric scores (null without a judge engine or a usable answer) and the deterministic checks."""
    result: dict[str, Any] = {
        "scores": None,
        "mean_score": None,
        "comment": None,
        "checks": deterministic_checks(answer, schema_errors, prompt, document),
        "model": getattr(engine, "model", None),
        "engine": getattr(engine, "kind", None),
        "latency_s": None,
        "error": None,
    }
    if engine is None:
        result["error"] = "no judge model configured: deterministic checks only"
        return result
    if answer is None or schema_errors:
        result["error"] = "not scored: the LLM gave no usable answer"
        return result
    schema = judge_schema()
    request = GenerationRequest(messages=judge_messages(prompt, answer), schema=schema,
                                max_tokens=COMMENT_MAX_CHARS + 64, temperature=temperature, seed=seed)
    started = time.perf_counter()
    try:
        generation = await asyncio.wait_for(engine.generate(request), timeout_s)
    except TimeoutError:
        result["error"] = f"judge engine timed out after {timeout_s:g} s"
        return result
    except Exception as exc:  # an engine crash must not lose the recommendation: report it
        result["error"] = f"judge engine failed: {describe_error(exc)}"
        return result
    finally:
        result["latency_s"] = round(time.perf_counter() - started, 3)
    if generation.finish_reason not in (None, "stop"):
        result["error"] = f"judge answer cut off (finish reason {generation.finish_reason!r})"
        return result
    try:
        verdict = json.loads(generation.text)
        jsonschema.validate(verdict, schema)
    except (json.JSONDecodeError, jsonschema.ValidationError) as exc:
        result["error"] = f"unusable judge answer ({type(exc).__name__}: {str(exc)[:200]})"
        return result
    result["scores"] = {name: int(verdict[name]) for name in RUBRIC}
    result["mean_score"] = round(sum(result["scores"].values()) / len(RUBRIC), 3)
    result["comment"] = verdict["comment"]
    return result
