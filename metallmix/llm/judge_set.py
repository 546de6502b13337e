"""A labelled set for measuring the judge: faithful answers and corrupted ones, from real shortlists.

Each shortlist comes from the recommender of a shipped knowledge base (``quicktune:builtin``,
``medmnistplus:builtin``) for a held-out-like query: the meta-features of one of its datasets with the
size features (images, split sizes, class sizes) scaled by a seeded factor, so that no neighbour sits
at distance 0. For each shortlist two faithful answers are written by code from the evidence (one
choosing the meta-learner's top candidate, one its second): the backbone named, its predicted accuracy
as shown, a setting in which it differs from the runner-up with the runner-up's value, one SHAP
attribution of the chosen candidate with its direction and points, and the nearest neighbour's best
run. One of the two (seeded) is then corrupted once per type of ``CORRUPTIONS``:

- ``wrong_accuracy``: the quoted accuracy (field and text) moved by 3-12 points;
- ``wrong_backbone``: the chosen backbone's name replaced by another backbone of the evidence;
- ``invented_numbers``: a sentence with an epoch count and a test accuracy found nowhere in the evidence;
- ``unsupported_claim``: the SHAP attribution's direction reversed (raises <-> lowers), or (seeded) the
  neighbour cited under a label the prompt does not show;
- ``off_topic``: a justification about something else (the answer's other fields stay valid);
- ``repeated_text``: the first sentence said three times;
- ``copied_prompt``: the chosen candidate's shortlist line copied from the prompt.

Every answer follows the prompt's JSON schema, so what is measured is the judge, not the parser.
Deterministic for a seed. ``build_judge_set()`` returns ``JudgeItem``s (label ``faithful`` or a
corruption name); benchmarks/judge_auc.py scores them, tests/test_judge_auc.py holds a floor.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from metallmix.llm.answer import NUMBER_PATTERN, backbone_of, distinguishing_settings
from metallmix.llm.prompt import BACKBONE_KEYS, PickPrompt, PromptOptions, build_pick_prompt, shown_settings

KNOWLEDGE_BASES = ("quicktune:builtin", "medmnistplus:builtin")
CORRUPTIONS = ("wrong_accuracy", "wrong_backbone", "invented_numbers", "unsupported_claim", "off_topic",
               "repeated_text", "copied_prompt")
FAITHFUL = "faithful"
SIZE_FEATURES = ("n_images", "n_train", "n_val", "n_test", "class_size_mean", "class_size_max", "class_size_min",
                 "class_size_std")
OFF_TOPIC = (
    "Rain is expected over the coast this afternoon, so take a coat. The harbour ferries keep their usual "
    "timetable and the museum stays open late on Thursdays.",
    "Simmer the onions slowly until golden, then add the tomatoes and a pinch of salt. Serve the soup warm "
    "with fresh bread and a green salad.",
    "The home side scored twice in the second half and held on to win. Their coach praised the defence and "
    "the crowd sang until the final whistle.",
)


@dataclass(frozen=True)
class JudgeItem:
    """One labelled answer: ``label`` is ``faithful`` or a corruption of ``CORRUPTIONS``."""

    item_id: str
    knowledge_base: str
    query: str  # the dataset whose (scaled) meta-features made the shortlist
    label: str
    document: dict[str, Any]
    prompt: PickPrompt
    answer: dict[str, Any]

    @property
    def faithful(self) -> bool:
        return self.label == FAITHFUL


def build_judge_set(specs: tuple[str, ...] = KNOWLEDGE_BASES, per_knowledge_base: int = 4, seed: int = 0,
                    top_k: int = 5, recommenders: dict[str, Any] | None = None,
                    options: PromptOptions | None = None) -> list[JudgeItem]:
    """The labelled set: per knowledge base ``per_knowledge_base`` shortlists, each with 2 faithful answers and
    one corruption per type; items grouped by shortlist, in a fixed order."""
    from metallmix.service import obtain_recommender

    rng = random.Random(seed)
    options = options or PromptOptions(role="pick")  # faithful answers choose C1 or C2
    items: list[JudgeItem] = []
    for spec in specs:
        recommender = (recommenders or {}).get(spec) or obtain_recommender(spec, log=lambda _: None)
        for dataset_id, meta_features in held_out_like_queries(spec, per_knowledge_base, rng):
            document = recommender.recommend(meta_features, {}, top_k)
            prompt = build_pick_prompt(document, options)
            faithful = {rank: faithful_answer(document, prompt, rank, options.justification_max_chars)
                        for rank in (1, 2) if rank <= len(document["shortlist"])}
            base = f"{spec.partition(':')[0]}/{dataset_id}"
            for rank, answer in faithful.items():
                items.append(JudgeItem(f"{base}/faithful-C{rank}", spec, dataset_id, FAITHFUL, document, prompt, answer))
            source_rank = rng.choice(sorted(faithful))
            for kind in CORRUPTIONS:
                answer = corrupt(kind, faithful[source_rank], document, prompt, rng, options.justification_max_chars)
                items.append(JudgeItem(f"{base}/{kind}-C{source_rank}", spec, dataset_id, kind, document, prompt, answer))
    return items


def held_out_like_queries(spec: str, n: int, rng: random.Random) -> list[tuple[str, dict[str, float]]]:
    """``n`` datasets of the knowledge base (seeded choice) with their size features scaled by 0.5-0.8 or
    1.3-2.0: near a known dataset, never on it."""
    from metallmix.metadataset import load_meta_dataset, row_meta_features

    df = load_meta_dataset(spec)
    firsts = df.groupby("dataset_id", sort=True).head(1)
    rows = [row for _, row in firsts.iterrows()]
    chosen = rng.sample(rows, min(n, len(rows)))
    out = []
    for row in chosen:
        features = {k: float(v) for k, v in row_meta_features(row).items() if v == v}
        factor = rng.choice((rng.uniform(0.5, 0.8), rng.uniform(1.3, 2.0)))
        for key in SIZE_FEATURES:
            if key in features:
                features[key] = float(max(1, round(features[key] * factor)))
        out.append((str(row["dataset_id"]), features))
    return out


# ------------------------------------------------------------------ faithful answers
def faithful_answer(document: dict[str, Any], prompt: PickPrompt, rank: int, max_chars: int) -> dict[str, Any]:
    """An answer choosing the shortlist's ``rank``-th candidate, written from the evidence only."""
    parts = _faithful_parts(document, prompt, rank)
    return {
        "candidate_id": str(document["shortlist"][rank - 1]["candidate_id"]),
        "predicted_accuracy_percent": parts["accuracy"],
        "evidence": [label for label in (f"C{rank}", f"S{rank}", "N1") if label in prompt.evidence_labels],
        "justification": compose(parts["sentences"], max_chars),
    }


def _faithful_parts(document: dict[str, Any], prompt: PickPrompt, rank: int) -> dict[str, Any]:
    shortlist = document["shortlist"]
    item = shortlist[rank - 1]
    backbone = backbone_of(item) or "the chosen backbone"
    accuracy = f"{item['predicted']['accuracy'] * 100:.1f}"
    risk = f"{item['predicted']['p_fail'] * 100:.0f}"
    sentences: list[tuple[str, int | None]] = [
        (f"I choose {backbone} [C{rank}], predicted at {accuracy}%", None),
        (f" with a {risk}% failure risk", 3),
        (".", None),
    ]
    rival_rank, rival = next((n, other) for n, other in enumerate(shortlist, start=1) if n != rank)
    differing = distinguishing_settings(item, document)
    shown = shown_settings(shortlist, document.get("evidence", {}).get("global_importance") or [], 99)
    keys = [k for k in shown if k in differing and k not in BACKBONE_KEYS] or [k for k in shown if k in differing]
    if keys:
        key = keys[0]
        sentences.append((f" It uses {key}={differing[key]} where the runner-up [C{rival_rank}] uses "
                          f"{_shown(rival['config'].get(key))}.", None))
    feature = _shap_feature(document, item)
    if feature is not None:
        sentences.append((f" Per [S{rank}], {feature['base']} {feature['direction']} its accuracy by "
                          f"{abs(feature['points']):.1f} points", None))
    neighbours = (document.get("evidence") or {}).get("neighbours") or []
    if neighbours and "N1" in prompt.evidence_labels:
        runs = neighbours[0].get("top_configs") or []
        reached = f" reached {runs[0]['accuracy'] * 100:.1f}%" if runs else " is the closest"
        sentences.append(((", and the" if feature is not None else " The") +
                          f" nearest past dataset {neighbours[0]['dataset_id']}{reached} [N1]", 2))
    sentences.append((".", None))
    return {"item": item, "backbone": backbone, "accuracy": accuracy, "feature": feature, "sentences": sentences,
            "neighbours": neighbours}


def _shap_feature(document: dict[str, Any], item: dict[str, Any]) -> dict[str, Any] | None:
    """The chosen candidate's first SHAP attribution (not the backbone's) whose direction is the same in every
    explanation shown, as ``{base, direction, points}``."""
    from metallmix.llm.answer import shap_directions

    directions = shap_directions(document)
    for explanation in (document.get("evidence") or {}).get("shap") or []:
        if str(explanation["candidate_id"]) != str(item["candidate_id"]):
            continue
        for feature in explanation.get("top_features") or []:
            base = str(feature["name"]).partition("=")[0].strip().lower()
            if base in BACKBONE_KEYS or len(directions.get(base, ())) != 1 or round(abs(feature["points"]), 1) == 0:
                continue
            return {"base": base, "direction": feature["direction"], "points": float(feature["points"])}
    return None


def compose(sentences: list[tuple[str, int | None]], max_chars: int) -> str:
    """The parts joined; while too long, the optional parts (priority given) are dropped, lowest first."""
    parts = list(sentences)
    while len("".join(text for text, _ in parts).strip()) > max_chars:
        optional = [p for p in parts if p[1] is not None]
        if not optional:
            return "".join(text for text, _ in parts).strip()[:max_chars]
        parts.remove(min(optional, key=lambda p: p[1]))
    return "".join(text for text, _ in parts).strip()


# ------------------------------------------------------------------ corruptions
def corrupt(kind: str, answer: dict[str, Any], document: dict[str, Any], prompt: PickPrompt, rng: random.Random,
            max_chars: int) -> dict[str, Any]:
    """``answer`` with one corruption of ``kind`` (schema-valid still)."""
    rank = next(n for n, item in enumerate(document["shortlist"], start=1)
                if str(item["candidate_id"]) == answer["candidate_id"])
    parts = _faithful_parts(document, prompt, rank)
    out = dict(answer)
    text = answer["justification"]
    if kind == "wrong_accuracy":
        shift = rng.uniform(3, 12) * rng.choice((-1, 1))
        true = float(parts["accuracy"])
        wrong = f"{min(99.9, max(0.1, true + shift if 0 < true + shift < 100 else true - shift)):.1f}"
        out["predicted_accuracy_percent"] = wrong
        out["justification"] = text.replace(f"{parts['accuracy']}%", f"{wrong}%")
    elif kind == "wrong_backbone":
        out["justification"] = text.replace(parts["backbone"], _other_backbone(document, parts, rng))
    elif kind == "invented_numbers":
        epochs, test = _unseen_number(prompt, rng, 12, 60, 0), _unseen_number(prompt, rng, 60, 99, 1)
        sentences = list(parts["sentences"])
        sentences.insert(3, (f" It should converge within {epochs} epochs and score {test}% on the test split.", None))
        out["justification"] = compose(sentences, max_chars)
    elif kind == "unsupported_claim":
        flip = parts["feature"] is not None and (rng.random() < 0.5 or not parts["neighbours"])
        if flip:
            feature = parts["feature"]
            reversed_ = "lowers" if feature["direction"] == "raises" else "raises"
            out["justification"] = text.replace(f"{feature['base']} {feature['direction']} ",
                                                f"{feature['base']} {reversed_} ")
        else:
            shown = sum(1 for label in prompt.evidence_labels if label.startswith("N"))
            sentences = [(t.replace("[N1]", f"[N{shown + 1}]").replace("nearest past dataset",
                                                                       "closest past dataset of all"), p)
                         for t, p in parts["sentences"]]
            out["justification"] = compose(sentences, max_chars)
    elif kind == "off_topic":
        out["justification"] = rng.choice(OFF_TOPIC)[:max_chars]
    elif kind == "repeated_text":
        first = compose(parts["sentences"][:3], max_chars)
        out["justification"] = compose([(first + " ", None), (first + " ", 2), (first, 1)], max_chars)
    elif kind == "copied_prompt":
        line = next(line for line in prompt.messages[-1]["content"].splitlines() if line.startswith(f"[C{rank}]"))
        copied = line.partition(": ")[2]
        text = f"I choose {parts['backbone']}: {copied}"
        if len(text) + 1 > max_chars:
            text = text[:max_chars - 1].rsplit(" ", 1)[0].rstrip(",;")
        out["justification"] = text + "."
    else:
        raise ValueError(f"unknown corruption {kind!r}; known: {CORRUPTIONS}")
    return out


def _other_backbone(document: dict[str, Any], parts: dict[str, Any], rng: random.Random) -> str:
    """A backbone of the evidence (shortlist or neighbours' runs) that is not the chosen one."""
    names = {backbone_of(item) for item in document["shortlist"]}
    for hit in parts["neighbours"]:
        for run in hit.get("top_configs") or []:
            names.add(next((str(run["config"][k]) for k in BACKBONE_KEYS if k in run["config"]), None))
    names = sorted(n for n in names if n and n != parts["backbone"] and parts["backbone"] not in n)
    return rng.choice(names) if names else "resnet50"


def _unseen_number(prompt: PickPrompt, rng: random.Random, low: int, high: int, decimals: int) -> str:
    """A number in [low, high] that matches no number of the evidence (within the checks' rounding)."""
    known = [float(n) for n in NUMBER_PATTERN.findall(prompt.evidence_text)]
    for _ in range(1000):
        value = round(rng.uniform(low, high), decimals)
        if not any(abs(value - k) <= 0.05 + 0.005 * abs(k) for k in known):
            return f"{value:.{decimals}f}"
    raise ValueError("no unseen number found")


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def corruption_counts(items: list[JudgeItem]) -> dict[str, int]:
    """Items per label."""
    out: dict[str, int] = {}
    for item in items:
        out[item.label] = out.get(item.label, 0) + 1
    return out

