"""Estimator commands (estimate, calibrate, telemetry, estimator replay)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the estimator commands to the main app."""
