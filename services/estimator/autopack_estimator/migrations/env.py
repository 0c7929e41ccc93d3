"""Alembic environment: migrate on the connection autopack_common.database hands in."""

from autopack_common.database import run_alembic_env

from autopack_estimator.store import metadata

run_alembic_env(metadata)
