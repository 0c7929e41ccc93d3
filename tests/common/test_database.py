"""Schema upgrades at start-up are safe when several replicas start at once."""

from __future__ import annotations

import sys
import textwrap
import threading
import uuid
from pathlib import Path

import pytest
from autopack_common.database import create_db_engine, normalize_url, upgrade_schema
from sqlalchemy import inspect, text


@pytest.fixture
def migrations_package(tmp_path: Path) -> str:
    """A tiny real Alembic migrations package with one revision."""
    name = f"migrations_{uuid.uuid4().hex[:8]}"
    package = tmp_path / name
    (package / "versions").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "env.py").write_text(
        "from autopack_common.database import run_alembic_env\nrun_alembic_env(None)\n"
    )
    (package / "script.py.mako").write_text("")
    (package / "versions" / "0001_widgets.py").write_text(
        textwrap.dedent(
            """
            import sqlalchemy as sa
            from alembic import op

            revision = "0001"
            down_revision = None

            def upgrade():
                op.create_table("widgets", sa.Column("id", sa.Integer, primary_key=True))

            def downgrade():
                op.drop_table("widgets")
            """
        )
    )
    sys.path.insert(0, str(tmp_path))
    yield name
    sys.path.remove(str(tmp_path))


def test_concurrent_upgrades_apply_the_schema_once(database_url: str, migrations_package: str) -> None:
    engine = create_db_engine(database_url)
    failures: list[BaseException] = []

    def replica() -> None:
        try:
            upgrade_schema(create_db_engine(database_url), migrations_package, "alembic_version_test")
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=replica) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    assert "widgets" in inspect(engine).get_table_names()
    with engine.connect() as connection:
        versions = connection.execute(text("SELECT version_num FROM alembic_version_test")).scalars().all()
    assert versions == ["0001"]


def test_plain_postgresql_urls_use_psycopg3() -> None:
    assert normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"
