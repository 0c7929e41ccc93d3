"""What ``python -m autopack_<svc>`` does: logging, tracing, server, wait for SIGTERM."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib import metadata

from autopack_common.logs import setup_logging
from autopack_common.server import ServiceBinding, create_server, serve_forever
from autopack_common.settings import ServiceSettings, service_address
from autopack_common.telemetry import setup_telemetry, shutdown_telemetry


def package_version(distribution: str) -> str:
    """Installed version of a distribution, e.g. ``autopack-estimator``."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


def run_service(
    service: str,
    settings: ServiceSettings,
    build: Callable[[], tuple[Sequence[ServiceBinding], Sequence[Callable[[], None]]]],
) -> None:
    """Start ``service`` on ``AUTOPACK_<SVC>_ADDR`` and serve until SIGTERM.

    ``build`` creates the servicers (after tracing is set up, so their clients are
    traced) and returns them with the callbacks that release their resources.
    """
    setup_logging(service, settings.log_level)
    setup_telemetry(service, package_version(f"autopack-{service}"), settings.trace_dir)
    bindings, closers = build()
    running = create_server(bindings, service_address(service), settings.max_workers)
    running.on_stop.extend(closers)
    running.on_stop.append(shutdown_telemetry)
    serve_forever(running, settings.shutdown_grace_seconds)
