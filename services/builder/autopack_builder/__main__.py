"""``python -m autopack_builder``: settings, schema upgrade, routing table, providers, serve until SIGTERM."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import timedelta

from autopack.builder.v1 import builder_pb2_grpc
from autopack_common.bootstrap import run_service
from autopack_common.database import create_db_engine, upgrade_schema
from autopack_common.server import ServiceBinding

from autopack_builder.builder import Builder
from autopack_builder.calls import CallRunner
from autopack_builder.escalation import EstimatorBudget
from autopack_builder.providers import create_providers
from autopack_builder.routing import DEFAULT_ROUTING_PATH, load_routing
from autopack_builder.service import SERVICE_FULL_NAME, BuilderServicer
from autopack_builder.settings import BuilderSettings
from autopack_builder.store import LlmCallStore

log = logging.getLogger("autopack_builder")


def main() -> None:
    settings = BuilderSettings()

    def build() -> tuple[Sequence[ServiceBinding], Sequence[Callable[[], None]]]:
        routing_path = settings.routing_path or DEFAULT_ROUTING_PATH
        routing = load_routing(routing_path)
        engine = create_db_engine(settings.resolved_database_url("builder"))
        upgrade_schema(engine, "autopack_builder.migrations", "alembic_version_builder")
        kinds = settings.resolved_providers()
        providers = create_providers(
            kinds,
            replay_dir=settings.replay_dir,
            timeout_seconds=settings.provider_timeout_seconds,
            stream=settings.stream,
        )
        if providers.replay:
            log.warning(
                "provider replay: answers come from recordings in %s, not a live LLM",
                settings.replay_dir.resolve(),
            )
        else:
            log.info("providers %s, routing table %s", ", ".join(kinds), routing_path)
        store = LlmCallStore(engine)
        retention = timedelta(days=settings.answer_retention_days) if settings.answer_retention_days else None
        runner = CallRunner(
            providers,
            routing,
            store,
            max_requests_per_model=settings.max_requests_per_model,
            backoff_seconds=settings.backoff_seconds,
            answer_retention=retention,
        )
        estimator_addr = settings.resolved_estimator_addr()
        budgets = EstimatorBudget(estimator_addr) if estimator_addr else None
        log.info(
            "continuation budgets from %s",
            f"the estimator at {estimator_addr}" if budgets else "the local rule (no estimator configured)",
        )
        builder = Builder(
            runner,
            default_model=settings.model,
            estimator=budgets,
            max_continuations=settings.max_continuations,
        )
        servicer = BuilderServicer(builder, routing_source=str(routing_path))
        binding = ServiceBinding(
            SERVICE_FULL_NAME, builder_pb2_grpc.add_BuilderServiceServicer_to_server, servicer
        )
        closers = [providers.close, engine.dispose] + ([budgets.close] if budgets else [])
        return [binding], closers

    run_service("builder", settings, build)


if __name__ == "__main__":
    main()
