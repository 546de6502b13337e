"""Tests of metallmix.service: one recommendation request end to end, and the CLI as its thin caller.

The LLM is ``ScriptedTestEngine`` (tests/test_llm_pipeline.py), a test-only stand-in that replays written
answers: these tests check what the service does with an answer (checks, one repair, the flagged
fallback, the judge's threshold, validation), not a model. ``_ServiceTestServer`` is a test-only stand-in
for the Serve app's HTTP front: it answers POST /recommend with the same ``RecommendationService.recommend``
call the ``recommender`` deployment makes (the real Serve app is tested in tests/test_llm_serving.py).
"""

from __future__ import annotations

import re

import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import jsonschema
import pytest
from test_llm_pipeline import JUDGE_VERDICT, PICK, QUERY, ScriptedTestEngine, good_answer, make_llm_test_meta_dataset

import metallmix.service as service_module
from metallmix.cli import main
from metallmix.errors import ConfigError
from metallmix.llm.prompt import build_pick_prompt, prediction_text
from metallmix.recommend import Recommender
from metallmix.schemas import load_schema
from metallmix.service import (
    InvalidRecommendationError,
    JudgeReport,
    LLMOptions,
    LLMReport,
    LocalJudge,
    RecommendationService,
    RecommendRequest,
    RecommendResponse,
    pick_and_judge,
    recommendation_schema,
    validate_recommendation,
)

LOW_VERDICT = {"format": 1, "accuracy": 2, "completeness": 1, "comment": "Vague and unsupported."}


@pytest.fixture(scope="module")
def recommender_dir(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("service") / "recommender"
    Recommender(metalearner_params={"n_estimators": 30, "max_depth": 3}).fit(
        make_llm_test_meta_dataset(), spec="llm-test").save(folder)
    return str(folder)


@pytest.fixture(scope="module")
def recommender(recommender_dir) -> Recommender:
    return Recommender.load(recommender_dir)


@pytest.fixture(scope="module")
def document(recommender) -> dict:
    return RecommendationService(recommender).recommend_sync({"meta_features": QUERY, "top_k": 4})


def _pick(document, picker, judge_engine=None, options=None):
    options = options or PICK
    return service_module.asyncio.run(pick_and_judge(document, picker, LocalJudge(judge_engine, options), options=options))


def _with_justification(document: dict, text: str, rank: int = 1) -> dict:
    return {**good_answer(document, rank), "justification": text}


# ------------------------------------------------------------------ nothing failed is shown
def _degenerate(document: dict) -> dict[str, tuple[str, str]]:
    """Answers whose justification is degenerate, each with the text the reason must hold."""
    item = document["shortlist"][0]
    backbone, lr = item["backbone"], f"{item['config']['lr']:g}"
    return {
        "repeated n-grams": (f"{backbone} with lr={lr} [N1]: " + "the best meta-learner score first, " * 4 + "so it wins.",
                             "repeats the phrase"),
        "copied prompt line": (f"{backbone} with lr={lr} [N1] has {prediction_text(item['predicted'])}.",
                               "copies the evidence line"),
        "cut-off sentence": (f"{backbone} with lr={lr} is predicted best and the nearest past dataset [N1] agrees because the",
                             "stops mid-sentence"),
    }


@pytest.mark.parametrize("kind", ["repeated n-grams", "copied prompt line", "cut-off sentence"])
def test_a_degenerate_answer_is_repaired_once_then_falls_back_with_the_reason(document, kind):
    text, reason = _degenerate(document)[kind]
    answer = _with_justification(document, text)
    assert len(text) <= build_pick_prompt(document, PICK.prompt).schema["properties"]["justification"]["maxLength"]
    picker = ScriptedTestEngine(answer, answer)
    out = _pick(document, picker, ScriptedTestEngine(JUDGE_VERDICT))
    validate_recommendation(out)
    assert out["llm"]["fallback"] is True and out["llm"]["attempts"] == 2
    assert out["llm"]["fallback_reason"].startswith("invalid answer after one repair") and reason in out["llm"]["fallback_reason"]
    repair = picker.requests[1].messages[-1]
    assert repair["role"] == "user" and reason in repair["content"]  # the failures were sent back
    assert out["explanation"] == document["explanation"] and out["explanation_source"] == "template"
    assert text not in json.dumps({k: v for k, v in out.items() if k not in ("llm",)})  # shown nowhere but the report
    assert out["candidate_id"] == document["candidate_id"] and out["config"] == document["config"]
    assert out["judge"]["checks"]["passed"] is False and out["judge"]["scores"] is None
    assert out["judge"]["error"] == "not scored: the answer failed the deterministic checks"


def test_a_degenerate_answer_repaired_well_is_accepted(document):
    bad = _with_justification(document, _degenerate(document)["cut-off sentence"][0])
    good = good_answer(document, rank=2)
    judge = ScriptedTestEngine(JUDGE_VERDICT)
    out = _pick(document, ScriptedTestEngine(bad, good), judge)
    validate_recommendation(out)
    assert out["llm"]["fallback"] is False and out["llm"]["attempts"] == 2 and out["llm"]["errors"] == []
    assert out["explanation"] == good["justification"] and out["explanation_source"] == "llm"
    assert len(judge.requests) == 1  # the failed answer never reached the judge


def test_substance_checks_name_the_backbone_a_distinguishing_setting_and_shap_or_neighbours(document):
    prompt = build_pick_prompt(document, PICK.prompt)
    from metallmix.llm.answer import deterministic_checks

    assert deterministic_checks(good_answer(document, 2), [], prompt, document)["passed"] is True
    vague = _with_justification(document, "This candidate is the best choice given the evidence [C1].")
    checks = deterministic_checks({**vague, "evidence": ["C1"]}, [], prompt, document)
    assert checks["names_backbone"] is False and checks["names_distinguishing_setting"] is False
    assert checks["cites_shap_or_neighbours"] is False and checks["passed"] is False


def test_a_judge_below_the_threshold_falls_back(document):
    answer = good_answer(document, rank=2)
    picker, judge = ScriptedTestEngine(answer, answer), ScriptedTestEngine(LOW_VERDICT, LOW_VERDICT)
    # the threshold applies to the verdict (checks folded in): an answer passing every check is at 3 or more,
    # here 3 + (llm - 1) / 2 per criterion = 3.17, so only a threshold above 3 lets the LLM's low scores reject it
    out = _pick(document, picker, judge, LLMOptions(min_judge_score=4, prompt=PICK.prompt))
    validate_recommendation(out)
    assert out["llm"]["fallback"] is True and out["llm"]["attempts"] == 2 and len(judge.requests) == 2
    assert re.search(r"the judge scored the answer 3\.17 of 5 \(format 3(\.0)?, accuracy 3\.5, completeness 3(\.0)?\), "
                     r"below the 4 required", out["llm"]["fallback_reason"]), out["llm"]["fallback_reason"]
    assert "Vague and unsupported." in picker.requests[1].messages[-1]["content"]
    assert out["explanation"] == document["explanation"] and out["explanation_source"] == "template"
    assert out["judge"]["scores"] == {"format": 1, "accuracy": 2, "completeness": 1}  # the verdict on the rejected answer
    # the same verdict at the default threshold (3) or none (0) accepts the answer; a good verdict on the
    # repair accepts it too
    for threshold in (3, 0):
        assert _pick(document, ScriptedTestEngine(answer), ScriptedTestEngine(LOW_VERDICT),
                     LLMOptions(min_judge_score=threshold, prompt=PICK.prompt))["llm"]["fallback"] is False
    repaired = _pick(document, ScriptedTestEngine(answer, answer), ScriptedTestEngine(LOW_VERDICT, JUDGE_VERDICT),
                     LLMOptions(min_judge_score=4, prompt=PICK.prompt))
    assert repaired["llm"]["fallback"] is False and repaired["judge"]["mean_score"] == 4.0


def test_validation_refuses_a_failed_answer_shown_as_the_explanation(document):
    out = _pick(document, ScriptedTestEngine(good_answer(document, 2)), ScriptedTestEngine(JUDGE_VERDICT))
    validate_recommendation(out)
    failed = copy.deepcopy(out)
    failed["judge"]["checks"]["passed"] = False
    with pytest.raises(InvalidRecommendationError, match="failed"):
        validate_recommendation(failed)
    fallback_with_llm_text = copy.deepcopy(out)
    fallback_with_llm_text["llm"]["fallback"] = True
    with pytest.raises(InvalidRecommendationError):
        validate_recommendation(fallback_with_llm_text)
    invented = copy.deepcopy(out)
    invented["config"] = {**invented["config"], "lr": 100.0}
    with pytest.raises(InvalidRecommendationError, match="not a shortlisted candidate"):
        validate_recommendation(invented)


# ------------------------------------------------------------------ request and answer models
def test_response_model_and_json_schema_agree(document):
    schema = load_schema()
    fields = RecommendResponse.model_fields
    assert set(fields) == set(schema["properties"]) | {"llm", "judge"}
    assert {name for name, f in fields.items() if f.is_required()} == set(schema["required"])
    full = recommendation_schema()
    for name, model in (("llm", LLMReport), ("judge", JudgeReport)):
        generated = model.model_json_schema(ref_template="#/$defs/{model}")
        generated.pop("$defs", None)
        assert full["properties"][name] == generated
    picked = _pick(document, ScriptedTestEngine(good_answer(document, 2)), ScriptedTestEngine(JUDGE_VERDICT))
    for answer in (document, picked):
        jsonschema.Draft202012Validator(full).validate(answer)
        RecommendResponse.model_validate(answer)
    extra = copy.deepcopy(picked)
    extra["llm"]["temperature"] = 0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(full).validate(extra)
    with pytest.raises(ValueError):
        RecommendResponse.model_validate(extra)
    half = {k: v for k, v in picked.items() if k != "judge"}
    with pytest.raises(jsonschema.ValidationError):  # llm and judge come together
        validate_recommendation(half)


def test_requests_are_checked_with_messages_that_name_the_field(recommender):
    service = RecommendationService(recommender)
    with pytest.raises(ConfigError, match="give exactly one of meta_features"):
        service.recommend_sync({"meta_features": QUERY, "dataset": "breastmnist"})
    with pytest.raises(ConfigError, match=r"meta_features\.n_images: Input should be less than or equal to 1000000000000"):
        service.recommend_sync({"meta_features": {"n_images": 1e308}})
    with pytest.raises(ConfigError, match="top_k: Input should be less than or equal to 20"):
        service.recommend_sync({"meta_features": QUERY, "top_k": 50})
    with pytest.raises(ConfigError, match="unknown meta-feature 'colour'"):
        service.recommend_sync({"meta_features": {**QUERY, "colour": 3}})
    ignored = service.recommend_sync({"meta_features": {**QUERY, "colour": 3}, "ignore_unknown_meta_features": True})
    assert ignored["meta_features"]["ignored"] == ["colour"]
    assert RecommendRequest(meta_features=QUERY).llm is True


# ------------------------------------------------------------------ the CLI: in process and --server
class _ServiceTestServer(BaseHTTPRequestHandler):
    """Test-only stand-in for the Serve app's HTTP front (see the module doc); records the bodies it gets."""

    service: RecommendationService
    bodies: list

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.bodies.append(body)
        try:
            self._send(200, self.service.recommend_sync(body))
        except ConfigError as exc:
            self._send(422, {"detail": str(exc)})

    def do_GET(self):  # noqa: N802
        picker = self.service.picker
        self._send(200, {"status": "ok", "llm": {"model": picker.model, "engine": picker.kind} if picker else None})

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        return None


@pytest.fixture
def server(recommender):
    handler = type("Handler", (_ServiceTestServer,), {"bodies": []})
    httpd = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _comparable(answer: dict) -> dict:
    out = copy.deepcopy(answer)
    out["meta_dataset"].pop("selection", None)  # why this knowledge base: the CLI's --model-dir vs the server's config
    for key in ("llm", "judge"):
        if key in out:
            out[key]["latency_s"] = None
    return out


def test_cli_in_process_and_through_a_server_give_the_same_answer(recommender, recommender_dir, server, monkeypatch, capsys):
    handler, url = server
    request = {"meta_features": QUERY, "top_k": 3, "constraints": {"max_p_fail": 0.9}}
    shortlist = RecommendationService(recommender).shortlist(request)
    answer = good_answer(shortlist, rank=2)

    def scripted(spec):  # test-only: `--llm scripted-test` in process is the stand-in engine
        return ScriptedTestEngine(answer, JUDGE_VERDICT) if spec == "scripted-test" else None

    monkeypatch.setattr(service_module, "make_engine", scripted)
    picker = ScriptedTestEngine(answer, JUDGE_VERDICT)
    handler.service = RecommendationService(recommender, picker=picker, judge=picker, options=PICK,
                                            selection={"default": False, "reason": "the server's"})
    argv = ["recommend", "--meta-features", json.dumps(QUERY), "--top-k", "3", "--max-p-fail", "0.9",
            "--description", "Ultrasound images.", "--json"]
    assert main([*argv, "--model-dir", recommender_dir, "--llm", "scripted-test", "--llm-role", "pick"]) == 0
    local = json.loads(capsys.readouterr().out)
    assert main([*argv, "--server", url, "--llm", "server"]) == 0
    served = json.loads(capsys.readouterr().out)
    assert local["explanation_source"] == "llm" and local["llm"]["fallback"] is False
    assert _comparable(local) == _comparable(served)
    sent = handler.bodies[-1]  # every field of the request model is sent
    assert set(sent) == set(RecommendRequest.model_fields) and sent["constraints"]["max_p_fail"] == 0.9
    assert {k: sent[k] for k in ("meta_features", "top_k", "description", "llm", "judge")} == {
        "meta_features": QUERY, "top_k": 3, "description": "Ultrasound images.", "llm": True, "judge": True}
    # --llm none / --judge-llm none are sent as llm / judge off
    assert main([*argv, "--server", url, "--llm", "none"]) == 0
    assert handler.bodies[-1]["llm"] is False and "llm" not in json.loads(capsys.readouterr().out)
    handler.service.picker.answers[:] = [answer]
    assert main([*argv, "--server", url, "--llm", "server", "--judge-llm", "none"]) == 0
    assert handler.bodies[-1]["judge"] is False
    assert json.loads(capsys.readouterr().out)["judge"]["error"] == "judge off: deterministic checks only"


def test_server_refuses_options_it_does_not_support(recommender, server, capsys):
    handler, url = server
    handler.service = RecommendationService(recommender, picker=ScriptedTestEngine(), judge=None)
    base = ["recommend", "--meta-features", json.dumps(QUERY), "--server", url]
    cases = [
        (["--meta-dataset", "quicktune:builtin"], "--meta-dataset: the server at"),
        (["--model-dir", "somewhere"], "--model-dir: only in process"),
        (["--shap-summary", "x.png"], "--shap-summary: only in process"),
        (["--llm-role", "pick"], "--llm-role: only in process"),
        (["--judge-llm", "qwen2_5_coder_1_5b"], "--judge-llm qwen2_5_coder_1_5b: the server's judge model is chosen when it is deployed"),
        (["--llm", "qwen2_5_coder_1_5b"], "the server at " + url + " runs 'scripted-test-model'"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("metallmix: error: ") and message in err, (extra, err)
    no_file = ["recommend", "--dataset", "no/such/file.npz", "--server", url]
    assert main(no_file) == 2
    err = capsys.readouterr().err
    assert "no such file or folder here" in err and "send --meta-features" in err
    assert main(["recommend", "--dataset", "breast mnist!", "--server", url]) == 2
    assert "send --meta-features" in capsys.readouterr().err
    assert handler.bodies == []  # nothing refused was sent
    # with --server, modality, task and a compute budget are sent now
    assert main([*base, "--modality", "ultrasound", "--task", "binary", "--budget", "5PFLOP"]) == 2
    sent = handler.bodies[-1]
    assert sent["modality"] == "ultrasound" and sent["task"] == "binary" and sent["constraints"]["budget_flops"] == 5e15
    assert "budget_flops" in capsys.readouterr().err  # this knowledge base has times, not FLOP estimates: its reason


def test_a_local_dataset_file_is_sent_as_its_meta_features(recommender, server, capsys):
    from metallmix.llm.engines import REPO_ROOT

    handler, url = server
    handler.service = RecommendationService(recommender)
    path = REPO_ROOT / "metallmix" / "data" / "builtin" / "medmnist" / "breastmnist.npz"
    assert main(["recommend", "--dataset", str(path), "--server", url, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    sent = handler.bodies[-1]
    assert sent["dataset"] is None and sent["ignore_unknown_meta_features"] is True
    assert {"n_images", "n_classes", "pixel_std"} <= set(sent["meta_features"])
    assert set(out["meta_features"]["used"]) <= {"n_images", "n_classes", "pixel_std"}
    assert "resolution" in out["meta_features"]["ignored"]  # unknown to this knowledge base: listed, not an error


def test_the_benchmarks_llm_method_uses_the_same_rules(recommender):
    """metallmix.bench.llm.llm_pick's call: ``pick`` on a held-out dataset's shortlist (not a whole answer)."""
    from metallmix.metadataset.schema import config_columns

    runs = make_llm_test_meta_dataset()
    held_out = runs[runs["dataset_id"] == "llm_test_ds2"]
    shortlist = recommender.shortlist_document(QUERY, held_out.set_index("run_id")[config_columns(held_out)], 3)
    degenerate = _with_justification(shortlist, _degenerate(shortlist)["repeated n-grams"][0])
    service = RecommendationService(recommender, picker=ScriptedTestEngine(degenerate, degenerate),
                                    options=LLMOptions(judge=False, prompt=PICK.prompt))
    picked = service_module.asyncio.run(service.pick(shortlist, use_judge=False, validate=False))
    assert picked["llm"]["fallback"] is True and "repeats the phrase" in picked["llm"]["fallback_reason"]
    assert picked["candidate_id"] == shortlist["candidate_id"]  # the meta-learner's argmax is kept
    good = good_answer(shortlist, rank=2)
    service.picker = ScriptedTestEngine(good)
    picked = service_module.asyncio.run(service.pick(shortlist, use_judge=False, validate=False))
    assert picked["llm"]["fallback"] is False and picked["candidate_id"] == shortlist["shortlist"][1]["candidate_id"]


def test_the_cli_says_who_wrote_the_explanation_or_why_it_fell_back(document):
    from metallmix.cli import describe_llm_step

    accepted = _pick(document, ScriptedTestEngine(good_answer(document, 2)), ScriptedTestEngine(JUDGE_VERDICT))
    text = describe_llm_step(accepted["llm"], accepted["judge"])
    assert text.startswith("The explanation is the LLM's (scripted-test-model, ") and "picked rank 2 of the shortlist" in text
    assert "Judge verdict 4.5 of 5 (format 4.5, accuracy 5, completeness 4); the judge LLM's own scores: format 4, " \
           "accuracy 5, completeness 3." in text, text
    bad = _with_justification(document, _degenerate(document)["cut-off sentence"][0])
    failed = _pick(document, ScriptedTestEngine(bad, bad))
    text = describe_llm_step(failed["llm"], failed["judge"])
    assert text.startswith("LLM fallback (scripted-test-model, ") and "2 attempts" in text and "stops mid-sentence" in text
    assert "template explanation" in text
