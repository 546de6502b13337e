"""Client of the Serve application's HTTP API (serving/): what ``metallmix recommend --server URL`` calls."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from metallmix.errors import ConfigError, MetallmixError


class ServerError(MetallmixError, ConnectionError):
    """The metallmix server cannot be reached, or failed (5xx)."""


def recommend_via_server(
    url: str,
    request: Any = None,
    *,
    meta_features: dict[str, Any] | None = None,
    dataset: str | None = None,
    constraints: dict[str, Any] | None = None,
    top_k: int = 5,
    description: str | None = None,
    llm: bool = True,
    judge: bool = True,
    timeout_s: float = 900.0,
) -> dict[str, Any]:
    """POST /recommend to a running metallmix Serve application and return its recommendation.

    Args:
        url: the application's root, e.g. ``http://127.0.0.1:8000``.
        request: a ``metallmix.service.RecommendRequest`` (or its dict): sent as it is; else the keywords:
        meta_features / dataset: exactly one (a dataset is a name the server has registered).
        llm: let the server's LLM pick and justify (False: the meta-learner's top with its template).
        judge: let the server's judge score the answer.

    Raises ConfigError for a request the server rejects (4xx, with its message) and ServerError (a
    ConnectionError) when the server cannot be reached or fails (5xx, e.g. 503 when its queue is full).
    """
    if request is not None:
        payload = request.model_dump() if hasattr(request, "model_dump") else dict(request)
    else:
        payload = {"meta_features": meta_features, "dataset": dataset, "constraints": constraints or {}, "top_k": top_k,
                   "description": description, "llm": llm, "judge": judge}
    return _call(url, "/recommend", payload, timeout_s)


def server_health(url: str, timeout_s: float = 60.0) -> dict[str, Any]:
    """GET /health of a running metallmix Serve application: its knowledge base and LLM (model, engine)."""
    return _call(url, "/health", None, timeout_s)


def _call(url: str, route: str, payload: dict[str, Any] | None, timeout_s: float) -> dict[str, Any]:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url.rstrip("/") + route, data=data, headers={"Content-Type": "application/json"},
                                     method="GET" if payload is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        try:
            detail = json.loads(body).get("detail", body)
        except (json.JSONDecodeError, AttributeError):
            detail = body
        if 400 <= exc.code < 500:
            raise ConfigError(f"the server rejected the request (HTTP {exc.code}): {detail}") from None
        raise ServerError(f"the server failed (HTTP {exc.code}): {str(detail)[:500]}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ServerError(
            f"cannot reach the metallmix server at {url} ({exc}); start one with `serve run serving/config.yaml`"
        ) from None
