"""The judge: a second LLM call that scores the pick on a rubric, folded with deterministic checks.

Rubric, 1 (poor) to 5 (excellent) each, with anchored levels (the LLM judge is shown them, and the
verdict uses them):

- format: a clear, well-formed justification that cites evidence labels.
  5: valid JSON, complete sentences in its own words, every claim tied to a label shown;
  3: usable but clumsy (a sentence cut off, or labels missing or not among those shown);
  1: degenerate text: a repeated phrase, a copied prompt line, the instructions echoed, or broken JSON.
- accuracy: consistent with the evidence and the search space (the chosen candidate's numbers,
  the SHAP attributions and the neighbours' runs are stated correctly; nothing invented).
  5: every number and claim is found in the evidence; 3: a number that cannot be traced to it, the rest
  right; 1: a contradiction: the wrong predicted accuracy, a candidate not on the shortlist, a SHAP
  direction reversed or a label that was not shown.
- completeness: every chosen value is justified (the backbone and the settings that set the chosen
  candidate apart, and the trade-off of accuracy, uncertainty, time and failure risk).
  5: names the backbone, a setting that sets it apart from the runner-up, and SHAP or neighbour
  evidence; 3: one of these missing (the setting, or the SHAP/neighbour evidence); 1: the backbone is
  not named, or more than one of them is missing (e.g. off-topic text).

The verdict (``fold_verdict``) puts the deterministic checks (metallmix.llm.answer) in charge of the
band and the LLM in charge of the place inside it: a criterion whose checks all pass scores
``3 + (llm - 1) / 2`` (3 to 5; 5 without an LLM score), one with a failed check is capped at the
check's level (``CHECK_CAPS``: 1 or 2 above, one point lower for each further failure, never below 1)
and the LLM may lower it further. ``verdict_score`` is the mean of the three. So the verdict ranks a
faithful answer above a corrupted one even when the LLM's own scores do not discriminate, and an LLM
that does discriminate orders the answers within each band. The raw LLM scores stay in ``scores`` /
``mean_score``; the service's ``min_judge_score`` applies to ``verdict_score``.

The judge's own answer is forced by a JSON schema (scores are enums 1-5) and validated like the
picker's; an unusable judge answer leaves the scores null with the reason in ``error`` (the verdict
is then the checks' alone).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import jsonschema

from metallmix.llm.answer import CHECK_NAMES, describe_error, deterministic_checks
from metallmix.llm.engines import GenerationRequest, LLMEngine
from metallmix.llm.prompt import PickPrompt

RUBRIC = ("format", "accuracy", "completeness")
COMMENT_MAX_CHARS = 160
# the criterion each deterministic check bears on, and the highest level an answer failing it may get
CHECK_CAPS: dict[str, tuple[str, int]] = {
    "schema_valid": ("format", 1),
    "no_prompt_leak": ("format", 1),
    "no_repetition": ("format", 1),
    "no_copied_prompt_line": ("format", 1),
    "complete_sentence": ("format", 2),
    "evidence_cited": ("format", 2),
    "candidate_in_shortlist": ("accuracy", 1),
    "quoted_accuracy_matches": ("accuracy", 1),
    "claims_supported": ("accuracy", 1),
    "numbers_supported": ("accuracy", 2),
    "names_backbone": ("completeness", 1),
    "names_distinguishing_setting": ("completeness", 2),
    "cites_shap_or_neighbours": ("completeness", 2),
}
if set(CHECK_CAPS) != set(CHECK_NAMES) or {c for c, _ in CHECK_CAPS.values()} != set(RUBRIC):
    raise ImportError("metallmix.llm.judge.CHECK_CAPS must give every check of CHECK_NAMES a rubric criterion")

# The judge continues the picker's conversation (its prompt, whose system prompt holds the anchored rubric,
# then the answer as the assistant's turn): with prefix caching an engine reads only the answer and this anew.
JUDGE_INSTRUCTIONS = ("Now review the answer above with the rubric of your instructions: format, accuracy and "
                      "completeness from 1 to 5, and a one-sentence comment. Answer with the JSON object only.")


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


def fold_verdict(scores: dict[str, int] | None, checks: dict[str, Any]) -> dict[str, Any]:
    """The verdict: the rubric levels with the deterministic checks folded in (see the module doc).

    Returns ``verdict_scores`` (per criterion, 1-5), ``verdict_score`` (their mean) and ``capped_by`` (the
    failed checks, as ``check -> criterion <= level``)."""
    caps: dict[str, list[int]] = {name: [] for name in RUBRIC}
    capped_by = []
    for check, (criterion, level) in CHECK_CAPS.items():
        if not checks.get(check):
            caps[criterion].append(level)
            capped_by.append(f"{check} -> {criterion} <= {level}")
    levels = {}
    for criterion in RUBRIC:
        llm = None if scores is None else scores.get(criterion)
        if not caps[criterion]:
            level = 5.0 if llm is None else 3.0 + (llm - 1) / 2
        else:
            level = max(1.0, min(caps[criterion]) - (len(caps[criterion]) - 1))
            if llm is not None:
                level = max(1.0, min(level, float(llm)))
        levels[criterion] = round(level, 3)
    return {"verdict_scores": levels, "verdict_score": round(sum(levels.values()) / len(RUBRIC), 3),
            "capped_by": capped_by}


def judge_messages(prompt: PickPrompt, answer: dict[str, Any]) -> list[dict[str, str]]:
    """Chat messages asking the judge to score ``answer``: the picker's prompt, the answer (written as compactly
    as the engines write it), then the anchored rubric."""
    return [
        *prompt.messages,
        {"role": "assistant", "content": json.dumps(answer, ensure_ascii=False, separators=(",", ":"))},
        {"role": "user", "content": JUDGE_INSTRUCTIONS},
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
    checks = deterministic_checks(answer, schema_errors, prompt, document)
    result: dict[str, Any] = {
        "scores": None,
        "mean_score": None,
        "comment": None,
        "checks": checks,
        **fold_verdict(None, checks),
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
    result.update(fold_verdict(result["scores"], checks))
    return result
