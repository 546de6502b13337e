"""Parsing, validation and deterministic checks of the LLM's answer.

An answer is *usable* when it parses as JSON, follows the prompt's answer schema (so its
candidate_id is one of the shortlist's), was not cut off (finish reason "stop") and does not echo the
system prompt. The answer is only ever parsed, never executed. The deterministic checks that travel
with the judge's scores go further: does the quoted accuracy match the chosen candidate's prediction,
is every number in the justification found in the evidence, does it cite evidence, name the chosen
backbone and a setting that sets it apart from the runner-up, cite SHAP or neighbour evidence, claim
nothing the evidence contradicts (a SHAP direction reversed, a label that was not shown); and is
the text sound: no repeated phrases, no line of the prompt copied, no sentence cut off. An answer
that fails any of them is not shown to the user (metallmix.service: one repair, then the fallback);
``failed_check_messages`` says what to fix, for the repair message.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema

from metallmix.llm.prompt import BACKBONE_KEYS, SYSTEM_PROMPT, PickPrompt

LEAK_WINDOW_WORDS = 10
COPY_WINDOW_TOKENS = 12  # this many consecutive tokens of one prompt line in the justification: a copied line
REPEAT_RULES = ((8, 2), (4, 3))  # (n, times): an n-word phrase occurring that often is degenerate text
TOKEN_PATTERN = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?")
SENTENCE_END = re.compile(r"([.!?][\"')\]]*|\[[A-Z][0-9]+\])$")
SETTING_ALIASES = {"lr": ("learning rate",), "wd": ("weight decay",), "weight_decay": ("weight decay",),
                   "opt": ("optimizer", "optimiser"), "bs": ("batch size",)}
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
    "no_repetition",
    "no_copied_prompt_line",
    "complete_sentence",
    "names_distinguishing_setting",
    "cites_shap_or_neighbours",
    "claims_supported",
)
LABEL_IN_TEXT = re.compile(r"\[([A-Za-z][0-9]+)\]")
CLAUSE_SPLIT = re.compile(r"[.;:!?()]|,\s|\b(?:and|while|but|whereas|although)\b")
RAISE_WORDS = ("raises", "increases", "boosts", "improves", "adds")  # a claimed SHAP direction: third-person
LOWER_WORDS = ("lowers", "reduces", "decreases", "hurts", "penalises", "penalizes")  # verbs only, few false alarms
# "A ... higher ... than B" / "higher ... A ... compared to B": a comparison of two numbers the text states
MORE_WORDS, LESS_WORDS = ("higher", "greater", "larger", "more"), ("lower", "smaller", "less", "fewer")
_DIFFERENCE = r"(?!\d|\.\d|\s*(?:points?|percentage|pp|times|x)\b)"  # "0.1 points higher than": a difference
_A, _B = rf"(?P<a>\d+(?:\.\d+)?){_DIFFERENCE}", r"(?P<b>\d+(?:\.\d+)?)"
_COMPARED = r"(?:than|compared to|compared with|versus|vs\.?)"
_COMPARATIVE = "|".join(MORE_WORDS + LESS_WORDS)
COMPARISONS = (
    re.compile(rf"\b(?P<word>{_COMPARATIVE})\b[^.;]*?{_A}[^.;\d]*?\b{_COMPARED}\b[^.;\d]*?{_B}"),
    re.compile(rf"{_A}[^.;\d]*?\b(?P<word>{_COMPARATIVE})\s+{_COMPARED}\b[^.;\d]*?{_B}"),
)


def parse_answer(text: str, finish_reason: str | None, prompt: PickPrompt) -> tuple[dict[str, Any] | None, list[str]]:
    """The answer as a dict (with the fields the prompt fixed, ``prompt.fixed``, filled in) and the list of
    reasons it is unusable (empty when usable)."""
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
    if isinstance(answer.get("justification"), str):
        answer["justification"] = trim_at_cap(answer["justification"], prompt)
    if isinstance(answer.get("justification"), str) and leaks_prompt(answer["justification"]):
        errors.append("the justification repeats the instructions; justify the choice with the evidence instead")
    return {**prompt.fixed, **answer}, errors


def trim_at_cap(justification: str, prompt: PickPrompt) -> str:
    """A justification the schema's length cap cut mid-sentence, trimmed to its last complete sentence (when one
    of at least the schema's minimum length remains); any other text unchanged. The words kept are the LLM's own."""
    limits = prompt.schema["properties"].get("justification", {})
    if len(justification) < limits.get("maxLength", 0) or SENTENCE_END.search(justification.strip()):
        return justification
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s+[A-Z\[])", justification)]  # a sentence starts after it
    kept = justification[: ends[-1]] if ends else justification
    return kept if len(kept) >= limits.get("minLength", 0) else justification


def repair_message(errors: list[str], prompt: PickPrompt) -> str:
    """The follow-up message that asks for a corrected answer."""
    keys = ", ".join(prompt.schema["required"])
    choice = f", candidate_id one of {prompt.candidate_ids}" if "candidate_id" in prompt.schema["required"] else ""
    return (f"Your answer cannot be used: {'; '.join(errors)}. Reply again with only the JSON object ({keys}){choice}, "
            f"evidence labels among {prompt.evidence_labels}.")


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
    item = chosen_item(answer, document)
    checks["candidate_in_shortlist"] = item is not None
    justification = answer.get("justification") if isinstance(answer.get("justification"), str) else ""
    if item is not None:
        quoted = _as_float(answer.get("predicted_accuracy_percent"))
        checks["quoted_accuracy_matches"] = (
            quoted is not None and abs(quoted - round(item["predicted"]["accuracy"] * 100, 1)) <= ACCURACY_TOLERANCE_POINTS
        )
        backbone = backbone_of(item)
        checks["names_backbone"] = backbone is None or backbone.lower() in justification.lower()
        differing = distinguishing_settings(item, document, prompt.shown_settings)
        checks["names_distinguishing_setting"] = not differing or any(
            mentions_setting(justification, key, value) for key, value in differing.items())
    unsupported = unsupported_numbers(justification, prompt.evidence_text)
    checks["unsupported_numbers"] = unsupported
    checks["numbers_supported"] = not unsupported
    cited = answer.get("evidence") if isinstance(answer.get("evidence"), list) else []
    checks["evidence_cited"] = bool(cited) and all(label in prompt.evidence_labels for label in cited)
    supporting = [label for label in prompt.evidence_labels if label[:1] in ("S", "N")]
    checks["cites_shap_or_neighbours"] = not supporting or any(label in supporting for label in cited)
    checks["no_prompt_leak"] = not leaks_prompt(justification)
    checks["no_repetition"] = repeated_phrase(justification) is None
    checks["no_copied_prompt_line"] = copied_prompt_line(justification, prompt) is None
    checks["complete_sentence"] = bool(SENTENCE_END.search(justification.strip()))
    checks["claims_supported"] = not unsupported_claims(justification, prompt, document)
    checks["passed"] = all(checks[name] for name in CHECK_NAMES)
    return checks


def failed_check_messages(checks: dict[str, Any], answer: dict[str, Any] | None, prompt: PickPrompt,
                          document: dict[str, Any]) -> list[str]:
    """One sentence per failed check of ``deterministic_checks``: what is wrong and what to write instead."""
    if answer is None:
        return ["no usable answer"]
    item = chosen_item(answer, document)
    justification = answer.get("justification") if isinstance(answer.get("justification"), str) else ""
    out = []
    for name in CHECK_NAMES:
        if checks.get(name):
            continue
        if name == "schema_valid":
            out.append("the answer does not follow the JSON schema")
        elif name == "candidate_in_shortlist":
            out.append(f"candidate_id must be one of {prompt.candidate_ids}")
        elif name == "quoted_accuracy_matches" and item is not None:
            out.append(f"predicted_accuracy_percent must be the chosen candidate's predicted accuracy as shown "
                       f"({item['predicted']['accuracy'] * 100:.1f})")
        elif name == "numbers_supported":
            out.append(f"the justification has numbers found nowhere in the evidence "
                       f"({', '.join(checks.get('unsupported_numbers') or [])}); use only numbers shown")
        elif name == "evidence_cited":
            out.append(f"cite evidence labels among {prompt.evidence_labels}")
        elif name == "names_backbone" and item is not None:
            out.append(f"name the chosen backbone ({backbone_of(item)}) in the justification")
        elif name == "no_prompt_leak":
            out.append("the justification repeats the instructions; justify the choice with the evidence instead")
        elif name == "no_repetition":
            out.append(f"the justification repeats the phrase {repeated_phrase(justification)!r}; say each thing once")
        elif name == "no_copied_prompt_line":
            out.append(f"the justification copies the evidence line {copied_prompt_line(justification, prompt)!r}; "
                       "explain the choice in your own words, quoting only the numbers you need")
        elif name == "complete_sentence":
            out.append("the justification stops mid-sentence; write shorter, complete sentences ending with a full stop")
        elif name == "names_distinguishing_setting" and item is not None:
            differing = ", ".join(f"{k}={v}" for k, v in distinguishing_settings(item, document, prompt.shown_settings).items())
            out.append(f"name at least one setting that sets the chosen candidate apart from the runner-up ({differing})")
        elif name == "cites_shap_or_neighbours":
            supporting = [label for label in prompt.evidence_labels if label[:1] in ("S", "N")]
            out.append(f"cite at least one SHAP or neighbour label ({', '.join(supporting)}) in evidence")
        elif name == "claims_supported":
            out.append("the justification claims what the evidence does not say ("
                       + "; ".join(unsupported_claims(justification, prompt, document))
                       + "); state the SHAP directions and the labels as shown")
    return out


def chosen_item(answer: dict[str, Any], document: dict[str, Any]) -> dict[str, Any] | None:
    """The shortlist item the answer chose, or None."""
    return next((i for i in document["shortlist"] if str(i["candidate_id"]) == str(answer.get("candidate_id"))), None)


def backbone_of(item: dict[str, Any]) -> str | None:
    return item.get("backbone") or next((str(item["config"][k]) for k in BACKBONE_KEYS if k in item["config"]), None)


def distinguishing_settings(item: dict[str, Any], document: dict[str, Any], shown: tuple[str, ...] = ()) -> dict[str, str]:
    """The chosen candidate's settings that differ from the runner-up's (the meta-learner's top candidate, or
    its second when the top one was chosen), as ``{key: value as shown}``; empty for a one-item shortlist.
    With ``shown`` (the keys the prompt showed), only those, unless none of them differs."""
    shortlist = document["shortlist"]
    rivals = [other for other in shortlist if str(other["candidate_id"]) != str(item["candidate_id"])]
    if not rivals:
        return {}
    rival = rivals[0]["config"]
    differing = {key: _shown(value) for key, value in item["config"].items() if repr(rival.get(key)) != repr(value)}
    return {key: value for key, value in differing.items() if key in shown} or differing


def mentions_setting(text: str, key: str, value: str) -> bool:
    """True when ``text`` names the setting ``key`` (or a usual alias) or writes its value."""
    lowered = text.lower()
    names = (key.lower(), key.lower().replace("_", " "), *SETTING_ALIASES.get(key.lower(), ()))
    if any(re.search(rf"(?<![a-z0-9]){re.escape(name)}(?![a-z0-9])", lowered) for name in names):
        return True
    return len(value) >= 2 and re.search(rf"(?<![a-z0-9.]){re.escape(value.lower())}(?![a-z0-9])", lowered) is not None


def unsupported_claims(text: str, prompt: PickPrompt, document: dict[str, Any]) -> list[str]:
    """Claims of the text that the evidence contradicts: a label written in the text that the prompt does not
    show (e.g. a neighbour [N7] of three), and a clause that names one SHAP feature with a direction (raises /
    lowers) opposite to every SHAP attribution of that feature shown. Clauses naming several features, or both
    directions, are not judged (a conservative reading: no false alarms on sound text)."""
    out = [f"[{label}] is not in the evidence" for label in LABEL_IN_TEXT.findall(text)
           if label.upper() not in prompt.evidence_labels]
    directions = shap_directions(document) if "S1" in prompt.evidence_labels else {}
    for clause in CLAUSE_SPLIT.split(text.lower()):
        if not clause or not clause.strip():
            continue
        named = [name for name in directions if _mentions(clause, name)]
        named = [name for name in named if not any(name != other and name in other for other in named)]
        raises = any(_mentions(clause, word) for word in RAISE_WORDS)
        lowers = any(_mentions(clause, word) for word in LOWER_WORDS)
        if len(named) != 1 or raises == lowers:
            continue
        claimed = "raises" if raises else "lowers"
        if claimed not in directions[named[0]]:
            out.append(f"'{named[0]}' {claimed} accuracy, but the SHAP evidence says it "
                       f"{' / '.join(sorted(directions[named[0]]))} it")
    return out + false_comparisons(text)


def false_comparisons(text: str) -> list[str]:
    """Comparisons of two stated numbers whose direction is wrong ("a higher accuracy of 58.5% compared to
    [C2]'s 59.8%", "a dropout of 0, lower than [C2]'s 0"). Labels are read as words, not numbers."""
    plain = re.sub(r"[a-z_]+\d+[a-z0-9_]*", " name ", LABEL_IN_TEXT.sub(" label ", text.lower()))  # not numbers
    out = []
    for sentence in re.split(r"(?<=[.!?])\s+", plain):
        for pattern in COMPARISONS:
            for match in pattern.finditer(sentence):
                first, second = float(match.group("a")), float(match.group("b"))
                more = match.group("word") in MORE_WORDS
                if (more and first <= second) or (not more and first >= second):
                    out.append(f"it says {match.group('a')} is {match.group('word')} than {match.group('b')}")
    return out


def shap_directions(document: dict[str, Any]) -> dict[str, set[str]]:
    """``{feature name as written (lowercase): {"raises" | "lowers", ...}}`` over the SHAP explanations shown:
    each feature under its base name (``lr`` for ``lr = 0.001``) and its spaced form."""
    out: dict[str, set[str]] = {}
    for explanation in (document.get("evidence") or {}).get("shap") or []:
        for feature in explanation.get("top_features") or []:
            direction = feature.get("direction")
            if direction not in ("raises", "lowers"):
                continue
            base = str(feature.get("name", "")).partition("=")[0].strip().lower()
            for name in {base, base.replace("_", " ")} - {""}:
                out.setdefault(name, set()).add(direction)
    return out


def _mentions(text: str, name: str) -> bool:
    return re.search(rf"(?<![a-z0-9_]){re.escape(name)}(?![a-z0-9_])", text) is not None


def repeated_phrase(text: str) -> str | None:
    """A phrase the text repeats (an n-word phrase ``times`` times, per ``REPEAT_RULES``), or None."""
    tokens = TOKEN_PATTERN.findall(text.lower())
    for n, times in REPEAT_RULES:
        counts: dict[tuple[str, ...], int] = {}
        for i in range(len(tokens) - n + 1):
            gram = tuple(tokens[i:i + n])
            counts[gram] = counts.get(gram, 0) + 1
            if counts[gram] >= times:
                return " ".join(gram)
    return None


def copied_prompt_line(text: str, prompt: PickPrompt, window: int = COPY_WINDOW_TOKENS) -> str | None:
    """The first ``window`` tokens of a prompt line that the text copies verbatim (case and punctuation
    ignored), or None."""
    tokens = TOKEN_PATTERN.findall(text.lower())
    grams = {tuple(tokens[i:i + window]) for i in range(len(tokens) - window + 1)}
    if not grams:
        return None
    for line in prompt.messages[-1]["content"].splitlines():
        line_tokens = TOKEN_PATTERN.findall(line.lower())
        for i in range(len(line_tokens) - window + 1):
            if tuple(line_tokens[i:i + window]) in grams:
                return " ".join(line_tokens[i:i + window])
    return None


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


def _shown(value: Any) -> str:
    """A setting's value as the prompt writes it (64, not 64.0; 0.001)."""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
