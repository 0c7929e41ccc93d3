"""Memory service settings, read from the environment on top of the shared ones."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from autopack_common.settings import ServiceSettings
from pydantic import Field, SecretStr, field_validator

from autopack_memory.drift import DriftMode

EmbeddingsKind = Literal["local", "none", "openai"]


class MemorySettings(ServiceSettings):
    """What the memory service reads besides the chassis settings.

    ``AUTOPACK_MEMORY_MAX_EMBEDDINGS_PER_CALL`` bounds the *new* embeddings (cache misses) one
    SelectContext call may compute before it ranks lexically instead: ``-1`` = unlimited,
    ``0`` = never embed (always lexical), ``N > 0`` = at most N. Cached vectors are free. The
    default 64 covers the query and the 8 file cards one selection embeds. ``QDRANT_URL`` wins
    over the local path when both are set. ``AUTOPACK_MEMORY_CHUNK_CHARS`` bounds a structural
    piece (function, section) used for ranking. Drift: a change summary whose cosine with the
    run's intention is below ``AUTOPACK_MEMORY_DRIFT_THRESHOLD`` (0.5) has drifted, or, measured
    on words without embeddings, below ``AUTOPACK_MEMORY_DRIFT_LEXICAL_THRESHOLD`` (0.2);
    ``AUTOPACK_MEMORY_DRIFT_MODE`` ``advisory`` (default) reports it, ``blocking`` asks the
    caller to stop. Expired project records are pruned at start-up and then every
    ``AUTOPACK_MEMORY_PRUNE_INTERVAL_SECONDS`` (3600; ``0`` = only at start-up).
    """

    embeddings: EmbeddingsKind = Field(default="local", alias="AUTOPACK_MEMORY_EMBEDDINGS")
    model_path: Path | None = Field(default=None, alias="AUTOPACK_MEMORY_MODEL_PATH")
    openai_model: str = Field(default="text-embedding-3-small", alias="AUTOPACK_MEMORY_OPENAI_MODEL")
    qdrant_path: Path | None = Field(default=None, alias="AUTOPACK_MEMORY_QDRANT_PATH")
    qdrant_url: str | None = Field(default=None, alias="QDRANT_URL")
    qdrant_api_key: SecretStr | None = Field(default=None, alias="QDRANT_API_KEY")
    max_embeddings_per_call: int = Field(default=64, ge=-1, alias="AUTOPACK_MEMORY_MAX_EMBEDDINGS_PER_CALL")
    chunk_chars: int = Field(default=1200, ge=100, alias="AUTOPACK_MEMORY_CHUNK_CHARS")
    drift_threshold: float = Field(default=0.5, ge=-1.0, le=1.0, alias="AUTOPACK_MEMORY_DRIFT_THRESHOLD")
    drift_lexical_threshold: float = Field(
        default=0.2, ge=0.0, le=1.0, alias="AUTOPACK_MEMORY_DRIFT_LEXICAL_THRESHOLD"
    )
    drift_mode: DriftMode = Field(default=DriftMode.ADVISORY, alias="AUTOPACK_MEMORY_DRIFT_MODE")
    prune_interval_seconds: float = Field(
        default=3600.0, ge=0.0, alias="AUTOPACK_MEMORY_PRUNE_INTERVAL_SECONDS"
    )

    @field_validator("embeddings", "drift_mode", mode="before")
    @classmethod
    def _lowercase(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    def resolved_qdrant_path(self) -> Path:
        """Where local-mode Qdrant keeps its files: the override or ``<data_dir>/qdrant``."""
        return self.qdrant_path or self.data_dir / "qdrant"
