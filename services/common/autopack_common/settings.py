"""Settings read from the environment, shared by every service.

Each service listens on ``AUTOPACK_<SVC>_ADDR`` and its clients find it through
the same variable, so one registry of names and defaults lives here.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

SERVICE_NAMES = ("orchestrator", "estimator", "builder", "applier", "memory")

DEFAULT_ADDRESSES = {
    "orchestrator": "127.0.0.1:50051",
    "estimator": "127.0.0.1:50052",
    "builder": "127.0.0.1:50053",
    "applier": "127.0.0.1:50054",
    "memory": "127.0.0.1:50055",
}


def address_env_var(service: str) -> str:
    """Name of the variable holding a service's address, e.g. AUTOPACK_ESTIMATOR_ADDR."""
    if service not in DEFAULT_ADDRESSES:
        raise ValueError(f"unknown service {service!r}; expected one of {', '.join(SERVICE_NAMES)}")
    return f"AUTOPACK_{service.upper()}_ADDR"


def service_address(service: str) -> str:
    """Where a service listens (servers) or is reached (clients)."""
    return os.environ.get(address_env_var(service)) or DEFAULT_ADDRESSES[service]


class ServiceSettings(BaseSettings):
    """Settings every service process reads; services subclass it for their own."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    data_dir: Path = Field(default=Path(".autopack/data"), alias="AUTOPACK_DATA_DIR")
    trace_dir: Path = Field(default=Path(".autopack/traces"), alias="AUTOPACK_TRACE_DIR")
    shutdown_grace_seconds: float = Field(default=5.0, alias="AUTOPACK_SHUTDOWN_GRACE_SECONDS")
    max_workers: int = Field(default=16, alias="AUTOPACK_MAX_WORKERS")
    rpc_timeout_seconds: float = Field(default=30.0, alias="AUTOPACK_RPC_TIMEOUT_SECONDS")
    log_level: str = Field(default="INFO", alias="AUTOPACK_LOG_LEVEL")

    def resolved_database_url(self, service: str) -> str:
        """DATABASE_URL if set, else an embedded SQLite file of this service in the data dir."""
        if self.database_url:
            return self.database_url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(self.data_dir / f'{service}.db').resolve()}"
