"""How metallmix writes a training cost for people: a duration, or a compute estimate labelled as one.

Light on purpose (no third-party import): the LLM environment (.venv-llm) imports it through the prompt.
"""

from __future__ import annotations

import math
from typing import Any

PFLOP = 1e15


def format_duration(seconds: float) -> str:
    """'45 s', '12 min', '3.4 h'."""
    seconds = float(seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def format_flops(flops: float | None) -> str:
    """'12.3 PFLOP (est.)': every printed compute figure says it is an estimate."""
    if flops is None or not math.isfinite(flops):
        return "unknown"
    value = flops / PFLOP
    return f"{value:,.0f} PFLOP (est.)" if value >= 1000 else f"{value:.3g} PFLOP (est.)"


def cost_amount(seconds: float | None, flops: float | None) -> str:
    """A run's cost as shown: its duration where it has one, else its compute estimate (labelled so)."""
    return format_duration(seconds) if seconds is not None else format_flops(flops)


def cost_text(predicted: dict[str, Any]) -> str:
    """'training about 12 min', or 'training compute about 3.1 PFLOP (est.)' where only an estimate exists."""
    if predicted.get("train_seconds") is not None:
        return f"training about {format_duration(predicted['train_seconds'])}"
    if predicted.get("compute_flops_estimate") is not None:
        return f"training compute about {format_flops(predicted['compute_flops_estimate'])}"
    return "training cost unknown"
