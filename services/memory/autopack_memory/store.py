"""The memory service's tables: the embedding cache, workspace indexes and project records.

``embedding_cache``: (model, sha256 of the embedded text) -> vector. Persisting it means a file that did not change is never embedded twice, across calls,
runs and replicas. The key is the content hash, so a changed file simply misses (stale
rows are harmless and only cost disk). Vectors are float32 bytes, which SQLite (BLOB)
and PostgreSQL (bytea) both store compactly.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    delete,
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

# A workspace index: which content (by hash) each path of a workspace has. Contents are
# stored once by hash, so two workspaces of one repository share them.
workspace_files = Table(
    "workspace_files",
    metadata,
    Column("workspace", String(512), primary_key=True),
    Column("path", String(1024), primary_key=True),
    Column("content_sha256", String(64), nullable=False),
)

file_contents = Table(
    "file_contents",
    metadata,
    Column("content_sha256", String(64), primary_key=True),
    Column("content", Text, nullable=False),
)

# Records of a project across runs. The source of truth (TTL, project, lexical recall when the
# vector index is unavailable); Qdrant holds their vectors under the same id.
memory_records = Table(
    "memory_records",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("project", String(512), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("run_id", String(128), nullable=False, default=""),
    Column("phase_id", String(128), nullable=False, default=""),
    Column("text", Text, nullable=False),
    Column("metadata_json", Text, nullable=False, default="{}"),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Index("ix_memory_records_project_kind", "project", "kind"),
    Index("ix_memory_records_expires_at", "expires_at"),
)

# Keeps IN lists well below SQLite's and PostgreSQL's parameter limits.
_LOOKUP_BATCH = 500


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
        with self._engine.begin() as connection:
            connection.execute(_insert_ignoring_duplicates(self._engine, embedding_cache), rows)

    def count(self, model: str | None = None) -> int:
        """Rows cached, for one model or all."""
        query = select(func.count()).select_from(embedding_cache)
        if model is not None:
            query = query.where(embedding_cache.c.model == model)
        with self._engine.connect() as connection:
            return int(connection.execute(query).scalar_one())


def _insert_ignoring_duplicates(engine: Engine, table: Table):  # type: ignore[no-untyped-def]
    """INSERT ... ON CONFLICT DO NOTHING for the two supported dialects."""
    if engine.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if engine.dialect.name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    raise RuntimeError(f"unsupported database dialect {engine.dialect.name!r}: use SQLite or PostgreSQL")


@dataclass(frozen=True)
class IndexChange:
    """What one IndexWorkspace call changed."""

    files: int
    updated: int
    unchanged: int
    removed: int
    needs_content: list[str]


class WorkspaceIndex:
    """Repository over ``workspace_files`` and ``file_contents``."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def update(
        self, workspace: str, files: Sequence[tuple[str, str, str | None]], replace: bool
    ) -> IndexChange:
        """Apply (path, sha256, content or None) entries in one transaction.

        An entry without content whose hash is unknown is not applied and is reported in
        ``needs_content``; everything else is.
        """
        with self._engine.begin() as connection:
            current = dict(
                connection.execute(
                    select(workspace_files.c.path, workspace_files.c.content_sha256).where(
                        workspace_files.c.workspace == workspace
                    )
                ).all()
            )
            hashes = {sha for _path, sha, content in files if content is None}
            known: set[str] = set()
            wanted = list(hashes)
            for start in range(0, len(wanted), _LOOKUP_BATCH):
                known.update(
                    connection.execute(
                        select(file_contents.c.content_sha256).where(
                            file_contents.c.content_sha256.in_(wanted[start : start + _LOOKUP_BATCH])
                        )
                    ).scalars()
                )
            contents = {sha: text for _path, sha, text in files if text is not None}
            if contents:
                connection.execute(
                    _insert_ignoring_duplicates(self._engine, file_contents),
                    [{"content_sha256": sha, "content": text} for sha, text in contents.items()],
                )
            needs = [
                path
                for path, sha, text in files
                if text is None and sha not in known and current.get(path) != sha
            ]
            skipped = set(needs)
            listed = {path for path, _sha, _text in files}
            changed = [
                (path, sha) for path, sha, _text in files if path not in skipped and current.get(path) != sha
            ]
            unchanged = len(listed) - len(skipped) - len(changed)
            inserts = [
                {"workspace": workspace, "path": p, "content_sha256": h}
                for p, h in changed
                if p not in current
            ]
            if inserts:
                connection.execute(workspace_files.insert(), inserts)
            for path, sha in changed:
                if path in current:
                    connection.execute(
                        workspace_files.update()
                        .where(workspace_files.c.workspace == workspace, workspace_files.c.path == path)
                        .values(content_sha256=sha)
                    )
            updated = len(changed)
            removed = 0
            if replace:
                stale = [path for path in current if path not in listed]
                for start in range(0, len(stale), _LOOKUP_BATCH):
                    connection.execute(
                        delete(workspace_files).where(
                            workspace_files.c.workspace == workspace,
                            workspace_files.c.path.in_(stale[start : start + _LOOKUP_BATCH]),
                        )
                    )
                removed = len(stale)
            total = connection.execute(
                select(func.count())
                .select_from(workspace_files)
                .where(workspace_files.c.workspace == workspace)
            ).scalar_one()
        return IndexChange(int(total), updated, unchanged, removed, needs)

    def files(self, workspace: str) -> list[tuple[str, str]] | None:
        """(path, content) of every indexed file, by path; None when the workspace is not indexed."""
        with self._engine.connect() as connection:
            rows = connection.execute(
                select(workspace_files.c.path, file_contents.c.content)
                .join(file_contents, file_contents.c.content_sha256 == workspace_files.c.content_sha256)
                .where(workspace_files.c.workspace == workspace)
                .order_by(workspace_files.c.path)
            ).all()
            if not rows:
                exists = connection.execute(
                    select(func.count())
                    .select_from(workspace_files)
                    .where(workspace_files.c.workspace == workspace)
                ).scalar_one()
                if not exists:
                    return None
        return [(path, content) for path, content in rows]


@dataclass(frozen=True)
class RecordRow:
    """A project record as stored."""

    id: str
    project: str
    kind: str
    text: str
    created_at: int
    expires_at: int
    run_id: str = ""
    phase_id: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


class RecordStore:
    """Repository over ``memory_records``."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def put(self, record: RecordRow) -> None:
        """Insert, or refresh the same content's record (new run, times and metadata)."""
        values = {
            "id": record.id,
            "project": record.project,
            "kind": record.kind,
            "run_id": record.run_id,
            "phase_id": record.phase_id,
            "text": record.text,
            "metadata_json": json.dumps(record.metadata, sort_keys=True),
            "created_at": record.created_at,
            "expires_at": record.expires_at,
        }
        with self._engine.begin() as connection:
            connection.execute(delete(memory_records).where(memory_records.c.id == record.id))
            connection.execute(memory_records.insert().values(**values))

    def alive(
        self,
        project: str,
        kinds: Sequence[str],
        now: int,
        exclude_run_id: str = "",
        ids: Sequence[str] | None = None,
        limit: int = 10_000,
    ) -> list[RecordRow]:
        """Unexpired records of a project (optionally only these ids), newest first."""
        query = select(memory_records).where(
            memory_records.c.project == project, memory_records.c.expires_at > now
        )
        if kinds:
            query = query.where(memory_records.c.kind.in_(list(kinds)))
        if exclude_run_id:
            query = query.where(memory_records.c.run_id != exclude_run_id)
        if ids is not None:
            query = query.where(memory_records.c.id.in_(list(ids)[:_LOOKUP_BATCH]))
        query = query.order_by(memory_records.c.created_at.desc(), memory_records.c.id).limit(limit)
        with self._engine.connect() as connection:
            return [
                RecordRow(
                    id=row.id,
                    project=row.project,
                    kind=row.kind,
                    text=row.text,
                    created_at=row.created_at,
                    expires_at=row.expires_at,
                    run_id=row.run_id,
                    phase_id=row.phase_id,
                    metadata=json.loads(row.metadata_json),
                )
                for row in connection.execute(query)
            ]

    def prune(self, now: int, project: str = "") -> list[tuple[str, str]]:
        """Delete expired records; returns their (kind, id) so their vectors can go too."""
        condition = memory_records.c.expires_at <= now
        if project:
            condition = condition & (memory_records.c.project == project)
        with self._engine.begin() as connection:
            expired = [
                (kind, id_)
                for id_, kind in connection.execute(
                    select(memory_records.c.id, memory_records.c.kind).where(condition)
                )
            ]
            connection.execute(delete(memory_records).where(condition))
        return expired
