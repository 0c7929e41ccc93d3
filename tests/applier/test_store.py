"""Store: migrations and repository functions on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from autopack_applier.store import ApplierStore, ApplyLogEntry, CheckBaseline, WorkspaceRecord
from autopack_common.database import create_db_engine, upgrade_schema
from autopack_common.errors import AlreadyExists


@pytest.fixture
def db_store(database_url: str) -> Iterator[ApplierStore]:
    engine = create_db_engine(database_url)
    upgrade_schema(engine, "autopack_applier.migrations", "alembic_version_applier")
    upgrade_schema(engine, "autopack_applier.migrations", "alembic_version_applier")  # idempotent
    yield ApplierStore(engine)
    engine.dispose()


def _workspace(run_id: str = "run-1") -> WorkspaceRecord:
    return WorkspaceRecord(
        run_id, f"/data/workspaces/{run_id}", "/src/repo", "a" * 40, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    )


def test_schema_has_own_tables_and_version_table(db_store: ApplierStore) -> None:
    tables = set(sa.inspect(db_store.engine).get_table_names())
    assert {
        "applier_workspaces",
        "applier_apply_log",
        "applier_check_baselines",
        "alembic_version_applier",
    } <= tables


def test_workspaces_round_trip_and_are_unique(db_store: ApplierStore) -> None:
    assert db_store.get_workspace("run-1") is None
    db_store.add_workspace(_workspace())
    assert db_store.get_workspace("run-1") == _workspace()
    with pytest.raises(AlreadyExists, match=r"^run_id:"):
        db_store.add_workspace(_workspace())


def test_apply_log_keeps_accepted_and_rejected_applies_in_order(db_store: ApplierStore) -> None:
    db_store.add_workspace(_workspace())
    db_store.add_workspace(_workspace("run-2"))
    base = "a" * 40
    first, second = "b" * 40, "c" * 40
    db_store.log_apply(
        ApplyLogEntry("run-1", "p1", 1, first, base, ("src/a.py", "src/é.py"), "accepted", None)
    )
    db_store.log_apply(
        ApplyLogEntry(
            "run-1", "p2", 1, None, first, (), "rejected", "operations[0].path: 'x' is outside the scope"
        )
    )
    db_store.log_apply(ApplyLogEntry("run-1", "p2", 2, second, first, ("src/b.py",), "accepted", None))
    db_store.log_apply(ApplyLogEntry("run-2", "p1", 1, "d" * 40, base, (), "accepted", None))
    log = db_store.apply_log("run-1")
    assert [(entry.phase_id, entry.attempt, entry.result) for entry in log] == [
        ("p1", 1, "accepted"),
        ("p2", 1, "rejected"),
        ("p2", 2, "accepted"),
    ]
    assert log[0].changed_paths == ("src/a.py", "src/é.py")
    assert log[1].savepoint is None and log[1].reason is not None and "outside the scope" in log[1].reason
    assert all(entry.created_at is not None and entry.created_at.tzinfo is not None for entry in log)
    assert db_store.savepoints("run-1") == {base, first, second}
    assert db_store.savepoints("run-unknown") == set()


def test_apply_log_rejects_unknown_results_and_runs(db_store: ApplierStore) -> None:
    db_store.add_workspace(_workspace())
    with pytest.raises(sa.exc.IntegrityError):
        db_store.log_apply(ApplyLogEntry("run-1", "p1", 1, None, None, (), "maybe", None))  # type: ignore[arg-type]
    with pytest.raises(sa.exc.IntegrityError):
        db_store.log_apply(ApplyLogEntry("run-missing", "p1", 1, None, None, (), "rejected", "x"))


def test_a_commands_first_baseline_wins(db_store: ApplierStore) -> None:
    db_store.add_workspace(_workspace())
    command = ("python", "-m", "pytest", "-q")
    assert db_store.get_baseline("run-1", command) is None
    first = CheckBaseline(
        "run-1",
        command,
        "a" * 40,
        {"passed": 1, "failed": 1, "errors": 0, "skipped": 0, "collection_errors": 0},
        {"t.py::a": "passed", "t.py::b": "failed"},
        (),
        datetime(2026, 1, 2, tzinfo=UTC),
    )
    assert db_store.add_baseline(first) == first
    assert db_store.get_baseline("run-1", list(command)) == first
    later = CheckBaseline("run-1", command, "b" * 40, {}, {}, ("t.py",), datetime(2026, 1, 3, tzinfo=UTC))
    assert db_store.add_baseline(later) == first  # a concurrent second recording returns the first
    assert db_store.get_baseline("run-1", ("python", "-m", "pytest")) is None  # another argv, another key
