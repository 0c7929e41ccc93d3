"""Estimator settings: the chassis settings plus how often replicas re-read the promoted model."""

from __future__ import annotations

from autopack_common.settings import ServiceSettings
from pydantic import Field


class EstimatorSettings(ServiceSettings):
    """Environment of ``python -m autopack_estimator``."""

    model_refresh_seconds: float = Field(default=3.0, gt=0, alias="AUTOPACK_ESTIMATOR_MODEL_REFRESH_SECONDS")
    """How stale a replica's view of the promoted model may get before it re-reads the database."""

    estimate_flush_ms: float = Field(default=20.0, ge=0, alias="AUTOPACK_ESTIMATOR_ESTIMATE_FLUSH_MS")
    """Estimates are written in small batches this often (0 = one transaction per estimate)."""
