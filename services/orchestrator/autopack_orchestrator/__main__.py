"""``python -m autopack_orchestrator``: serve on AUTOPACK_ORCHESTRATOR_ADDR until SIGTERM."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from autopack_common.bootstrap import run_service
from autopack_common.server import ServiceBinding

from autopack_orchestrator.service import create_orchestrator
from autopack_orchestrator.settings import OrchestratorSettings


def main() -> None:
    settings = OrchestratorSettings()

    def build() -> tuple[Sequence[ServiceBinding], Sequence[Callable[[], None]]]:
        orchestrator = create_orchestrator(settings)
        return [orchestrator.binding()], [orchestrator.close]

    run_service("orchestrator", settings, build)


if __name__ == "__main__":
    main()
