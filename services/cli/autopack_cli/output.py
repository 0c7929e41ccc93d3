"""The CLI's two consoles (reports on stdout, errors and progress notes on stderr) and how a
failed call is reported."""

from __future__ import annotations

import sys

import grpc
import typer
from autopack_common.settings import service_address
from rich.console import Console

# Reports are wide tables; when output is piped (make run, CI logs) do not squeeze them to 80 columns.
console = Console(width=None if sys.stdout.isatty() else 180)
errors = Console(stderr=True)

#: Status codes that mean the request itself was wrong (exit code 2, as for bad command-line input).
BAD_REQUEST_CODES = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND})


def rpc_failure(error: grpc.RpcError, service: str, address: str | None = None) -> typer.Exit:
    """Report a failed call on one line and choose the exit code for it.

    2 when the request was wrong (bad input, unknown id), 1 for everything else; an unreachable
    service is named with its address and how to start it.
    """
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    if code == grpc.StatusCode.UNAVAILABLE:
        errors.print(
            f"[red]UNAVAILABLE[/red]: the {service} at {address or service_address(service)} is not reachable "
            "(start the stack with `autopack up`)"
        )
        return typer.Exit(1)
    details = error.details() if hasattr(error, "details") else str(error)
    errors.print(f"[red]{code.name}[/red]: {details}")
    return typer.Exit(2 if code in BAD_REQUEST_CODES else 1)
