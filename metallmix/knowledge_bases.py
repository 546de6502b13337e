"""The knowledge bases shipped with metallmix, and which one answers a dataset by default.

A medical dataset -- a MedMNIST file or name, or any dataset whose imaging modality is known (from its
config or ``--modality``) -- is answered from the MedMNIST+ benchmark; other images from the Quick-Tune
runs on natural images (Meta-Album). ``--meta-dataset`` still chooses explicitly. The choice comes
with its reason and, for each shipped knowledge base, how many of the dataset's meta-features that
its meta-learner uses fall inside the range its datasets span.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from metallmix.data.descriptors import modality_family

MEDICAL = "medmnistplus:builtin"
NATURAL = "quicktune:builtin"
DESCRIPTIONS = {
    MEDICAL: "MedMNIST+ benchmark: 9 medical datasets (CT, X-ray, OCT, ultrasound, fundus, pathology, "
             "microscopy) x 120 model/scheme/resolution configs",
    NATURAL: "Quick-Tune: 3,198 fine-tuning runs of 24 models on 18 natural-image Meta-Album datasets",
}


@dataclass(frozen=True)
class Coverage:
    """How many of a dataset's meta-features lie inside a knowledge base's range, and which do not."""

    inside: int
    of: int
    outside: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"inside": self.inside, "of": self.of, "outside": list(self.outside)}


def coverage(meta_features: dict[str, float], domain: dict[str, dict[str, Any]], learned: list[str]) -> Coverage:
    """Coverage of ``meta_features`` by a knowledge base's feature ``domain`` (Recommender.feature_domain_),
    counting the features its meta-learner uses (``learned``) that the dataset has."""
    checked = [n for n in learned if n in domain and _finite(meta_features.get(n)) and domain[n]["min"] is not None]
    outside = tuple(n for n in checked if not domain[n]["min"] <= meta_features[n] <= domain[n]["max"])
    return Coverage(inside=len(checked) - len(outside), of=len(checked), outside=outside)


def default_knowledge_base(is_medical: bool, modality: str | None, kind: str) -> tuple[str, str]:
    """(spec, reason) of the knowledge base that answers a dataset when none is named."""
    if is_medical:
        why = f"modality {modality!r}, imaging family {modality_family(modality)}" if modality else "a MedMNIST dataset"
        return MEDICAL, f"medical images ({why}): answered from the medical knowledge base, {DESCRIPTIONS[MEDICAL]}"
    return NATURAL, (f"no imaging modality known for this {kind} dataset, so it is taken for natural images: answered "
                     f"from {DESCRIPTIONS[NATURAL]}; give --modality (e.g. 'chest x-ray') for the medical knowledge base")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(float(value))
