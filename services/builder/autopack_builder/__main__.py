"""``python -m autopack_builder``: settings, schema upgrade, provider, serve until SIGTERM."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from autopack.builder.v1 import builder_pb2_grpc
from autopack_common.bootstrap import run_service
from autopack_common.database import create_db_engine, upgrade_schema
from autopack_common.server import ServiceBinding

from autopack_builder.builder import Builder
from autopack_builder.providers import create_provider
from autopack_builder.service import SERVICE_FULL_NAME, BuilderServicer
from autopack_builder.settings import BuilderSettings
from autopack_builder.store import LlmCallStore

log = logging.getLogger("autopack_builder")


def main() -> None:
    settings = BuilderSettings()

    def build() -> tuple[Sequence[ServiceBinding], Sequence[Callable[[], None]]]:
        engine = create_db_engine(settings.resolved_database_url("builder"))
        upgrade_schema(engine, "autopack_builder.migrations", "alembic_version_builder")
        kind = settings.resolved_provider()
        provider = create_provider(
            kind,
            replay_dir=settings.replay_dir,
            max_retries=settings.provider_max_retries,
            timeout_seconds=settings.provider_timeout_seconds,
        )
        if kind == "replay":
            log.warning(
                "provider replay: answers come from recordings in %s, not a live LLM",
                settings.replay_dir.resolve(),
            )
        else:
            log.info("provider %s, default model %s", kind, settings.model)
        servicer = BuilderServicer(Builder(provider, LlmCallStore(engine), settings.model))
        binding = ServiceBinding(
            SERVICE_FULL_NAME, builder_pb2_grpc.add_BuilderServiceServicer_to_server, servicer
        )
        return [binding], [provider.close, engine.dispose]

    run_service("builder", settings, build)


if __name__ == "__main__":
    main()
