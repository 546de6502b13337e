"""The judge discriminates: a floor on the AUC of its verdict on the labelled set (metallmix.llm.judge_set).

The verdict here is computed without a real LLM: by the deterministic checks folded into the anchored
rubric (``fold_verdict``), and with ``ConstantTestEngine``, a test-only stand-in judge engine that scores
every answer the same (as SmolLM2 does: 1/1/1), to show the folded verdict still discriminates when the
LLM's own scores do not. The real LLM judge's AUC is measured by benchmarks/judge_auc.py (docs/llm.md).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from metallmix.llm import Generation
from metallmix.llm.answer import parse_answer
from metallmix.llm.judge import fold_verdict, judge_answer
from metallmix.llm.judge_set import CORRUPTIONS, FAITHFUL, build_judge_set

AUC_FLOOR = 0.9
# the check(s) each corruption must fail (at least one of them)
CAUGHT_BY = {
    "wrong_accuracy": {"quoted_accuracy_matches"},
    "wrong_backbone": {"names_backbone"},
    "invented_numbers": {"numbers_supported"},
    "unsupported_claim": {"claims_supported"},
    "off_topic": {"names_backbone", "names_distinguishing_setting"},
    "repeated_text": {"no_repetition"},
    "copied_prompt": {"no_copied_prompt_line"},
}


class ConstantTestEngine:
    """Test-only stand-in judge engine: the same scores for every answer (a judge that does not discriminate)."""

    kind = "constant-test"
    model = "constant-test-model"

    def __init__(self, score: int):
        self.text = json.dumps({"format": score, "accuracy": score, "completeness": score, "comment": "Fine."})

    async def generate(self, request):
        return Generation(text=self.text, finish_reason="stop", prompt_tokens=1, completion_tokens=1, latency_s=0.0,
                          model=self.model)

    async def check_health(self):
        return None

    def close(self):
        return None


@pytest.fixture(scope="module")
def items():
    return build_judge_set(per_knowledge_base=3, seed=0)


def verdicts(items, engine=None):
    async def go():
        return [await judge_answer(engine, i.prompt, i.answer, [], i.document, timeout_s=10) for i in items]
    return asyncio.run(go())


def auc(items, scores, kind=None):
    from sklearn.metrics import roc_auc_score

    pairs = [(i, s) for i, s in zip(items, scores) if i.faithful or kind is None or i.label == kind]
    return roc_auc_score([int(i.faithful) for i, _ in pairs], [s for _, s in pairs])


def test_the_set_is_labelled_schema_valid_and_reproducible(items):
    labels = {i.label for i in items}
    assert labels == {FAITHFUL, *CORRUPTIONS}
    assert {i.knowledge_base for i in items} == {"quicktune:builtin", "medmnistplus:builtin"}
    for item in items:  # every answer parses: the judge is measured, not the parser
        answer, errors = parse_answer(json.dumps(item.answer), "stop", item.prompt)
        assert not errors, (item.item_id, errors)
    again = build_judge_set(per_knowledge_base=3, seed=0)
    assert [(i.item_id, i.answer) for i in again] == [(i.item_id, i.answer) for i in items]


def test_faithful_answers_pass_and_each_corruption_is_caught_by_its_check(items):
    for item, verdict in zip(items, verdicts(items)):
        checks = verdict["checks"]
        if item.faithful:
            assert checks["passed"], (item.item_id, verdict["capped_by"], item.answer["justification"])
            assert verdict["verdict_score"] == 5.0
        else:
            failed = {name for name in CAUGHT_BY[item.label] if not checks[name]}
            assert failed, (item.item_id, verdict["capped_by"], item.answer["justification"])


def test_llm_free_verdict_auc_floor_overall_and_per_corruption(items):
    scores = [v["verdict_score"] for v in verdicts(items)]
    assert auc(items, scores) >= AUC_FLOOR
    for kind in CORRUPTIONS:
        assert auc(items, scores, kind) >= AUC_FLOOR, kind
    # the floor can fail: within each shortlist, every corrupted answer scores below every faithful one
    by_query: dict[str, list] = {}
    for item, score in zip(items, scores):
        by_query.setdefault(item.query, []).append((item, score))
    for pairs in by_query.values():
        worst_faithful = min(s for i, s in pairs if i.faithful)
        assert all(s < worst_faithful for i, s in pairs if not i.faithful), pairs
    # and a verdict that ignored the checks would not pass it
    assert auc(items, [5.0 for _ in items]) < AUC_FLOOR


@pytest.mark.parametrize("score", [1, 5])
def test_folded_verdict_discriminates_when_the_llm_scores_do_not(items, score):
    judged = verdicts(items, ConstantTestEngine(score))
    assert all(v["mean_score"] == score for v in judged)  # the LLM's own scores: no discrimination
    assert auc(items, [v["mean_score"] for v in judged]) == 0.5
    assert auc(items, [v["verdict_score"] for v in judged]) >= AUC_FLOOR


def test_anchored_levels():
    passed = {name: True for name in ("schema_valid", "candidate_in_shortlist", "quoted_accuracy_matches",
                                      "numbers_supported", "evidence_cited", "names_backbone", "no_prompt_leak",
                                      "no_repetition", "no_copied_prompt_line", "complete_sentence",
                                      "names_distinguishing_setting", "cites_shap_or_neighbours", "claims_supported")}
    assert fold_verdict(None, passed)["verdict_scores"] == {"format": 5, "accuracy": 5, "completeness": 5}
    # checks pass: the LLM places the answer in 3..5
    llm = fold_verdict({"format": 1, "accuracy": 3, "completeness": 5}, passed)["verdict_scores"]
    assert llm == {"format": 3, "accuracy": 4, "completeness": 5}
    # a failed check caps its criterion whatever the LLM says; a second failure lowers it by one more
    wrong = fold_verdict({"format": 5, "accuracy": 5, "completeness": 5}, {**passed, "numbers_supported": False})
    assert wrong["verdict_scores"]["accuracy"] == 2 and wrong["capped_by"] == ["numbers_supported -> accuracy <= 2"]
    two = fold_verdict(None, {**passed, "names_distinguishing_setting": False, "cites_shap_or_neighbours": False})
    assert two["verdict_scores"]["completeness"] == 1
