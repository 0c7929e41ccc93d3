"""The CLI's two consoles: reports on stdout, errors and progress notes on stderr."""

from __future__ import annotations

import sys

from rich.console import Console

# Reports are wide tables; when output is piped (make run, CI logs) do not squeeze them to 80 columns.
console = Console(width=None if sys.stdout.isatty() else 180)
errors = Console(stderr=True)
