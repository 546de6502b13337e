"""One recommendation request, end to end: what the CLI, the Serve app and the benchmarks call.

    from metallmix.service import RecommendationService, RecommendRequest
    service = RecommendationService.from_specs("quicktune:builtin", llm="smollm2")
    answer = service.recommend_sync(RecommendRequest(meta_features={"n_images": 2000, "n_classes": 5}))
    service.close()

The service owns, for one request:

1. the typed request (``RecommendRequest``: strict types, finite bounded numbers, no unknown fields; the
   HTTP body of ``POST /recommend`` is this model) and the typed answer (``RecommendResponse``, whose
   JSON schema is metallmix/schemas/recommendation.schema.json with the ``llm`` and ``judge`` parts
   generated from ``LLMReport`` and ``JudgeReport``: ``recommendation_schema()``);
2. the recommender: loaded from a folder, or fitted on a meta-dataset once and cached by content
   hash (``obtain_recommender``);
3. the shortlist: meta-features (given, or computed from a registered dataset), constraints, top-k;
4. the LLM step (``pick_and_judge``): the LLM picks one shortlisted candidate and justifies it; the
   answer must parse, follow the schema and pass every deterministic check (metallmix.llm.answer:
   numbers from the evidence, backbone and a distinguishing setting named, SHAP or neighbour evidence
   cited, no repeated phrases, no copied prompt line, no sentence cut off), then score at least
   ``LLMOptions.min_judge_score`` with the judge. An answer that fails gets one repair (the failures
   sent back); if the repair fails too, or the engine fails or times out, the meta-learner's top
   candidate is kept with the template explanation, flagged ``llm.fallback: true`` with the reason.
   Nothing that failed is ever the explanation;
5. validation of the answer (``validate_recommendation``: the schema, and the rules above).

The CLI (``metallmix recommend``, in process), the Serve deployments (serving/app.py) and the
benchmarks' ``zeroshot_llm`` method add nothing of their own; ``metallmix recommend --server`` sends
this module's request over HTTP.
"""

from __future__ import annotations

import asyncio
import copy
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from metallmix.errors import ConfigError
from metallmix.llm.answer import (
    CHECK_NAMES,
    deterministic_checks,
    describe_error,
    failed_check_messages,
    parse_answer,
    repair_message,
)
from metallmix.llm.engines import GenerationRequest, LLMEngine, make_engine
from metallmix.llm.judge import RUBRIC, fold_verdict, judge_answer
from metallmix.llm.prompt import PickPrompt, PromptOptions, build_pick_prompt

# ------------------------------------------------------------------ limits of a request
DATASET_NAME = r"^[A-Za-z][A-Za-z0-9_\-]{0,63}(@[0-9]{1,4})?$"
MAX_DESCRIPTION_CHARS = 100_000
MAX_TOP_K = 20
MAX_META_FEATURES = 64
MAX_META_FEATURE_VALUE = 1e12  # = metallmix.recommend.MAX_META_FEATURE_VALUE (a test checks they agree)
MAX_BACKBONES = 500
MAX_DESCRIPTOR_CHARS = 200
DEFAULT_MIN_JUDGE_SCORE = 3.0
CACHE_ENV = "METALLMIX_CACHE_DIR"
TOP_FIELDS = ("candidate_id", "config", "backbone", "param_count", "predicted", "score")

FeatureName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
FeatureValue = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_META_FEATURE_VALUE, le=MAX_META_FEATURE_VALUE)]
PositiveNumber = Annotated[float, Field(allow_inf_nan=False, gt=0)]
BackboneName = Annotated[str, StringConstraints(min_length=1, max_length=200)]
DescriptorText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_DESCRIPTOR_CHARS)]


class InvalidRecommendationError(RuntimeError):
    """An answer that breaks the service's own rules (a bug, never the user's input)."""


# ------------------------------------------------------------------ the request
class RequestConstraints(BaseModel):
    """What the recommended config must satisfy (``metallmix.recommend.Constraints``); all optional."""

    model_config = ConfigDict(extra="forbid", strict=True)

    budget_minutes: PositiveNumber | None = Field(None, description="longest predicted training time, minutes")
    budget_flops: PositiveNumber | None = Field(None, description="largest estimated training compute, FLOP")
    max_params: PositiveNumber | None = Field(None, description="largest backbone, parameters")
    backbones: list[BackboneName] | None = Field(None, min_length=1, max_length=MAX_BACKBONES,
                                                 description="only these backbones")
    max_p_fail: Annotated[float, Field(allow_inf_nan=False, ge=0, le=1)] | None = Field(
        None, description="highest predicted probability that the run fails, in [0, 1]")
    max_resolution: PositiveNumber | None = Field(None, description="largest input resolution, pixels")


class RecommendRequest(BaseModel):
    """One recommendation request (the body of POST /recommend): meta-features or a registered dataset
    name, plus constraints and what the LLM step may do."""

    model_config = ConfigDict(extra="forbid", strict=True)

    meta_features: dict[FeatureName, FeatureValue] | None = Field(
        None, max_length=MAX_META_FEATURES,
        description="the dataset's meta-features by name, finite numbers within ±1e12, "
                    "e.g. {\"n_images\": 2000, \"n_classes\": 5}")
    dataset: str | None = Field(None, pattern=DATASET_NAME,
                                description="a dataset name the server has registered (e.g. breastmnist, retinamnist@64)")
    constraints: RequestConstraints = Field(default_factory=RequestConstraints,
                                            description="budget_minutes, budget_flops, max_params, backbones, "
                                                        "max_p_fail, max_resolution (all optional)")
    top_k: int = Field(5, ge=1, le=MAX_TOP_K, description="shortlist length")
    description: str | None = Field(None, max_length=MAX_DESCRIPTION_CHARS,
                                    description="free text about the dataset; untrusted, cut before it reaches the LLM")
    llm: bool = Field(True, description="let the LLM pick and justify (false: the meta-learner's top, template text)")
    judge: bool = Field(True, description="let the judge score the LLM's answer (the deterministic checks always run)")
    modality: DescriptorText | None = Field(None, description="imaging modality as text (e.g. 'chest x-ray', ct): "
                                                              "becomes the 0/1 modality meta-features")
    task: DescriptorText | None = Field(None, description="binary, multi-class, multi-label or ordinal: becomes the "
                                                          "0/1 task meta-features")
    ignore_unknown_meta_features: bool = Field(
        False, description="meta-features computed from a dataset: drop (and list as ignored) the names this "
                           "knowledge base does not know; false: an unknown name is an error")

    def check_source(self) -> None:
        """Raise ConfigError unless exactly one of meta_features and dataset is given."""
        if (self.meta_features is None) == (self.dataset is None):
            raise ConfigError("give exactly one of meta_features (an object of numbers, e.g. "
                              "{\"n_images\": 2000, \"n_classes\": 5}) and dataset (a registered name, e.g. breastmnist)")


# ------------------------------------------------------------------ the answer
Score = Literal[1, 2, 3, 4, 5]


class LLMReport(BaseModel):
    """The ``llm`` part of an answer: who picked, how long it took, whether it fell back and why."""

    model_config = ConfigDict(extra="forbid")

    model: str
    engine: str
    role: Literal["explain", "pick"] = Field(..., description="explain: the pick is the meta-learner's top candidate "
                                                              "and the LLM writes why; pick: the LLM chose among the shortlist")
    latency_s: float = Field(ge=0)
    attempts: int = Field(ge=1, le=2, description="the answer, then at most one repair")
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    fallback: bool = Field(description="true: the LLM's answer failed (see fallback_reason); the explanation is the "
                                       "template and the pick the meta-learner's top candidate")
    fallback_reason: str | None
    chosen_rank: int | None = Field(ge=1, description="shortlist rank of the accepted pick (null on a fallback)")
    agrees_with_metalearner: bool | None
    answer: dict[str, Any] | None = Field(description="the LLM's last parsed answer (also when rejected)")
    errors: list[str] = Field(description="why that answer was rejected")
    evidence_shown: dict[str, bool]


class JudgeScores(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Score
    accuracy: Score
    completeness: Score


class JudgeChecks(BaseModel):
    """The deterministic checks of the LLM's answer (metallmix.llm.answer); ``passed``: all of them."""

    model_config = ConfigDict(extra="forbid")

    schema_valid: bool
    candidate_in_shortlist: bool
    quoted_accuracy_matches: bool
    numbers_supported: bool
    evidence_cited: bool
    names_backbone: bool
    no_prompt_leak: bool
    no_repetition: bool
    no_copied_prompt_line: bool
    complete_sentence: bool
    names_distinguishing_setting: bool
    cites_shap_or_neighbours: bool
    claims_supported: bool
    unsupported_numbers: list[str]
    passed: bool


class VerdictScores(BaseModel):
    """The rubric levels with the deterministic checks folded in (metallmix.llm.judge.fold_verdict)."""

    model_config = ConfigDict(extra="forbid")

    format: float = Field(ge=1, le=5)
    accuracy: float = Field(ge=1, le=5)
    completeness: float = Field(ge=1, le=5)


class JudgeReport(BaseModel):
    """The ``judge`` part of an answer: rubric scores of the LLM's last answer (``scores``, ``mean_score``: the
    LLM's own), the deterministic checks, and the verdict folding both (``verdict_scores``, ``verdict_score``:
    a failed check caps its criterion, ``capped_by`` says which)."""

    model_config = ConfigDict(extra="forbid")

    scores: JudgeScores | None
    mean_score: float | None
    comment: str | None
    checks: JudgeChecks
    verdict_scores: VerdictScores
    verdict_score: float = Field(ge=1, le=5)
    capped_by: list[str]
    model: str | None
    engine: str | None
    latency_s: float | None
    error: str | None


class RecommendResponse(BaseModel):
    """A recommendation (schema: ``recommendation_schema()``); ``llm`` and ``judge`` come together, when the LLM
    step ran. Nested parts the recommender writes are checked by the JSON schema."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1]
    candidate_id: str = Field(min_length=1)
    config: dict[str, Any]
    backbone: str | None
    param_count: dict[str, Any]
    predicted: dict[str, Any]
    score: float
    explanation: str = Field(min_length=1)
    explanation_source: Literal["template", "llm"]
    evidence: dict[str, Any]
    shortlist: list[dict[str, Any]] = Field(min_length=1)
    pareto_front: list[dict[str, Any]] = Field(min_length=1)
    constraints: dict[str, Any]
    meta_features: dict[str, Any]
    meta_dataset: dict[str, Any]
    degraded: bool
    warnings: list[str]
    llm: LLMReport | None = None
    judge: JudgeReport | None = None


if (tuple(JudgeChecks.model_fields)[:len(CHECK_NAMES)] != CHECK_NAMES or tuple(JudgeScores.model_fields) != RUBRIC
        or tuple(VerdictScores.model_fields) != RUBRIC):
    raise ImportError("metallmix.service's JudgeChecks / JudgeScores must list metallmix.llm's CHECK_NAMES / RUBRIC")


@cache
def _schema() -> dict[str, Any]:
    from metallmix.schemas import load_schema

    schema = copy.deepcopy(load_schema())
    for name, model in (("llm", LLMReport), ("judge", JudgeReport)):
        part = model.model_json_schema(ref_template="#/$defs/{model}")
        for key, definition in part.pop("$defs", {}).items():
            if key in schema["$defs"]:
                raise InvalidRecommendationError(f"$defs name {key!r} of {model.__name__} collides with the schema file's")
            schema["$defs"][key] = definition
        schema["properties"][name] = part
    schema["dependentRequired"] = {"llm": ["judge"], "judge": ["llm"]}
    return schema


def recommendation_schema() -> dict[str, Any]:
    """The answer's JSON schema: recommendation.schema.json, with ``llm`` and ``judge`` generated from the models."""
    return copy.deepcopy(_schema())


def validate_recommendation(document: dict[str, Any]) -> None:
    """Raise unless ``document`` is an answer the service may return.

    jsonschema.ValidationError: it breaks ``recommendation_schema()``; InvalidRecommendationError: it breaks
    the service's rules (the pick is a shortlisted candidate with that candidate's config; an LLM explanation
    only from an accepted answer that passed every check; a fallback keeps the template).
    """
    import jsonschema

    jsonschema.Draft202012Validator(_schema()).validate(document)
    RecommendResponse.model_validate(document)
    by_id = {str(item["candidate_id"]): item for item in document["shortlist"]}
    chosen = by_id.get(str(document["candidate_id"]))
    if chosen is None or chosen["config"] != document["config"]:
        raise InvalidRecommendationError(f"the pick {document['candidate_id']!r} is not a shortlisted candidate with its config")
    llm = document.get("llm")
    if document["explanation_source"] == "llm":
        if llm is None or llm["fallback"] or not document["judge"]["checks"]["passed"]:
            raise InvalidRecommendationError("an LLM explanation from an answer that failed (or no LLM report)")
        if document["explanation"] != (llm.get("answer") or {}).get("justification"):
            raise InvalidRecommendationError("the explanation is not the accepted answer's justification")
    elif llm is not None and not llm["fallback"]:
        raise InvalidRecommendationError("the LLM's answer was accepted but the explanation is the template")


# ------------------------------------------------------------------ the LLM step
@dataclass(frozen=True)
class LLMOptions:
    """Settings of the LLM step.

    Args:
        prompt: what the prompt shows (``PromptOptions``).
        temperature: sampling temperature (0: greedy, reproducible).
        seed: sampling seed.
        timeout_s: longest wait for one engine call (pick, repair or judge) before falling back.
        judge: run the LLM judge (the deterministic checks always run).
        min_judge_score: an answer whose judge verdict (the mean of the three rubric levels, 1-5, with the
            deterministic checks folded in) is below this is rejected (0: never).
    """

    prompt: PromptOptions = field(default_factory=PromptOptions)
    temperature: float = 0.0
    seed: int = 0
    timeout_s: float = 300.0
    judge: bool = True
    min_judge_score: float = DEFAULT_MIN_JUDGE_SCORE

    def __post_init__(self) -> None:
        if not isinstance(self.timeout_s, (int, float)) or self.timeout_s <= 0:
            raise ConfigError(f"timeout_s must be a positive number of seconds, got {self.timeout_s!r}")
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature!r}")
        if not isinstance(self.min_judge_score, (int, float)) or not 0 <= self.min_judge_score <= 5:
            raise ConfigError(f"min_judge_score must be a mean rubric score in [0, 5] (0: never reject), "
                              f"got {self.min_judge_score!r}")


class Judge(Protocol):
    """Scores an answer: returns the ``judge`` entry (``JudgeReport`` fields) for ``answer`` to ``document``."""

    async def __call__(self, document: dict[str, Any], answer: dict[str, Any] | None, errors: list[str],
                       description: str | None = None, use_llm: bool = True) -> dict[str, Any]: ...


class LocalJudge:
    """The judge in this process: rubric scores from ``engine`` (None: deterministic checks only)."""

    def __init__(self, engine: LLMEngine | None, options: LLMOptions | None = None):
        self.engine = engine
        self.options = options or LLMOptions()

    async def __call__(self, document: dict[str, Any], answer: dict[str, Any] | None, errors: list[str],
                       description: str | None = None, use_llm: bool = True) -> dict[str, Any]:
        prompt = build_pick_prompt(document, self.options.prompt, description)
        engine = self.engine if use_llm and self.options.judge else None
        verdict = await judge_answer(engine, prompt, answer, errors, document, timeout_s=self.options.timeout_s,
                                     temperature=self.options.temperature, seed=self.options.seed)
        if engine is None and self.engine is not None:
            verdict["error"] = "judge off: deterministic checks only"
        return verdict


def unscored_verdict(prompt: PickPrompt, answer: dict[str, Any] | None, parse_errors: list[str],
                     document: dict[str, Any], reason: str) -> dict[str, Any]:
    """A ``judge`` entry with the deterministic checks only (no LLM call), ``reason`` in ``error``."""
    checks = deterministic_checks(answer, parse_errors, prompt, document)
    return {"scores": None, "mean_score": None, "comment": None, "checks": checks, **fold_verdict(None, checks),
            "model": None, "engine": None, "latency_s": None, "error": reason}


async def pick_and_judge(
    document: dict[str, Any],
    picker: LLMEngine,
    judge: Judge | None = None,
    *,
    options: LLMOptions | None = None,
    description: str | None = None,
    use_judge: bool = True,
) -> dict[str, Any]:
    """``document`` (recommend()'s) with the LLM's accepted pick applied, or the flagged fallback; keys
    ``llm`` and ``judge`` added. See the module doc for the rules."""
    options = options or LLMOptions()
    judge = judge or LocalJudge(None, options)
    prompt = build_pick_prompt(document, options.prompt, description)
    messages = list(prompt.messages)
    answer, parse_errors, errors, failure, verdict = None, [], [], None, None
    attempts = prompt_tokens = completion_tokens = 0
    started = time.perf_counter()
    for _ in range(2):  # the answer, then at most one repair
        attempts += 1
        verdict = None
        request = GenerationRequest(messages=messages, schema=prompt.schema, max_tokens=prompt.max_tokens,
                                    temperature=options.temperature, seed=options.seed)
        try:
            generation = await asyncio.wait_for(picker.generate(request), options.timeout_s)
        except TimeoutError:
            failure = f"engine timed out after {options.timeout_s:g} s"
            break
        except Exception as exc:  # a crashed or unreachable engine falls back, it does not lose the request
            failure = f"engine failed: {describe_error(exc)}"
            break
        prompt_tokens += generation.prompt_tokens or 0
        completion_tokens += generation.completion_tokens or 0
        answer, parse_errors = parse_answer(generation.text, generation.finish_reason, prompt)
        errors = list(parse_errors)
        if not errors:
            checks = deterministic_checks(answer, [], prompt, document)
            errors = [] if checks["passed"] else failed_check_messages(checks, answer, prompt, document)
        if not errors:
            verdict = await judge(document, answer, [], description, use_judge)
            errors = _judge_rejection(verdict, options)
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
        "model": picker.model,
        "engine": picker.kind,
        "role": prompt.role,
        "latency_s": round(time.perf_counter() - started, 3),
        "attempts": attempts,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "fallback": failure is not None,
        "fallback_reason": failure,
        "chosen_rank": chosen_rank,
        "agrees_with_metalearner": None if chosen_rank is None else chosen_rank == 1,
        "answer": answer,
        "errors": errors if failure is not None else [],
        "evidence_shown": {"shap": options.prompt.include_shap, "neighbours": options.prompt.include_neighbours},
    }
    if verdict is None:  # the last answer never reached the judge: it failed before
        reason = ("not scored: the LLM gave no usable answer" if answer is None or parse_errors
                  else "not scored: the answer failed the deterministic checks")
        verdict = unscored_verdict(prompt, answer, parse_errors, document, reason)
    out["judge"] = verdict
    return out


def _judge_rejection(verdict: dict[str, Any], options: LLMOptions) -> list[str]:
    """Why the judge's verdict rejects the answer ([] when it does not: no scores, or at the threshold).

    The threshold applies to ``verdict_score``, the LLM's scores folded with the deterministic checks
    (metallmix.llm.judge.fold_verdict), not to the LLM's own scores: the default judge's own scores do not
    tell faithful from corrupted answers (docs/llm.md, "Judge: does it discriminate?"), so alone they
    would veto at chance. An answer that passes every check scores at least 3 there, so the default
    threshold of 3 lets the judge's LLM reject only above it (``min_judge_score`` > 3)."""
    mean = verdict.get("verdict_score")
    if mean is None or mean >= options.min_judge_score:
        return []
    scores = ", ".join(f"{name} {score}" for name, score in (verdict.get("verdict_scores") or {}).items())
    comment = f": {verdict['comment']}" if verdict.get("comment") else ""
    return [f"the judge scored the answer {mean:.2f} of 5 ({scores}), below the {options.min_judge_score:g} "
            f"required{comment}; justify the choice with the evidence, completely and accurately"]


# ------------------------------------------------------------------ the recommender
def cache_root(cache_dir: str | None) -> Path:
    """Where fitted recommenders are cached: ``cache_dir``, else $METALLMIX_CACHE_DIR, else ~/.cache/metallmix."""
    return Path(cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "metallmix").expanduser()


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def obtain_recommender(spec: str | None, model_dir: str | None = None, cache_dir: str | None = None, *,
                       log: Callable[[str], None] = _say):
    """A saved Recommender from ``model_dir``, else one fitted on ``spec`` (cached by content hash under
    ``cache_root(cache_dir)/recommenders/v<format>/<hash>``; a ``model_dir`` without one is fitted and saved there)."""
    from metallmix.metadataset import load_meta_dataset
    from metallmix.metadataset.store import DEFAULT_META_DATASET

    if model_dir and (Path(model_dir) / "manifest.json").is_file():
        from metallmix.recommend import Recommender, content_hash

        recommender = Recommender.load(model_dir)
        if spec is not None:
            wanted = content_hash(load_meta_dataset(spec))
            if wanted != recommender.meta_dataset_["content_hash"]:
                raise ConfigError(
                    f"the recommender in {model_dir} was fitted on another meta-dataset than {spec} "
                    f"(content hash {recommender.meta_dataset_['content_hash']} vs {wanted}); drop --model-dir or use a fresh one"
                )
        return recommender
    spec = spec or DEFAULT_META_DATASET
    df = load_meta_dataset(spec)  # before the heavy imports below: a bad spec fails fast
    from metallmix.recommend import FORMAT_VERSION, MANIFEST_FILE, Recommender, content_hash

    if model_dir:
        target = Path(model_dir)
    else:
        target = cache_root(cache_dir) / "recommenders" / f"v{FORMAT_VERSION}" / content_hash(df)
        if (target / MANIFEST_FILE).is_file():
            try:
                return Recommender.load(target)
            except (ConfigError, OSError) as exc:
                log(f"metallmix: the cached recommender in {target} is unreadable ({exc}); refitting")
                shutil.rmtree(target, ignore_errors=True)
    log(f"metallmix: fitting a recommender on {spec} ({len(df)} runs); saving it in {target}")
    recommender = Recommender().fit(df, spec=spec)
    _save_atomically(recommender, target)
    return recommender


def _save_atomically(recommender: Any, target: Path) -> None:
    """Save into a temporary sibling folder, then rename: readers never see half a model."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        recommender.save(tmp)
        if target.exists() and not any(target.iterdir()):
            target.rmdir()
        os.replace(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(f"cannot save the recommender in {target} ({exc}); choose another --model-dir or --cache-dir") from exc


def finite_meta_features(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of computed meta-features (an unknown modality or task is NaN: left out, imputed)."""
    return {str(k): float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


# ------------------------------------------------------------------ the service
class RecommendationService:
    """Answers ``RecommendRequest``s from one recommender, with an optional LLM picker and judge.

    Args:
        recommender: a fitted ``metallmix.recommend.Recommender``.
        picker: the LLM engine that picks and justifies (None: the template explanation, no ``llm`` key).
        judge: a ``Judge`` (e.g. a Serve deployment's), an ``LLMEngine`` to judge with here, or None
            (deterministic checks only).
        options: ``LLMOptions``.
        selection: why this knowledge base answers (``{"default": bool, "reason": str}``); every answer then
            carries it, with the dataset's coverage, as ``meta_dataset.selection``.
        owned: engines this service built and closes in ``close()``.
    """

    def __init__(self, recommender: Any, *, picker: LLMEngine | None = None, judge: Judge | LLMEngine | None = None,
                 options: LLMOptions | None = None, selection: dict[str, Any] | None = None,
                 owned: tuple[LLMEngine, ...] = ()):
        self.recommender = recommender
        self.picker = picker
        self.options = options or LLMOptions()
        self.judge: Judge = LocalJudge(judge, self.options) if judge is None or hasattr(judge, "generate") else judge
        self.selection = selection
        self._owned = list(owned)

    @classmethod
    def from_specs(cls, meta_dataset: str | None = None, *, model_dir: str | None = None, cache_dir: str | None = None,
                   llm: str | dict[str, Any] | LLMEngine | None = None,
                   judge_llm: str | dict[str, Any] | LLMEngine | None = "same",
                   options: LLMOptions | None = None, selection: dict[str, Any] | None = None) -> RecommendationService:
        """A service whose recommender is ``obtain_recommender(meta_dataset, model_dir, cache_dir)`` and whose
        engines are built from specs (``make_engine``: a conf/llm name, a model folder, an OpenAI-compatible
        URL, ``none``); ``judge_llm`` ``same`` judges with the picker's engine. Engines given as objects are
        used as they are and left open by ``close()``."""
        recommender = obtain_recommender(meta_dataset, model_dir, cache_dir)
        built: list[LLMEngine] = []
        try:
            picker = _engine(llm, built)
            judge = picker if judge_llm == "same" else _engine(judge_llm, built)
        except BaseException:
            for made in reversed(built):
                made.close()
            raise
        return cls(recommender, picker=picker, judge=judge, options=options, selection=selection, owned=tuple(built))

    def close(self) -> None:
        """Close the engines this service built (the first may own the Ray cluster the others run on)."""
        while self._owned:
            self._owned.pop().close()

    def __enter__(self) -> RecommendationService:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -------------------------------------------------------------- requests
    async def recommend(self, request: RecommendRequest | Mapping[str, Any]) -> dict[str, Any]:
        """The validated answer to one request (ConfigError / DatasetNotFoundError for bad input)."""
        request = as_request(request)
        document = await asyncio.to_thread(self.shortlist, request)
        if request.llm and self.picker is not None:
            document = await pick_and_judge(document, self.picker, self.judge, options=self.options,
                                            description=request.description, use_judge=request.judge)
        validate_recommendation(document)
        return document

    def recommend_sync(self, request: RecommendRequest | Mapping[str, Any]) -> dict[str, Any]:
        """``recommend`` from synchronous code (the CLI); not from inside a running event loop."""
        return asyncio.run(self.recommend(request))

    def shortlist(self, request: RecommendRequest | Mapping[str, Any]) -> dict[str, Any]:
        """The recommender's answer to ``request`` (shortlist, evidence, template explanation), no LLM step."""
        from metallmix.recommend import describe_dataset

        request = as_request(request)
        constraints = request.constraints.model_dump(exclude_none=True)
        if request.dataset is not None:
            facts = describe_dataset(request.dataset, modality=request.modality, task=request.task)
            document = self._from_computed(facts.meta_features, constraints, request.top_k)
        else:
            given: dict[str, Any] = dict(request.meta_features or {})
            descriptors = {k: v for k, v in (("modality", request.modality), ("task", request.task)) if v is not None}
            if request.ignore_unknown_meta_features:
                document = self._from_computed(given, constraints, request.top_k, descriptors)
            else:
                document = self.recommender.recommend({**given, **descriptors}, constraints, request.top_k)
        if self.selection is not None:
            document["meta_dataset"]["selection"] = self._selection(document)
        return document

    async def pick(self, document: dict[str, Any], *, description: str | None = None, use_judge: bool = True,
                   validate: bool = True) -> dict[str, Any]:
        """The LLM step on a shortlist document made elsewhere (the benchmarks' ``shortlist_document``, which
        is not a whole recommendation: ``validate=False``)."""
        if self.picker is None:
            raise ConfigError("this service has no LLM engine to pick with: give llm=... (e.g. smollm2)")
        out = await pick_and_judge(document, self.picker, self.judge, options=self.options,
                                   description=description, use_judge=use_judge)
        if validate:
            validate_recommendation(out)
        return out

    async def health(self) -> dict[str, Any]:
        """The knowledge base and the picker (its engine answers a health check within 30 s)."""
        llm = None
        if self.picker is not None:
            await asyncio.wait_for(self.picker.check_health(), 30)
            llm = {"model": self.picker.model, "engine": self.picker.kind}
        return {"meta_dataset": self.recommender.meta_dataset_, "llm": llm}

    # -------------------------------------------------------------- helpers
    def _from_computed(self, features: Mapping[str, Any], constraints: dict[str, Any], top_k: int,
                       descriptors: dict[str, str] | None = None) -> dict[str, Any]:
        """Recommend from computed meta-features: the names this knowledge base does not know are ignored
        (and listed), non-finite values left out (imputed)."""
        known = set(self.recommender.feature_domain_)
        finite = finite_meta_features(features)
        used = {k: v for k, v in finite.items() if k in known}
        ignored = sorted(set(finite) - known)
        if not used:
            raise ConfigError(
                f"none of the dataset's meta-features {sorted(finite)} is known to this knowledge base "
                f"(it knows {sorted(known)}); use a knowledge base recorded with metallmix's meta-features")
        return self.recommender.recommend({**used, **(descriptors or {})}, constraints, top_k, ignored_features=ignored)

    def _selection(self, document: dict[str, Any]) -> dict[str, Any]:
        from metallmix.knowledge_bases import coverage

        values = document["meta_features"]["values"]
        covered = coverage(values, self.recommender.feature_domain_, self.recommender.metalearner_.meta_feature_names_)
        return {**self.selection, "coverage": covered.as_dict()}


def as_request(request: RecommendRequest | Mapping[str, Any]) -> RecommendRequest:
    """``request`` as a checked ``RecommendRequest`` (a mapping is validated: ConfigError naming the fields)."""
    from pydantic import ValidationError

    if not isinstance(request, RecommendRequest):
        try:
            request = RecommendRequest.model_validate(dict(request))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}" for e in exc.errors()[:10])
            raise ConfigError(f"bad recommendation request: {problems}") from None
    request.check_source()
    return request


def _engine(spec: Any, built: list[LLMEngine]) -> LLMEngine | None:
    if spec is None or not isinstance(spec, (str, dict)):
        return spec
    engine = make_engine(spec)
    if engine is not None:
        built.append(engine)
    return engine
