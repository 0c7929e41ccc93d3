"""Qdrant local mode on disk: upsert, search, filters, ids, persistence and model guards."""

from __future__ import annotations

import uuid

import pytest
from autopack_common.errors import FailedPrecondition, InvalidArgument, Unavailable
from autopack_memory.embedding import CachingEmbedder
from autopack_memory.memory import Memory
from autopack_memory.selection import ContextSelector
from autopack_memory.vectors import StoredItem, VectorStore, point_id
from qdrant_client import QdrantClient

ITEMS = [
    StoredItem(
        "summary-1", "phase one added the CSV import of customer rows", {"run_id": "r1", "kind": "summary"}
    ),
    StoredItem(
        "summary-2",
        "phase two drew the company logo on the landing page",
        {"run_id": "r1", "kind": "summary"},
    ),
    StoredItem(
        "error-1", "CSV import failed: unexpected delimiter in row 3", {"run_id": "r2", "kind": "error"}
    ),
]


@pytest.fixture
def memory(qdrant_path, hashing_embedder):  # type: ignore[no-untyped-def]
    vectors = VectorStore.open(path=qdrant_path)
    caching = CachingEmbedder(hashing_embedder, cache=None)
    yield Memory(caching, vectors, ContextSelector(caching))
    vectors.close()


def test_point_ids_are_stable_uuid5_and_the_callers_id_comes_back(memory, qdrant_path) -> None:  # type: ignore[no-untyped-def]
    assert point_id("summary-1") == point_id("summary-1") != point_id("summary-2")
    assert uuid.UUID(point_id("summary-1")).version == 5

    result = memory.upsert("run-memory", ITEMS)
    assert (result.upserted, result.embedding_model) == (3, "test:hashing-64")

    hits = memory.search("run-memory", "phase one added the CSV import of customer rows", limit=1).hits
    assert hits[0].item == ITEMS[0]
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_upsert_replaces_by_id(memory) -> None:  # type: ignore[no-untyped-def]
    memory.upsert("notes", ITEMS)
    memory.upsert("notes", [StoredItem("summary-1", "rewritten summary text", {"kind": "summary"})])

    assert memory._vectors.count("notes") == 3
    hits = memory.search("notes", "rewritten summary text", limit=10).hits
    assert hits[0].item == StoredItem("summary-1", "rewritten summary text", {"kind": "summary"})


def test_filters_are_exact_metadata_matches(memory) -> None:  # type: ignore[no-untyped-def]
    memory.upsert("notes", ITEMS)

    errors = memory.search("notes", "CSV import", limit=10, conditions={"kind": "error"}).hits
    assert [hit.item.id for hit in errors] == ["error-1"]
    run1 = memory.search("notes", "CSV import", limit=10, conditions={"run_id": "r1", "kind": "summary"}).hits
    assert {hit.item.id for hit in run1} == {"summary-1", "summary-2"}
    assert memory.search("notes", "CSV import", limit=10, conditions={"run_id": "r3"}).hits == []


def test_limit_defaults_to_five_and_hits_are_most_similar_first(memory) -> None:  # type: ignore[no-untyped-def]
    memory.upsert("many", [StoredItem(f"i{n}", f"item number {n}") for n in range(8)])
    hits = memory.search("many", "item number 3").hits
    assert len(hits) == 5
    assert hits[0].item.id == "i3"
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)


def test_missing_collection_has_no_hits_and_is_not_created(memory, qdrant_path) -> None:  # type: ignore[no-untyped-def]
    assert memory.search("never-written", "anything").hits == []
    assert memory._vectors.info("never-written") is None


def test_collections_persist_on_disk(qdrant_path, hashing_embedder) -> None:  # type: ignore[no-untyped-def]
    caching = CachingEmbedder(hashing_embedder, cache=None)
    first = VectorStore.open(path=qdrant_path)
    Memory(caching, first, ContextSelector(caching)).upsert("durable", ITEMS)
    first.close()

    client = QdrantClient(path=str(qdrant_path))
    try:
        assert client.count("durable").count == 3
        assert client.get_collection("durable").config.params.vectors.size == 64
    finally:
        client.close()


def test_a_collection_of_another_model_is_refused_and_left_alone(memory, qdrant_path) -> None:  # type: ignore[no-untyped-def]
    memory.upsert("notes", ITEMS)

    class OtherModel:
        model_name = "test:other-32"
        dimension = 32

        def embed(self, texts):  # type: ignore[no-untyped-def]
            raise AssertionError("must not embed for an incompatible collection")

    other = CachingEmbedder(OtherModel(), cache=None)
    foreign = Memory(other, memory._vectors, ContextSelector(other))
    with pytest.raises(FailedPrecondition, match="64-dimensional vectors from model test:hashing-64"):
        foreign.upsert("notes", [StoredItem("x", "y")])
    with pytest.raises(FailedPrecondition):
        foreign.search("notes", "CSV")
    assert memory._vectors.count("notes") == 3


def test_without_embeddings_collections_hold_no_vectors_and_search_is_lexical(qdrant_path) -> None:
    vectors = VectorStore.open(path=qdrant_path)
    lexical = Memory(None, vectors, ContextSelector(None))
    try:
        assert lexical.upsert("plain", ITEMS).embedding_model == "none"
        result = lexical.search("plain", "CSV import rows", limit=5, conditions={"kind": "summary"})
        assert result.lexical
        assert [hit.item.id for hit in result.hits] == ["summary-1"]  # summary-2 shares no words
        assert 0.0 < result.hits[0].score <= 1.0
    finally:
        vectors.close()


@pytest.mark.parametrize(
    ("collection", "items", "field"),
    [
        ("", ITEMS, "collection"),
        ("bad/name", ITEMS, "collection"),
        ("..", ITEMS, "collection"),
        ("x" * 129, ITEMS, "collection"),
        ("ok", [], "items"),
        ("ok", [ITEMS[0], StoredItem("", "text")], "items[1].id"),
        ("ok", [StoredItem("a", "  ")], "items[0].text"),
        ("ok", [ITEMS[0], ITEMS[0]], "items[1].id"),
        ("ok", [StoredItem("a", "t", {"run.id": "x"})], "items[0].metadata"),
    ],
)
def test_bad_upserts_name_the_field_and_store_nothing(memory, collection, items, field) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument) as raised:
        memory.upsert(collection, items)
    assert raised.value.field == field
    assert memory._vectors.info("ok") is None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"collection": "bad name", "query": "q"}, "collection"),
        ({"collection": "c", "query": ""}, "query"),
        ({"collection": "c", "query": "q", "limit": -1}, "limit"),
        ({"collection": "c", "query": "q", "conditions": {"a b": "x"}}, "filter"),
    ],
)
def test_bad_searches_name_the_field(memory, kwargs, field) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument) as raised:
        memory.search(**kwargs)
    assert raised.value.field == field


def test_a_collection_without_vectors_is_searched_lexically_and_not_mixed(
    qdrant_path, hashing_embedder
) -> None:  # type: ignore[no-untyped-def]
    vectors = VectorStore.open(path=qdrant_path)
    try:
        Memory(None, vectors, ContextSelector(None)).upsert("plain", ITEMS)
        caching = CachingEmbedder(hashing_embedder, cache=None)
        semantic = Memory(caching, vectors, ContextSelector(caching))

        result = semantic.search("plain", "CSV delimiter error", limit=1)
        assert result.lexical and [hit.item.id for hit in result.hits] == ["error-1"]
        with pytest.raises(FailedPrecondition, match="holds no vectors"):
            semantic.upsert("plain", [StoredItem("x", "y")])
        assert hashing_embedder.embedded == []
        assert vectors.count("plain") == 3
    finally:
        vectors.close()


def test_an_unreachable_qdrant_server_degrades_memory_instead_of_failing(hashing_embedder) -> None:  # type: ignore[no-untyped-def]
    import socket

    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    vectors = VectorStore.open(url=f"http://127.0.0.1:{port}")
    caching = CachingEmbedder(hashing_embedder, cache=None)
    memory = Memory(caching, vectors, ContextSelector(caching))
    try:
        with pytest.raises(Unavailable, match="Qdrant is unreachable"):
            vectors.info("notes")  # the store says what is wrong...
        found = memory.search("notes", "anything")  # ...and memory degrades, so no phase fails on it
        assert (found.hits, found.lexical, found.degraded) == ([], True, True)
        stored = memory.upsert("notes", ITEMS)
        assert (stored.upserted, stored.degraded) == (0, True)
        assert hashing_embedder.embedded == []  # nothing embedded for a store that cannot keep it
    finally:
        vectors.close()
