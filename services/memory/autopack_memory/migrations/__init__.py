"""Alembic migrations of the memory service (version table ``alembic_version_memory``)."""
