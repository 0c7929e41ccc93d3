"""Estimator persistence on SQLite and PostgreSQL: schema, model lifecycle, telemetry queries."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from autopack_common.database import create_db_engine, upgrade_schema
from autopack_estimator.store import (
    MODEL_CANDIDATE,
    MODEL_PROMOTED,
    MODEL_RETIRED,
    EstimateRecord,
    EventFilter,
    ModelVersionRecord,
    Store,
    TelemetryRecord,
    metadata,
    new_id,
    utcnow,
)
from sqlalchemy import Engine, inspect

MIGRATIONS = "autopack_estimator.migrations"
VERSION_TABLE = "alembic_version_estimator"


@pytest.fixture
def engine(database_url: str) -> Engine:
    engine = create_db_engine(database_url)
    upgrade_schema(engine, MIGRATIONS, VERSION_TABLE)
    yield engine  # type: ignore[misc]
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> Store:
    return Store(engine)


def _event(minute: int, **overrides: object) -> TelemetryRecord:
    values: dict[str, object] = {
        "run_id": "run-1",
        "phase_id": f"p{minute}",
        "category": "implementation",
        "complexity": "medium",
        "deliverable_count": 1,
        "deliverables": ["src/a.py"],
        "predicted_output_tokens": 1000,
        "actual_output_tokens": 1100,
        "selected_budget": 2048,
        "actual_max_tokens": None,
        "success": True,
        "truncated": False,
        "stop_reason": "end_turn",
        "model": "claude-sonnet-4-5",
        "smape": 9.5,
        "waste_ratio": 1.86,
        "timestamp": datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=minute),
    }
    values.update(overrides)
    return TelemetryRecord(**values)  # type: ignore[arg-type]


def _candidate(version: str, created_at: datetime | None = None) -> ModelVersionRecord:
    return ModelVersionRecord(
        version=version,
        params_json="{}",
        status=MODEL_CANDIDATE,
        created_at=created_at or utcnow(),
        parent_version="default-1",
    )


def test_migrations_create_exactly_the_mapped_schema_and_rerun_cleanly(engine: Engine) -> None:
    upgrade_schema(engine, MIGRATIONS, VERSION_TABLE)  # second start-up: nothing to do
    tables = set(inspect(engine).get_table_names())
    assert {
        "estimator_estimates",
        "estimator_telemetry_events",
        "estimator_escalation_events",
        "estimator_model_versions",
        VERSION_TABLE,
    } <= tables
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        assert compare_metadata(context, metadata) == []


def test_replicas_starting_together_upgrade_once_and_agree_on_the_default_model(database_url: str) -> None:
    served: list[str] = []
    errors: list[BaseException] = []
    engines = [create_db_engine(database_url) for _ in range(4)]
    barrier = threading.Barrier(len(engines))

    def start(engine: Engine) -> None:
        try:
            barrier.wait()
            upgrade_schema(engine, MIGRATIONS, VERSION_TABLE)
            served.append(Store(engine).ensure_default_model("default-1", "{}", "shipped"))
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=start, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for engine in engines:
        engine.dispose()
    assert errors == []
    assert served == ["default-1"] * 4
    check = create_db_engine(database_url)
    models = Store(check).list_models()
    check.dispose()
    assert [(m.version, m.status) for m in models] == [("default-1", MODEL_PROMOTED)]


def test_promotion_retires_the_previous_version_and_rollback_promotes_it_again(store: Store) -> None:
    assert store.ensure_default_model("default-1", "{}", "shipped") == "default-1"
    store.add_model_version(_candidate("cal-1"))
    assert store.promoted_version() == "default-1"
    assert store.newest_candidate() == "cal-1"

    result = store.promote("cal-1")
    assert result is not None
    record, previous = result
    assert (record.version, record.status, previous) == ("cal-1", MODEL_PROMOTED, "default-1")
    assert record.promoted_at is not None and record.promoted_at.tzinfo is not None
    statuses = {m.version: m.status for m in store.list_models()}
    assert statuses == {"default-1": MODEL_RETIRED, "cal-1": MODEL_PROMOTED}

    rollback = store.promote("default-1")
    assert rollback is not None and rollback[1] == "cal-1"
    assert store.promoted_version() == "default-1"
    assert store.promote("no-such-version") is None
    # Restarting replicas do not undo a rollback or a promotion.
    assert store.ensure_default_model("default-1", "{}", "shipped") == "default-1"


def test_concurrent_promotions_leave_exactly_one_promoted_version(store: Store) -> None:
    store.ensure_default_model("default-1", "{}", "shipped")
    versions = [f"cal-{i}" for i in range(6)]
    for version in versions:
        store.add_model_version(_candidate(version))
    barrier = threading.Barrier(len(versions))
    errors: list[BaseException] = []

    def promote(version: str) -> None:
        try:
            barrier.wait()
            assert store.promote(version) is not None
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=promote, args=(v,)) for v in versions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    promoted = [m.version for m in store.list_models() if m.status == MODEL_PROMOTED]
    assert len(promoted) == 1
    assert store.promoted_version() == promoted[0]


def test_list_models_is_newest_first(store: Store) -> None:
    store.ensure_default_model("default-1", "{}", "shipped")
    base = utcnow()
    store.add_model_version(_candidate("cal-old", base + timedelta(seconds=1)))
    store.add_model_version(_candidate("cal-new", base + timedelta(seconds=2)))
    assert [m.version for m in store.list_models()] == ["cal-new", "cal-old", "default-1"]
    assert store.newest_candidate() == "cal-new"


def test_events_page_in_time_order_across_batches_and_ties(store: Store) -> None:
    # Same timestamps across a page boundary must neither repeat nor skip events.
    records = [_event(minute // 3, phase_id=f"p{minute}") for minute in range(25)]
    store.add_events(list(reversed(records)))
    seen = [event.phase_id for event in store.iter_events(batch_size=4)]
    assert sorted(seen) == sorted(r.phase_id for r in records)
    assert len(seen) == len(set(seen)) == 25
    minutes = [int(event.timestamp.timestamp()) for event in store.iter_events(batch_size=4)]
    assert minutes == sorted(minutes)


def test_event_filters_and_utc_round_trip(store: Store) -> None:
    store.add_events(
        [
            _event(0, category="docs", complexity="low"),
            _event(10, model="gpt-5", run_id="run-2"),
            _event(20, actual_max_tokens=4096, truncated=True, description="goal"),
        ]
    )
    assert store.count_events() == 3
    assert [e.phase_id for e in store.iter_events(EventFilter(category="docs"))] == ["p0"]
    assert [e.phase_id for e in store.iter_events(EventFilter(model="gpt-5"))] == ["p10"]
    assert [e.phase_id for e in store.iter_events(EventFilter(run_id="run-2"))] == ["p10"]
    assert store.count_events(EventFilter(complexity="medium")) == 2
    since = datetime(2026, 1, 1, 0, 10, tzinfo=UTC)
    assert [e.phase_id for e in store.iter_events(EventFilter(since=since))] == ["p10", "p20"]
    # A zone other than UTC means the same instant.
    other_zone = since.astimezone(ZoneInfo("Europe/Berlin"))
    assert store.count_events(EventFilter(since=other_zone)) == 2
    last = store.list_events()[-1]
    assert last.timestamp == datetime(2026, 1, 1, 0, 20, tzinfo=UTC)
    assert (last.actual_max_tokens, last.truncated, last.description) == (4096, True, "goal")
    assert store.list_events()[0].actual_max_tokens is None


def test_a_batch_of_events_is_all_or_nothing(store: Store) -> None:
    duplicate = _event(1)
    with pytest.raises(Exception):  # noqa: B017 -- any integrity error of the driver
        store.add_events([_event(0), duplicate, duplicate])
    assert store.count_events() == 0


def _estimate(**overrides: object) -> EstimateRecord:
    values: dict[str, object] = {
        "estimate_id": new_id("est"),
        "run_id": "run-1",
        "phase_id": "p1",
        "description": 'Add the "caf\u00e9" module\\n',
        "category": "implementation",
        "complexity": "medium",
        "deliverables": ("src/caf\u00e9.py", "tests/test_a.py"),
        "scope_paths": ["src/"],
        "read_only_context": (),
        "model": "claude-sonnet-4-5",
        "deliverable_count": 2,
        "predicted_output_tokens": 4600,
        "selected_budget": 7424,
        "actual_max_tokens": 7424,
        "confidence": 0.8,
        "buffer_multiplier": 1.56,
        "breakdown": [{"name": "base", "tokens": 1200, "detail": 'x1.56 ("P7")'}],
        "model_version": "default-1",
        "created_at": datetime(2026, 1, 1, 13, 30, 0, 250, tzinfo=ZoneInfo("Europe/Berlin")),
    }
    values.update(overrides)
    return EstimateRecord(**values)  # type: ignore[arg-type]


def test_estimates_round_trip_json_columns_and_utc_time(store: Store) -> None:
    written = [_estimate(), _estimate(phase_id="p2", created_at=datetime(2026, 1, 1, tzinfo=UTC))]
    store.add_estimates(written)
    first = store.get_estimate(written[0].estimate_id)
    assert first is not None
    assert first == written[0]._replace(
        deliverables=["src/caf\u00e9.py", "tests/test_a.py"],
        read_only_context=[],
        created_at=datetime(2026, 1, 1, 12, 30, 0, 250, tzinfo=UTC),  # the same instant, in UTC
    )
    second = store.get_estimate(written[1].estimate_id)
    assert second is not None and second.created_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert store.get_estimate(new_id("est")) is None


def test_a_batch_of_estimates_is_all_or_nothing(store: Store) -> None:
    duplicate = _estimate()
    with pytest.raises(Exception):  # noqa: B017 -- any integrity error of the driver
        store.add_estimates([_estimate(), duplicate, duplicate])
    assert store.count_estimates() == 0


def test_new_ids_are_unique_and_sort_by_creation_time() -> None:
    earlier = [new_id("est") for _ in range(1000)]
    time.sleep(0.001)
    later = new_id("est")
    assert len(set(earlier)) == len(earlier)
    assert all(len(i) == len(later) and i.startswith("est_") for i in earlier)
    assert max(earlier) < later  # primary-key indexes grow at their right edge
