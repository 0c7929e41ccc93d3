"""llm_calls on SQLite and PostgreSQL: exact usage, NULL when unknown, total always set."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from autopack_builder.models import LlmCallRecord
from autopack_builder.store import LlmCallStore
from autopack_common.database import create_db_engine, upgrade_schema
from sqlalchemy import inspect, text


def _call(
    input_tokens: int | None, output_tokens: int | None, total: int, stop: str = "end_turn"
) -> LlmCallRecord:
    return LlmCallRecord(
        provider="anthropic",
        model="claude-sonnet-4-5-20250929",
        max_tokens=8192,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=total,
        stop_reason=stop,
        duration_ms=1234,
    )


def test_schema_upgrade_is_idempotent_and_uses_its_own_version_table(database_url: str) -> None:
    engine = create_db_engine(database_url)
    try:
        upgrade_schema(engine, "autopack_builder.migrations", "alembic_version_builder")
        upgrade_schema(engine, "autopack_builder.migrations", "alembic_version_builder")

        inspector = inspect(engine)
        assert {"llm_calls", "alembic_version_builder"} <= set(inspector.get_table_names())
        columns = {c["name"]: c for c in inspector.get_columns("llm_calls")}
        assert columns["input_tokens"]["nullable"] and columns["output_tokens"]["nullable"]
        assert not columns["total_tokens"]["nullable"]
        with engine.connect() as connection:
            assert (
                connection.execute(text("SELECT version_num FROM alembic_version_builder")).scalar()
                == "builder_0002"
            )
    finally:
        engine.dispose()


def test_calls_are_recorded_exactly_and_listed_by_run_and_phase(database_url: str) -> None:
    engine = create_db_engine(database_url)
    try:
        upgrade_schema(engine, "autopack_builder.migrations", "alembic_version_builder")
        store = LlmCallStore(engine)
        before = datetime.now(UTC) - timedelta(seconds=5)
        store.record(
            run_id="r1", phase_id="p1", attempt=1, call_index=1, estimate_id="e1", call=_call(1500, 41, 1541)
        )
        store.record(
            run_id="r1",
            phase_id="p1",
            attempt=1,
            call_index=2,
            estimate_id="e1",
            call=_call(None, None, 5200, "max_tokens"),
        )
        store.record(
            run_id="r2", phase_id="p1", attempt=1, call_index=1, estimate_id="", call=_call(10, 20, 30)
        )

        calls = store.list_calls(run_id="r1", phase_id="p1")

        assert [
            (c.call_index, c.input_tokens, c.output_tokens, c.total_tokens, c.stop_reason) for c in calls
        ] == [
            (1, 1500, 41, 1541, "end_turn"),
            (2, None, None, 5200, "max_tokens"),
        ]
        first = calls[0]
        assert (first.run_id, first.phase_id, first.attempt, first.estimate_id) == ("r1", "p1", 1, "e1")
        assert (first.provider, first.model, first.max_tokens, first.duration_ms) == (
            "anthropic",
            "claude-sonnet-4-5-20250929",
            8192,
            1234,
        )
        assert first.created_at.tzinfo is not None and first.created_at >= before
        assert len(store.list_calls()) == 3
        assert [c.run_id for c in store.list_calls(phase_id="p1")] == ["r1", "r1", "r2"]
        assert store.list_calls(run_id="nope") == []
    finally:
        engine.dispose()
