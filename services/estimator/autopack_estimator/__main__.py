"""``python -m autopack_estimator``: serve the estimator on AUTOPACK_ESTIMATOR_ADDR until SIGTERM."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from autopack_common.bootstrap import run_service
from autopack_common.server import ServiceBinding

from autopack_estimator.settings import EstimatorSettings


def main() -> None:
    settings = EstimatorSettings()

    def build() -> tuple[Sequence[ServiceBinding], Sequence[Callable[[], None]]]:
        from autopack_estimator.service import open_servicer, service_binding

        servicer, engine = open_servicer(
            settings.resolved_database_url("estimator"),
            settings.model_refresh_seconds,
            settings.estimate_flush_ms / 1000,
        )
        return [service_binding(servicer)], [servicer.close, engine.dispose]

    run_service("estimator", settings, build)


if __name__ == "__main__":
    main()
