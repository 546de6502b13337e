"""Parsing, validation and deterministic checks of the LLM's answer.

An answer is *usable* when it parses as JSON, follows the prompt's answer schema (so its
candidate_id is one of the shortlist's), was not cut off (finish reason "stop") and does not echo the
system prompt. The answer is only ever parsed, never executed. The deterministic checks that travel
with the judge's scores go further: does the quoted accuracy match the chosen candidate's prediction,
is every number in the justification found in the evidence, does it cite evidence and name the
chosen backbone.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema

from metallmix.llm.prompt import BACKBONE_KEYS, SYSTEM_PROMPT, PickPrompt

LEAK_WINDOW_WORDS = 10
ACCURACY_TOLERANCE_POINTS = 0.051
NUMBER_PATTERN = re.compile(r"\b\d+(?:\.\d+)?\b")
CHECK_NAMES = (
    "schema_valid",
    "candidate_in_shortlist",
    "quoted_accuracy_matches",
    "numbers_supported",
    "evidence_cited",
    "names_backbone",
    "no_prompt_leak",
)


def parse_answer(text: str, finish_reason: str | None, prompt: PickPrompt) -> tuple[dict[str, Any] | None, list[str]]:
    """The answer as a dict and the list of reasons it is unusable (empty when usable)."""
    errors = []
    if finish_reason not in (None, "stop"):
        errors.append(f"the answer was cut off (finish reason {finish_reason!r}); write a shorter justification")
    try:
        answer = json.loads(text)
    except (json.JSONDecodeError, TypeError) as exc:
        return None, errors + [f"not valid JSON ({exc})"]
    if not isinstance(answer, dict):
        return None, errors + [f"the answer must be a JSON object, got {type(answer).__name__}"]
    validator = jsonschema.Draft202012Validator(prompt.schema)
    for error in sorted(validator.iter_errors(answer), key=lambda e: list(e.path)):
        where = "/".join(str(p) for p in error.path) or "answer"
        errors.append(f"{where}: {error.message[:200]}")
    if isinstance(answer.get("justification"), str) and leaks_prompt(answer["justification"]):
        errors.append("the justification repeats the instructions; justify the choice with the evidence instead")
    return answer, errors


def repair_message(errors: list[str], prompt: PickPrompt) -> str:
    """The follow-up message that asks for a corrected answer."""
    return (
        "Your answer cannot be used: " + "; ".join(errors) + ". Reply again with only the JSON object: "
        f"candidate_id one of {prompt.candidate_ids}, evidence labels among {prompt.evidence_labels}."
    )


def leaks_prompt(text: str, secret: str = SYSTEM_PROMPT, window: int = LEAK_WINDOW_WORDS) -> bool:
    """True when ``text`` holds ``window`` consecutive words of ``secret`` (case and punctuation ignored)."""
    secret_words = _words(secret)
    shingles = {tuple(secret_words[i:i + window]) for i in range(len(secret_words) - window + 1)}
    words = _words(text)
    return any(tuple(words[i:i + window]) in shingles for i in range(len(words) - window + 1))


def deterministic_checks(answer: dict[str, Any] | None, schema_errors: list[str], prompt: PickPrompt,
                         document: dict[str, Any]) -> dict[str, Any]:
    """Checks of an answer against the schema and the evidence; ``passed`` is their conjunction."""
    checks: dict[str, Any] = {name: False for name in CHECK_NAMES}
    checks["unsupported_numbers"] = []
    if answer is None:
        checks["passed"] = False
        return checks
    checks["schema_valid"] = not schema_errors
    item = next((i for i in document["shortlist"] if str(i["candidate_id"]) == str(answer.get("candidate_id"))), None)
    checks["candidate_in_shortlist"] = item is not None
    justification = answer.get("justification") if isinstance(answer.get("justification"), str) else ""
    if item is not None:
        quoted = _as_float(answer.get("predicted_accuracy_percent"))
        checks["quoted_accuracy_matches"] = (
            quoted is not None and abs(quoted - round(item["predicted"]["accuracy"] * 100, 1)) <= ACCURACY_TOLERANCE_POINTS
        )
        backbone = item.get("backbone") or next((str(item["config"][k]) for k in BACKBONE_KEYS if k in item["config"]), None)
        checks["names_backbone"] = backbone is None or backbone.lower() in justification.lower()
    unsupported = unsupported_numbers(justification, prompt.evidence_text)
    checks["unsupported_numbers"] = unsupported
    checks["numbers_supported"] = not unsupported
    cited = answer.get("evidence") if isinstance(answer.get("evidence"), list) else []
    checks["evidence_cited"] = bool(cited) and all(label in prompt.evidence_labels for label in cited)
    checks["no_prompt_leak"] = not leaks_prompt(justification)
    checks["passed"] = all(checks[name] for name in CHECK_NAMES)
    return checks


def unsupported_numbers(text: str, evidence: str) -> list[str]:
    """Numbers written in ``text`` that match no number of ``evidence`` (within rounding)."""
    known = [float(n) for n in NUMBER_PATTERN.findall(evidence)]
    out = []
    for token in NUMBER_PATTERN.findall(text):
        value = float(token)
        if not any(abs(value - k) <= 0.05 + 0.005 * abs(k) for k in known):
            out.append(token)
    return out


def describe_error(exc: BaseException) -> str:
    """``Type: first line`` of an engine's exception (unwrapping Ray's RayTaskError to its cause)."""
    cause = getattr(exc, "cause", None) or exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[0][:300] if lines else 'no message'}"


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
