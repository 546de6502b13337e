"""JSON Schemas (draft 2020-12) of what metallmix publishes, loaded from the installed package."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from metallmix.errors import ConfigError

RECOMMENDATION = "recommendation"


@cache
def load_schema(name: str = RECOMMENDATION) -> dict[str, Any]:
    """The schema ``metallmix/schemas/<name>.schema.json`` as a dict."""
    resource = resources.files(__package__) / f"{name}.schema.json"
    if not resource.is_file():
        raise ConfigError(f"no schema named {name!r} in metallmix.schemas")
    return json.loads(resource.read_text(encoding="utf-8"))


def validate(document: Any, name: str = RECOMMENDATION) -> None:
    """Raise jsonschema.ValidationError unless ``document`` follows schema ``name``."""
    import jsonschema

    schema = load_schema(name)
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(document)
