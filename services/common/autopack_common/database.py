"""Database engines from DATABASE_URL and schema upgrades at start-up.

Each service owns its tables and its own Alembic history (a version table per
service), so services may share one PostgreSQL database without touching each
other's data. Upgrades run under a lock (a PostgreSQL advisory lock, or a file
lock beside a SQLite database) so replicas starting together are safe.
"""

from __future__ import annotations

import fcntl
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Connection,
    DateTime,
    Dialect,
    Engine,
    MetaData,
    TypeDecorator,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool


def normalize_url(url: str) -> str:
    """Use psycopg 3 for plain ``postgresql://`` URLs."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def create_db_engine(url: str) -> Engine:
    """An engine tuned for concurrent service use on SQLite or PostgreSQL."""
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    in_memory = parsed.database in (None, "", ":memory:")
    if not in_memory:
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 30},
        poolclass=StaticPool if in_memory else None,
    )

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        # Switching to WAL takes an exclusive lock; only the first connection needs to.
        if not in_memory and cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            cursor.execute("PRAGMA journal_mode=WAL")
        # In WAL mode NORMAL is crash-safe for the application; only an OS crash may lose the
        # last commits. It avoids an fsync per commit.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine


@contextmanager
def _file_lock(engine: Engine) -> Iterator[None]:
    """Serialise SQLite upgrades across processes, before any connection is opened."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


@contextmanager
def _advisory_lock(connection: Connection, key: str) -> Iterator[None]:
    """Serialise PostgreSQL upgrades across replicas sharing the database."""
    if connection.dialect.name != "postgresql":
        yield
        return
    lock_id = zlib.crc32(key.encode())
    connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": lock_id})
    connection.commit()
    try:
        yield
    finally:
        connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": lock_id})
        connection.commit()


def upgrade_schema(engine: Engine, migrations_package: str, version_table: str) -> None:
    """Bring a service's schema to head; ``migrations_package`` holds env.py and versions/."""
    config = Config()
    config.set_main_option("script_location", _package_path(migrations_package))
    config.attributes["version_table"] = version_table
    with _file_lock(engine), engine.connect() as connection, _advisory_lock(connection, version_table):
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        connection.commit()


def _package_path(package: str) -> str:
    import importlib

    module = importlib.import_module(package)
    return str(Path(module.__file__).parent)  # type: ignore[arg-type]


def run_alembic_env(target_metadata: MetaData) -> None:
    """Body of every service's migrations/env.py: migrate on the connection handed in."""
    from alembic import context

    connection: Connection = context.config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=context.config.attributes["version_table"],
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (what every table stores)."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """Aware UTC datetime; naive values are taken to be UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Timestamps stored as UTC and read back timezone-aware on both backends.

    SQLite has no time zones, so values are stored there as naive UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)
