"""Builder settings from the environment (on top of the shared service settings)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from autopack_common.settings import ServiceSettings
from pydantic import Field

ProviderChoice = Literal["anthropic", "replay", "auto"]


class BuilderSettings(ServiceSettings):
    """What the builder reads at start-up; the Anthropic key and base URL stay with the SDK."""

    provider: ProviderChoice = Field(default="auto", alias="AUTOPACK_BUILDER_PROVIDER")
    model: str = Field(default="claude-sonnet-4-6", alias="AUTOPACK_BUILDER_MODEL")
    replay_dir: Path = Field(default=Path("examples/recordings"), alias="AUTOPACK_REPLAY_DIR")
    # Retries of one call inside the SDK (429, 5xx, 529, connection errors), with its backoff.
    provider_max_retries: int = Field(default=2, ge=0, alias="AUTOPACK_BUILDER_MAX_RETRIES")
    # Explicit per-request timeout; it also lets large max_tokens go out without streaming.
    provider_timeout_seconds: float = Field(default=600.0, gt=0, alias="AUTOPACK_BUILDER_TIMEOUT_SECONDS")

    def resolved_provider(self) -> Literal["anthropic", "replay"]:
        """``auto`` means live Anthropic when a key is configured, else the recorded responses."""
        if self.provider == "auto":
            return "anthropic" if os.environ.get("ANTHROPIC_API_KEY") else "replay"
        return self.provider
