"""Builder settings from the environment (on top of the shared service settings)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from autopack_common.settings import ServiceSettings, service_address
from pydantic import Field

ProviderChoice = Literal["anthropic", "openai", "live", "replay", "auto"]
LiveProvider = Literal["anthropic", "openai", "replay"]


class BuilderSettings(ServiceSettings):
    """What the builder reads at start-up; API keys and base URLs stay with the SDKs' own variables."""

    provider: ProviderChoice = Field(default="auto", alias="AUTOPACK_BUILDER_PROVIDER")
    # Model for attempt 1 when the request leaves `model` empty; "" = the routing table's chain.
    model: str = Field(default="", alias="AUTOPACK_BUILDER_MODEL")
    replay_dir: Path = Field(default=Path("examples/recordings"), alias="AUTOPACK_REPLAY_DIR")
    # The routing table (YAML); None = the packaged config/routing.yaml.
    routing_path: Path | None = Field(default=None, alias="AUTOPACK_BUILDER_ROUTING")
    # Requests to one model on 429/529/5xx/connection errors before failing over (SDK retries are off).
    max_requests_per_model: int = Field(
        default=4, ge=1, le=10, alias="AUTOPACK_BUILDER_MAX_REQUESTS_PER_MODEL"
    )
    # First backoff between those requests (doubles, capped at 30 s) unless the provider sends retry-after.
    backoff_seconds: float = Field(default=1.0, ge=0, alias="AUTOPACK_BUILDER_BACKOFF_SECONDS")
    # Explicit per-request timeout; it also lets large max_tokens go out without streaming.
    provider_timeout_seconds: float = Field(default=600.0, gt=0, alias="AUTOPACK_BUILDER_TIMEOUT_SECONDS")
    # Read answers as server-sent events.
    stream: bool = Field(default=False, alias="AUTOPACK_BUILDER_STREAM")
    # Continuation calls after cut-off answers within one Build; 0 = return the cut-off answer at once.
    max_continuations: int = Field(default=3, ge=0, le=10, alias="AUTOPACK_BUILDER_MAX_CONTINUATIONS")
    # Days raw answers are kept in the builder database; 0 = keep them forever.
    answer_retention_days: float = Field(default=30.0, ge=0, alias="AUTOPACK_BUILDER_ANSWER_RETENTION_DAYS")
    # Estimator for continuation budgets (Escalate); "" = AUTOPACK_ESTIMATOR_ADDR or its default
    # port, as for every client; "none" = no estimator (the local rule).
    estimator_addr: str = Field(default="", alias="AUTOPACK_BUILDER_ESTIMATOR_ADDR")

    def resolved_providers(self) -> tuple[LiveProvider, ...]:
        """``auto``: every provider whose key is set, else the recorded responses; ``live``: both."""
        if self.provider == "auto":
            live = tuple(
                name  # type: ignore[misc]
                for name, variable in (("anthropic", "ANTHROPIC_API_KEY"), ("openai", "OPENAI_API_KEY"))
                if os.environ.get(variable)
            )
            return live or ("replay",)
        if self.provider == "live":
            return ("anthropic", "openai")
        return (self.provider,)

    def resolved_estimator_addr(self) -> str:
        """The estimator's address, or "" when switched off with ``none``."""
        if self.estimator_addr.strip().lower() == "none":
            return ""
        return self.estimator_addr or service_address("estimator")
