"""Fixtures shared by every test package: real databases and server helpers."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest

POSTGRES_ADMIN_DSN = os.environ.get(
    "AUTOPACK_TEST_POSTGRES_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)


@pytest.fixture(autouse=True, scope="session")
def _isolated_runtime_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep databases, traces, workspaces and the CLI's stack pointer out of the checkout and home."""
    root = tmp_path_factory.mktemp("autopack-runtime")
    keys = ("AUTOPACK_DATA_DIR", "AUTOPACK_TRACE_DIR", "XDG_STATE_HOME")
    previous = {key: os.environ.get(key) for key in keys}
    os.environ["AUTOPACK_DATA_DIR"] = str(root / "data")
    os.environ["AUTOPACK_TRACE_DIR"] = str(root / "traces")
    os.environ["XDG_STATE_HOME"] = str(root / "state")
    yield
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def sqlite_url(tmp_path) -> str:  # type: ignore[no-untyped-def]
    """A SQLite database file of its own for one test."""
    return f"sqlite:///{tmp_path / 'test.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    name = f"autopack_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Runs a test once on SQLite and once on PostgreSQL."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return request.getfixturevalue(fixture)
