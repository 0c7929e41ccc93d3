"""Alembic migrations of the estimator's tables (version table ``alembic_version_estimator``)."""
