"""Alembic migrations of the applier's tables (version table ``alembic_version_applier``)."""
