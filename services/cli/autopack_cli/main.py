"""Entry point of the ``autopack`` command: each module registers its own commands."""

from __future__ import annotations

import typer

from autopack_cli import builder_commands, estimator_commands, run_commands, runs_commands, stack_commands

app = typer.Typer(
    name="autopack",
    help="Run software plans autonomously with budgeted LLM phases.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
stack_commands.register(app)
run_commands.register(app)
runs_commands.register(app)
estimator_commands.register(app)
builder_commands.register(app)
