"""The persistent embedding cache on SQLite and PostgreSQL, through the real migrations."""

from __future__ import annotations

import numpy as np
import pytest
from autopack_common.content import text_sha256
from autopack_common.database import create_db_engine, upgrade_schema
from autopack_memory.embedding import CachingEmbedder
from autopack_memory.selection import Candidate, ContextSelector, SelectionMode
from autopack_memory.store import EmbeddingCache
from sqlalchemy import Engine, inspect


@pytest.fixture
def engine(database_url: str) -> Engine:
    engine = create_db_engine(database_url)
    upgrade_schema(engine, "autopack_memory.migrations", "alembic_version_memory")
    yield engine
    engine.dispose()


def test_migrations_create_the_cache_table_and_rerun_harmlessly(engine: Engine) -> None:
    upgrade_schema(engine, "autopack_memory.migrations", "alembic_version_memory")
    tables = set(inspect(engine).get_table_names())
    assert {
        "embedding_cache",
        "workspace_files",
        "file_contents",
        "memory_records",
        "alembic_version_memory",
    } <= tables


def test_vectors_round_trip_per_model(engine: Engine) -> None:
    cache = EmbeddingCache(engine)
    vector = np.array([0.25, -0.5, 1.0], dtype=np.float32)
    key = text_sha256("hello")

    cache.put_many("model-a", {key: vector})
    cache.put_many("model-a", {key: np.zeros(3, dtype=np.float32)})  # a second writer loses quietly

    assert np.array_equal(cache.get_many("model-a", [key, text_sha256("other")])[key], vector)
    assert cache.get_many("model-b", [key]) == {}
    assert cache.count("model-a") == 1


def test_second_call_hits_the_cache_and_a_changed_file_misses(engine: Engine, hashing_embedder) -> None:  # type: ignore[no-untyped-def]
    selector = ContextSelector(CachingEmbedder(hashing_embedder, EmbeddingCache(engine)))
    files = [Candidate("a.py", "alpha beta"), Candidate("b.py", "gamma delta")]

    first = selector.select("alpha", files, token_budget=100)
    assert (first.mode, first.embeddings_computed, first.embedding_cache_hits) == (
        SelectionMode.SEMANTIC,
        3,
        0,
    )
    embedded_once = len(hashing_embedder.embedded)

    # A new selector over the same database: as after a restart of the service.
    again = ContextSelector(CachingEmbedder(hashing_embedder, EmbeddingCache(engine)))
    second = again.select("alpha", files, token_budget=100)
    assert (second.embeddings_computed, second.embedding_cache_hits) == (0, 3)
    assert len(hashing_embedder.embedded) == embedded_once
    assert [f.score for f in second.kept] == [f.score for f in first.kept]

    changed = [Candidate("a.py", "alpha beta, edited"), files[1]]
    third = again.select("alpha", changed, token_budget=100)
    assert (third.embeddings_computed, third.embedding_cache_hits) == (1, 2)
    assert hashing_embedder.embedded[-1].startswith("a.py\n")  # the edited file's card, re-embedded
    assert "alpha beta, edited" in hashing_embedder.embedded[-1]


def test_cached_vectors_do_not_count_against_the_cap(engine: Engine, hashing_embedder) -> None:  # type: ignore[no-untyped-def]
    files = [Candidate(f"f{n}.py", f"text {n}") for n in range(5)]
    unlimited = ContextSelector(
        CachingEmbedder(hashing_embedder, EmbeddingCache(engine)), max_embeddings_per_call=-1
    )
    assert unlimited.select("text", files, 100).mode is SelectionMode.SEMANTIC

    capped = ContextSelector(
        CachingEmbedder(hashing_embedder, EmbeddingCache(engine)), max_embeddings_per_call=1
    )
    warm = capped.select("text", files, 100)
    assert (warm.mode, warm.embeddings_computed) == (SelectionMode.SEMANTIC, 0)
    cold = capped.select("a different query", [*files, Candidate("new.py", "new")], 100)
    assert (cold.mode, cold.fallback_reason) == (SelectionMode.LEXICAL, "2 new embeddings needed, cap 1")
    assert cold.embeddings_computed == 1  # the query, cached for next time
    retry = capped.select("a different query", [*files, Candidate("new.py", "new")], 100)
    assert (retry.mode, retry.embeddings_computed) == (SelectionMode.SEMANTIC, 1)  # converged
