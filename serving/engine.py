"""The LLM engine deployment: vLLM in a replica run by the vLLM environment's Python.

This module is imported inside that environment, so it imports only Ray Serve and the standard
library at module level; vLLM is imported when the replica starts (``VLLMEngine.__init__``).
``check_health`` asks vLLM whether its engine core is alive: when it died, Serve marks the replica
unhealthy and starts a new one (the deployment recovers by itself; requests in flight fail and the
recommender answers them with the flagged fallback).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from ray import serve

from metallmix.llm.engines import Generation, GenerationRequest, VLLMActor

# Backpressure (docs/llm.md): vLLM batches the requests a replica holds, so a replica takes 8 at once
# (more only lengthens every answer on a CPU); up to 64 more wait in Serve's queue, beyond which the
# caller gets a "too many requests" error at once instead of a timeout later.
ENGINE_MAX_ONGOING_REQUESTS = 8
ENGINE_MAX_QUEUED_REQUESTS = 64


@serve.deployment(
    max_ongoing_requests=ENGINE_MAX_ONGOING_REQUESTS,
    max_queued_requests=ENGINE_MAX_QUEUED_REQUESTS,
    health_check_period_s=10,
    health_check_timeout_s=60,
    graceful_shutdown_timeout_s=30,
)
class EngineDeployment(VLLMActor):
    """One vLLM engine; ``generate`` takes and returns plain dicts (GenerationRequest / Generation).

    Serve calls the inherited ``check_health`` periodically: it raises when vLLM's engine core is dead.
    """

    async def health(self) -> dict[str, Any]:
        """The same check, callable through a handle."""
        await self.engine.check_health()
        return {"model": self.engine.model, "healthy": True}

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()


class DeploymentEngine:
    """An ``LLMEngine`` that forwards to an ``EngineDeployment`` through its handle."""

    kind = "vllm-serve"

    def __init__(self, handle: Any, model: str):
        self.handle = handle
        self.model = model

    async def generate(self, request: GenerationRequest) -> Generation:
        return Generation(**await self.handle.generate.remote(asdict(request)))

    async def check_health(self) -> None:
        await self.handle.health.remote()

    def close(self) -> None:
        """The deployment's lifetime is Serve's business."""
