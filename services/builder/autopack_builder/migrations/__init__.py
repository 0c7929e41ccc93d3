"""Alembic migrations of the builder's tables (version table ``alembic_version_builder``)."""
