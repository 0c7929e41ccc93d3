"""The embedding cache table: (model, sha256 of the embedded text) -> vector.

Persisting it means a file that did not change is never embedded twice, across calls,
runs and replicas. The key is the content hash, so a changed file simply misses (stale
rows are harmless and only cost disk). Vectors are float32 bytes, which SQLite (BLOB)
and PostgreSQL (bytea) both store compactly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import numpy as np
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite

metadata = MetaData(
    naming_convention={
        "pk": "pk_%(table_name)s",
        "ix": "ix_%(table_name)s_%(column_0_name)s",
    }
)

embedding_cache = Table(
    "embedding_cache",
    metadata,
    Column("model", String(200), primary_key=True),
    Column("content_sha256", String(64), primary_key=True),
    Column("dimension", Integer, nullable=False),
    Column("vector", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# Keeps IN lists well below SQLite's and PostgreSQL's parameter limits.
_LOOKUP_BATCH = 500


def content_sha256(text: str) -> str:
    """The cache key of a text: hex sha256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Repository over ``embedding_cache``; safe to share between threads (one engine)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def get_many(self, model: str, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        """Cached vectors of ``model`` for the given content hashes (misses are absent)."""
        wanted = list(dict.fromkeys(hashes))
        found: dict[str, np.ndarray] = {}
        with self._engine.connect() as connection:
            for start in range(0, len(wanted), _LOOKUP_BATCH):
                batch = wanted[start : start + _LOOKUP_BATCH]
                rows = connection.execute(
                    select(
                        embedding_cache.c.content_sha256,
                        embedding_cache.c.dimension,
                        embedding_cache.c.vector,
                    ).where(
                        embedding_cache.c.model == model,
                        embedding_cache.c.content_sha256.in_(batch),
                    )
                )
                for sha, dimension, blob in rows:
                    vector = np.frombuffer(blob, dtype="<f4")
                    if vector.shape[0] == dimension:
                        found[sha] = vector.astype(np.float32)
        return found

    def put_many(self, model: str, vectors: Mapping[str, np.ndarray]) -> None:
        """Store vectors; a key another writer stored first is left as it is."""
        if not vectors:
            return
        rows = [
            {
                "model": model,
                "content_sha256": sha,
                "dimension": int(vector.shape[0]),
                "vector": np.asarray(vector, dtype="<f4").tobytes(),
            }
            for sha, vector in vectors.items()
        ]
        dialect = self._engine.dialect.name
        if dialect == "postgresql":
            statement = postgresql.insert(embedding_cache).on_conflict_do_nothing()
        elif dialect == "sqlite":
            statement = sqlite.insert(embedding_cache).on_conflict_do_nothing()
        else:
            raise RuntimeError(f"unsupported database dialect {dialect!r}: use SQLite or PostgreSQL")
        with self._engine.begin() as connection:
            connection.execute(statement, rows)

    def count(self, model: str | None = None) -> int:
        """Rows cached, for one model or all."""
        query = select(func.count()).select_from(embedding_cache)
        if model is not None:
            query = query.where(embedding_cache.c.model == model)
        with self._engine.connect() as connection:
            return int(connection.execute(query).scalar_one())
