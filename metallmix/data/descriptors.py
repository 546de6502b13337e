"""What a dataset's images cannot tell: its imaging modality and its task type, as meta-features.

Both are categorical. The meta-learner reads numbers, so each becomes a group of 0/1 meta-features,
one per category (``modality_ct``, ``task_binary``, ...): exactly one of a group is 1 when the value
is known, and the whole group is missing (NaN) when it is not. Both sides of a recommendation use
the same encoding: a knowledge base's rows (MedMNIST+ publishes each dataset's modality and task)
and a user's dataset (modality and task from its dataset config, or ``--modality`` / ``--task``).

Modalities are free text in the wild ("abdominal ct (axial)", "chest x-ray", "dermatoscopy"); they
are mapped to a small set of imaging families by the keywords below, so that a new dataset of a
family the knowledge base knows (a chest X-ray set beside ChestMNIST) shares its features.
"""

from __future__ import annotations

import math
import re

from metallmix.errors import ConfigError

# family -> keywords: a whole word of the modality text, or (ending in "*") a word's beginning.
MODALITY_FAMILIES: dict[str, tuple[str, ...]] = {
    "xray": ("x-ray", "xray", "radiograph*", "radiography", "mammogra*"),
    "ct": ("ct", "computed tomography"),
    "mri": ("mri", "mr", "magnetic resonance"),
    "ultrasound": ("ultrasound", "sonograph*", "echocardiogra*"),
    "oct": ("oct", "optical coherence tomography"),
    "photography": ("fundus", "dermatoscop*", "dermoscop*", "clinical photograph*", "endoscop*", "colonoscop*"),
    "microscopy": ("microscop*", "patholog*", "histolog*", "histopatholog*", "cytolog*", "cell", "cells"),
}
TASK_TYPES = ("binary", "multi_class", "multi_label", "ordinal")
_TASK_ALIASES = {
    "binary": "binary", "binary-class": "binary", "binary_class": "binary",
    "multi-class": "multi_class", "multiclass": "multi_class", "multi_class": "multi_class",
    "multi-label": "multi_label", "multilabel": "multi_label", "multi_label": "multi_label",
    "multi-label, binary-class": "multi_label",
    "ordinal": "ordinal", "ordinal-regression": "ordinal", "ordinal_regression": "ordinal",
}
UNKNOWN = ("", "unknown", "none", "null")

MODALITY_FEATURES = tuple(f"modality_{family}" for family in MODALITY_FAMILIES)
TASK_FEATURES = tuple(f"task_{task}" for task in TASK_TYPES)
DESCRIPTOR_FEATURES = MODALITY_FEATURES + TASK_FEATURES


def modality_family(text: str | None) -> str | None:
    """The imaging family of a modality description (a family name is accepted as is); None if unknown."""
    if text is None or str(text).strip().lower() in UNKNOWN:
        return None
    lowered = str(text).strip().lower()
    if lowered in MODALITY_FAMILIES:
        return lowered
    words = re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", lowered)
    for family, keywords in MODALITY_FAMILIES.items():
        for keyword in keywords:
            if " " in keyword:
                if re.search(r"\b" + re.escape(keyword.rstrip("*")), lowered):
                    return family
            elif keyword.endswith("*"):
                if any(word.startswith(keyword[:-1]) for word in words):
                    return family
            elif keyword in words:
                return family
    return None


def task_type(text: str | None) -> str | None:
    """The canonical task type (one of TASK_TYPES) of a task description; None if unknown."""
    if text is None or str(text).strip().lower() in UNKNOWN:
        return None
    return _TASK_ALIASES.get(str(text).strip().lower())


def parse_modality(text: str) -> str:
    """A user's ``--modality``: its family, or ConfigError saying which words are understood."""
    family = modality_family(text)
    if family is None:
        known = ", ".join(f"{f} ({', '.join(k.rstrip('*') for k in kw)})" for f, kw in MODALITY_FAMILIES.items())
        raise ConfigError(f"modality {text!r} names no known imaging family; give a family or a description "
                          f"holding one of its keywords: {known}")
    return family


def parse_task(text: str) -> str:
    """A user's ``--task``: its canonical type, or ConfigError listing the accepted ones."""
    task = task_type(text)
    if task is None:
        raise ConfigError(f"task {text!r} is unknown; give one of {', '.join(TASK_TYPES)} "
                          "(binary-class, multi-class, multi-label and ordinal-regression are understood too)")
    return task


def descriptor_features(modality: str | None, task: str | None) -> dict[str, float]:
    """The 0/1 meta-features of a modality description and a task description (NaN where unknown)."""
    family, kind = modality_family(modality), task_type(task)
    out = {f"modality_{f}": (math.nan if family is None else float(f == family)) for f in MODALITY_FAMILIES}
    out.update({f"task_{t}": (math.nan if kind is None else float(t == kind)) for t in TASK_TYPES})
    return out
