"""``autopack up`` and ``autopack down``: the local stack."""

from __future__ import annotations

import typer
from autopack_common.settings import service_address
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from autopack_cli.output import errors
from autopack_cli.stack import (
    STACK_ORDER,
    StackError,
    StackPaths,
    is_serving,
    read_pid,
    record_stack,
    start_service,
    stop_service,
    wait_until_serving,
)


def up(
    timeout: float = typer.Option(180.0, help="Seconds to wait for each service to become healthy."),
) -> None:
    """Start all five services locally and wait until each is SERVING."""
    paths = StackPaths.from_env()
    record_stack(paths)
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=errors
    ) as progress:
        for service in STACK_ORDER:
            task = progress.add_task(f"{service:<12} {service_address(service)}", total=1)
            if read_pid(paths, service) is not None and is_serving(service):
                progress.update(task, completed=1, description=f"{service:<12} already running")
                continue
            if is_serving(service):
                raise typer.BadParameter(
                    f"something else already serves {service} at {service_address(service)}; "
                    f"stop it or set AUTOPACK_{service.upper()}_ADDR"
                )
            start_service(service, paths)
            try:
                wait_until_serving(service, paths, timeout, on_wait=lambda: progress.refresh())
            except StackError as error:
                errors.print(f"[red]{error}[/red]")
                for started in STACK_ORDER:
                    stop_service(started, paths)
                raise typer.Exit(1) from error
            progress.update(
                task, completed=1, description=f"{service:<12} SERVING on {service_address(service)}"
            )
    errors.print(f"[green]stack up[/green] (state in {paths.root}, logs in {paths.root / 'logs'})")


def down() -> None:
    """Stop the local services gracefully."""
    paths = StackPaths.from_env()
    stopped = [service for service in reversed(STACK_ORDER) if stop_service(service, paths)]
    errors.print(f"stopped: {', '.join(stopped)}" if stopped else "no local services were running")


def register(app: typer.Typer) -> None:
    """Add ``up`` and ``down`` to the main app."""
    app.command()(up)
    app.command()(down)
