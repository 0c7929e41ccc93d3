"""Orchestrator settings: the shared service settings plus how phases are executed."""

from __future__ import annotations

from autopack_common.settings import ServiceSettings
from pydantic import Field


class OrchestratorSettings(ServiceSettings):
    """Read from ``AUTOPACK_ORCHESTRATOR_*`` (and the shared variables of every service)."""

    context_budget_tokens: int = Field(
        default=12000, gt=0, alias="AUTOPACK_ORCHESTRATOR_CONTEXT_BUDGET_TOKENS"
    )
    build_timeout_seconds: float = Field(
        default=600.0, gt=0, alias="AUTOPACK_ORCHESTRATOR_BUILD_TIMEOUT_SECONDS"
    )
    # Preparing a workspace copies the source repository, which can take a while.
    prepare_timeout_seconds: float = Field(
        default=300.0, gt=0, alias="AUTOPACK_ORCHESTRATOR_PREPARE_TIMEOUT_SECONDS"
    )
    max_attempts: int = Field(default=2, ge=1, le=10, alias="AUTOPACK_ORCHESTRATOR_MAX_ATTEMPTS")
    executor_workers: int = Field(default=4, ge=1, alias="AUTOPACK_ORCHESTRATOR_EXECUTOR_WORKERS")
    # Model passed to the estimator and the builder; empty lets each use its configured default.
    model: str = Field(default="", alias="AUTOPACK_ORCHESTRATOR_MODEL")
    # A run whose lease is not renewed for this long is considered abandoned and is resumed.
    lease_seconds: float = Field(default=30.0, gt=0, alias="AUTOPACK_ORCHESTRATOR_LEASE_SECONDS")
