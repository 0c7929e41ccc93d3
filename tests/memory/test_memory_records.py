"""Project records across runs: content-derived ids, project key, TTL pruning, Qdrant down."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from autopack_common.database import create_db_engine, upgrade_schema
from autopack_common.errors import InvalidArgument
from autopack_memory.embedding import CachingEmbedder
from autopack_memory.records import (
    DEFAULT_TTL_SECONDS,
    PeriodicPruner,
    ProjectMemory,
    RecordKind,
    collection_of,
    record_id,
)
from autopack_memory.store import RecordStore
from autopack_memory.vectors import VectorStore
from sqlalchemy import Engine


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_db_engine(database_url)
    upgrade_schema(engine, "autopack_memory.migrations", "alembic_version_memory")
    yield engine
    engine.dispose()


@pytest.fixture
def vectors(qdrant_path) -> Iterator[VectorStore]:  # type: ignore[no-untyped-def]
    store = VectorStore.open(path=qdrant_path)
    yield store
    store.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def memory(engine: Engine, vectors: VectorStore, hashing_embedder, clock: Clock) -> ProjectMemory:  # type: ignore[no-untyped-def]
    return ProjectMemory(RecordStore(engine), vectors, CachingEmbedder(hashing_embedder, None), clock)


FIX = "pytest failed: ImportError in tests/test_api.py; fixed by adding the missing package __init__.py"


def test_a_later_run_of_the_same_project_recalls_an_earlier_runs_fix(memory: ProjectMemory) -> None:
    memory.remember("github.com/acme/shop", RecordKind.ERROR_PATTERN, FIX, run_id="run-1")
    memory.remember(
        "github.com/acme/shop", RecordKind.RUN_SUMMARY, "run 1 added the checkout page", run_id="run-1"
    )
    memory.remember("github.com/acme/other", RecordKind.ERROR_PATTERN, FIX + " (other repo)", run_id="run-9")

    result = memory.recall("github.com/acme/shop", "ImportError in tests: missing package", limit=5)

    assert not result.lexical
    assert result.hits[0].record.text == FIX
    assert {hit.record.project for hit in result.hits} == {"github.com/acme/shop"}
    assert result.hits[0].record.run_id == "run-1"
    only_summaries = memory.recall("github.com/acme/shop", "checkout", [RecordKind.RUN_SUMMARY])
    assert [hit.record.kind for hit in only_summaries.hits] == ["run_summary"]
    assert memory.recall("github.com/acme/shop", "ImportError", exclude_run_id="run-1").hits == []


def test_the_periodic_pruner_deletes_records_as_they_expire_and_stops_promptly(
    memory: ProjectMemory, vectors: VectorStore, clock: Clock
) -> None:
    memory.remember("p", RecordKind.TASK_OUTCOME, "short lived outcome", ttl_seconds=60)
    kept = memory.remember("p", RecordKind.TASK_OUTCOME, "long lived outcome")
    pruner = PeriodicPruner(memory, interval_seconds=0.05)
    pruner.start()
    try:
        clock.now += 61
        deadline = time.monotonic() + 10
        while vectors.count(collection_of(RecordKind.TASK_OUTCOME)) > 1 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        started = time.monotonic()
        pruner.stop()
    assert time.monotonic() - started < 2
    assert pruner.runs >= 1
    assert vectors.count(collection_of(RecordKind.TASK_OUTCOME)) == 1
    assert [hit.record.id for hit in memory.recall("p", "outcome", limit=10).hits] == [kept.id]
    with pytest.raises(ValueError):
        PeriodicPruner(memory, interval_seconds=0)


def test_ids_derive_from_content_so_the_same_lesson_is_one_record(
    memory: ProjectMemory, clock: Clock
) -> None:
    first = memory.remember("p", RecordKind.DECISION_LOG, "use PostgreSQL for runs", run_id="run-1")
    clock.now += 100
    again = memory.remember("p", RecordKind.DECISION_LOG, "use PostgreSQL for runs", run_id="run-2")

    assert first.id == again.id == record_id("p", RecordKind.DECISION_LOG, "use PostgreSQL for runs")
    assert record_id("q", RecordKind.DECISION_LOG, "use PostgreSQL for runs") != first.id
    (hit,) = memory.recall("p", "PostgreSQL", limit=10).hits
    assert (hit.record.run_id, hit.record.created_at) == ("run-2", int(clock.now))


def test_expired_records_are_not_recalled_and_pruning_deletes_them(
    memory: ProjectMemory, vectors: VectorStore, clock: Clock
) -> None:
    memory.remember("p", RecordKind.TASK_OUTCOME, "short lived outcome", ttl_seconds=60)
    kept = memory.remember("p", RecordKind.TASK_OUTCOME, "long lived outcome")
    assert len(memory.recall("p", "outcome", limit=10).hits) == 2

    clock.now += 61
    assert [hit.record.id for hit in memory.recall("p", "outcome", limit=10).hits] == [kept.id]
    assert memory.prune() == 1
    assert vectors.count(collection_of(RecordKind.TASK_OUTCOME)) == 1
    assert memory.prune() == 0
    clock.now += DEFAULT_TTL_SECONDS
    assert memory.prune("another project") == 0
    assert memory.prune("p") == 1


def test_qdrant_down_keeps_the_record_and_recalls_lexically(
    engine: Engine, hashing_embedder, clock: Clock
) -> None:  # type: ignore[no-untyped-def]
    down = VectorStore.open(url="http://127.0.0.1:9")  # nothing listens on the discard port
    memory = ProjectMemory(RecordStore(engine), down, CachingEmbedder(hashing_embedder, None), clock)

    result = memory.remember("p", RecordKind.ERROR_PATTERN, FIX)
    assert result.indexed is False
    recalled = memory.recall("p", "missing package ImportError")
    assert recalled.lexical is True
    assert [hit.record.text for hit in recalled.hits] == [FIX]
    assert memory.prune() == 0


def test_without_embeddings_recall_is_lexical(engine: Engine, vectors: VectorStore, clock: Clock) -> None:
    memory = ProjectMemory(RecordStore(engine), vectors, None, clock)
    assert memory.remember("p", RecordKind.CODE_DOC, "the parser module reads CSV rows").indexed is False
    result = memory.recall("p", "CSV parser")
    assert result.lexical and len(result.hits) == 1


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda m: m.remember("", RecordKind.CODE_DOC, "text"), "project"),
        (lambda m: m.remember("p", None, "text"), "record.kind"),
        (lambda m: m.remember("p", RecordKind.CODE_DOC, "  "), "record.text"),
        (lambda m: m.remember("p", RecordKind.CODE_DOC, "t", ttl_seconds=-1), "ttl_seconds"),
        (lambda m: m.remember("p", RecordKind.CODE_DOC, "t", metadata={"bad key": "v"}), "record.metadata"),
        (lambda m: m.recall("p", ""), "query"),
        (lambda m: m.recall("", "q"), "project"),
        (lambda m: m.recall("p", "q", limit=-1), "limit"),
    ],
)
def test_bad_requests_name_the_field_and_store_nothing(memory: ProjectMemory, call, field: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument) as raised:
        call(memory)
    assert raised.value.field == field
    assert memory.prune() == 0
    assert memory.recall("p", "text t", limit=100).hits == []
