"""Orchestrator settings: the shared service settings plus how phases are executed."""

from __future__ import annotations

from autopack_common.settings import ServiceSettings
from pydantic import Field


class OrchestratorSettings(ServiceSettings):
    """Read from ``AUTOPACK_ORCHESTRATOR_*`` (and the shared variables of every service)."""

    context_budget_tokens: int = Field(
        default=12000, gt=0, alias="AUTOPACK_ORCHESTRATOR_CONTEXT_BUDGET_TOKENS"
    )
    # Context by reference: memory indexes the run's workspace (read through the applier) and
    # chooses among all of its files; off = only the scoped files are sent as candidates.
    context_by_reference: bool = Field(default=True, alias="AUTOPACK_ORCHESTRATOR_CONTEXT_BY_REFERENCE")
    build_timeout_seconds: float = Field(
        default=600.0, gt=0, alias="AUTOPACK_ORCHESTRATOR_BUILD_TIMEOUT_SECONDS"
    )
    # Preparing a workspace copies the source repository, which can take a while.
    prepare_timeout_seconds: float = Field(
        default=300.0, gt=0, alias="AUTOPACK_ORCHESTRATOR_PREPARE_TIMEOUT_SECONDS"
    )
    # Counted attempts per phase; interrupted and infrastructure-failed attempts do not count.
    max_attempts: int = Field(default=4, ge=1, le=10, alias="AUTOPACK_ORCHESTRATOR_MAX_ATTEMPTS")
    executor_workers: int = Field(default=4, ge=1, alias="AUTOPACK_ORCHESTRATOR_EXECUTOR_WORKERS")
    # Model passed to the estimator and the builder; empty lets each use its configured default.
    model: str = Field(default="", alias="AUTOPACK_ORCHESTRATOR_MODEL")
    # A run whose lease is not renewed for this long is considered abandoned and is resumed.
    lease_seconds: float = Field(default=30.0, gt=0, alias="AUTOPACK_ORCHESTRATOR_LEASE_SECONDS")
    # How often an idle replica looks for unowned work (resumed runs, drained phases).
    claim_poll_seconds: float = Field(default=0.5, gt=0, alias="AUTOPACK_ORCHESTRATOR_CLAIM_POLL_SECONDS")
    # Infrastructure errors (a service UNAVAILABLE) are retried this often with exponential backoff.
    transient_retries: int = Field(default=3, ge=0, le=10, alias="AUTOPACK_ORCHESTRATOR_TRANSIENT_RETRIES")
    transient_backoff_seconds: float = Field(
        default=0.5, ge=0, alias="AUTOPACK_ORCHESTRATOR_TRANSIENT_BACKOFF_SECONDS"
    )
    # Doctor budgets (seed 004: 2 per phase, 10 per run) and re-plans per phase (1).
    doctor_calls_per_phase: int = Field(default=2, ge=0, alias="AUTOPACK_ORCHESTRATOR_DOCTOR_CALLS_PER_PHASE")
    doctor_calls_per_run: int = Field(default=10, ge=0, alias="AUTOPACK_ORCHESTRATOR_DOCTOR_CALLS_PER_RUN")
    replans_per_phase: int = Field(default=1, ge=0, alias="AUTOPACK_ORCHESTRATOR_REPLANS_PER_PHASE")
    # Run health budget (seed 004): infrastructure errors, patch failures, all failures per run.
    max_infra_errors_per_run: int = Field(
        default=10, ge=1, alias="AUTOPACK_ORCHESTRATOR_MAX_INFRA_ERRORS_PER_RUN"
    )
    max_patch_failures_per_run: int = Field(
        default=15, ge=1, alias="AUTOPACK_ORCHESTRATOR_MAX_PATCH_FAILURES_PER_RUN"
    )
    max_failures_per_run: int = Field(default=25, ge=1, alias="AUTOPACK_ORCHESTRATOR_MAX_FAILURES_PER_RUN")
