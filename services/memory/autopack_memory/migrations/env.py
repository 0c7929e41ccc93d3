"""Alembic environment: migrate on the connection that ``upgrade_schema`` hands in."""

from autopack_common.database import run_alembic_env

from autopack_memory.store import metadata

run_alembic_env(metadata)
