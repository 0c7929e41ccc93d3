"""Alembic migrations of the orchestrator's tables (version table alembic_version_orchestrator)."""
