"""Project records across runs (seed 004's collections): code docs, run summaries, error
patterns, decision logs, task outcomes.

A record's id is derived from its content (project, kind, text), so writing the same lesson
twice refreshes one record instead of piling up copies. The relational table is the source of
truth (project key, time to live, run); Qdrant holds the vectors under the same ids, one
collection per kind. Qdrant unavailable: the record is still kept and recall ranks lexically
over the table, with the mode saying so: memory degrades, phases do not fail.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from autopack_common.errors import InvalidArgument

from autopack_memory.embedding import CachingEmbedder, EmbeddingUnavailable
from autopack_memory.ranking import lexical_scores
from autopack_memory.store import RecordRow, RecordStore
from autopack_memory.vectors import METADATA_KEY, StoredItem, VectorStore, VectorStoreDown

log = logging.getLogger(__name__)

DEFAULT_TTL_SECONDS = 30 * 24 * 3600  # seed 004: TTL pruning, 30 days by default
DEFAULT_RECALL_LIMIT = 5
MAX_RECALL_LIMIT = 100
MAX_PROJECT_CHARS = 512
# Vector hits fetched per kind before expired / excluded records are dropped.
_OVERFETCH = 4


class RecordKind(StrEnum):
    CODE_DOC = "code_doc"
    RUN_SUMMARY = "run_summary"
    ERROR_PATTERN = "error_pattern"
    DECISION_LOG = "decision_log"
    TASK_OUTCOME = "task_outcome"


def record_id(project: str, kind: RecordKind, text: str) -> str:
    """Content-derived id: sha256 of project, kind and text (32 hex characters)."""
    return hashlib.sha256(f"{project}\0{kind.value}\0{text}".encode()).hexdigest()[:32]


def collection_of(kind: RecordKind) -> str:
    return f"records.{kind.value}"


@dataclass(frozen=True)
class RememberResult:
    id: str
    indexed: bool


@dataclass(frozen=True)
class RecallHit:
    record: RecordRow
    score: float


@dataclass(frozen=True)
class RecallResult:
    hits: list[RecallHit]
    lexical: bool


def _validate_project(project: str) -> None:
    if not project.strip():
        raise InvalidArgument("project", "required")
    if len(project) > MAX_PROJECT_CHARS:
        raise InvalidArgument("project", f"at most {MAX_PROJECT_CHARS} characters")


class ProjectMemory:
    """Remember, recall and prune records of projects; ``clock`` returns Unix seconds."""

    def __init__(
        self,
        store: RecordStore,
        vectors: VectorStore,
        embedder: CachingEmbedder | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._vectors = vectors
        self._embedder = embedder
        self._clock = clock

    @property
    def _model(self) -> str:
        return self._embedder.model_name if self._embedder else "none"

    def remember(
        self,
        project: str,
        kind: RecordKind | None,
        text: str,
        run_id: str = "",
        phase_id: str = "",
        metadata: Mapping[str, str] | None = None,
        ttl_seconds: int = 0,
    ) -> RememberResult:
        """Store (or refresh) a record; its vector is best effort."""
        _validate_project(project)
        if kind is None:
            raise InvalidArgument("record.kind", "required")
        if not text.strip():
            raise InvalidArgument("record.text", "required")
        if ttl_seconds < 0:
            raise InvalidArgument("ttl_seconds", "must be >= 0 (0 means the default of 30 days)")
        for key in metadata or {}:
            if not METADATA_KEY.match(key):
                raise InvalidArgument(
                    "record.metadata", f"key {key[:40]!r} must be 1-64 letters, digits, '-' or '_'"
                )
        now = int(self._clock())
        row = RecordRow(
            id=record_id(project, kind, text),
            project=project,
            kind=kind.value,
            text=text,
            created_at=now,
            expires_at=now + (ttl_seconds or DEFAULT_TTL_SECONDS),
            run_id=run_id,
            phase_id=phase_id,
            metadata=dict(metadata or {}),
        )
        self._store.put(row)
        return RememberResult(id=row.id, indexed=self._index(row, kind))

    def _index(self, row: RecordRow, kind: RecordKind) -> bool:
        if self._embedder is None:
            return False
        try:
            vector = self._embedder.embed([row.text])
            collection = collection_of(kind)
            self._vectors.ensure_collection(collection, self._embedder.dimension, self._model)
            item = StoredItem(
                id=row.id,
                text=row.text,
                metadata={"project": row.project, "kind": row.kind, "run_id": row.run_id},
            )
            self._vectors.upsert(collection, [item], vector)
        except (VectorStoreDown, EmbeddingUnavailable) as error:
            log.warning("record %s kept without its vector (recall is lexical for it): %s", row.id, error)
            return False
        return True

    def recall(
        self,
        project: str,
        query: str,
        kinds: Sequence[RecordKind] = (),
        limit: int = 0,
        exclude_run_id: str = "",
    ) -> RecallResult:
        """Unexpired records of ``project`` most relevant to ``query``; lexical when vectors are unavailable."""
        _validate_project(project)
        if not query.strip():
            raise InvalidArgument("query", "required")
        if limit < 0:
            raise InvalidArgument("limit", "must be >= 0 (0 means the default of 5)")
        limit = min(limit or DEFAULT_RECALL_LIMIT, MAX_RECALL_LIMIT)
        kinds = list(dict.fromkeys(kinds)) or list(RecordKind)
        now = int(self._clock())
        if self._embedder is not None:
            try:
                return RecallResult(
                    self._semantic(project, query, kinds, limit, exclude_run_id, now), lexical=False
                )
            except (VectorStoreDown, EmbeddingUnavailable) as error:
                log.warning("recall for %r is lexical: %s", project[:64], error)
        rows = self._store.alive(project, [kind.value for kind in kinds], now, exclude_run_id)
        scores = lexical_scores(query, [row.text for row in rows])
        ranked = sorted(zip(rows, scores, strict=True), key=lambda pair: (-pair[1], pair[0].id))
        return RecallResult(
            [RecallHit(row, score) for row, score in ranked[:limit] if score > 0], lexical=True
        )

    def _semantic(
        self, project: str, query: str, kinds: Sequence[RecordKind], limit: int, exclude_run_id: str, now: int
    ) -> list[RecallHit]:
        assert self._embedder is not None
        vector = self._embedder.embed([query])[0]
        scored: dict[str, float] = {}
        for kind in kinds:
            for hit in self._vectors.search(
                collection_of(kind), vector, limit * _OVERFETCH, {"project": project}
            ):
                scored[hit.item.id] = max(hit.score, scored.get(hit.item.id, -1.0))
        rows = self._store.alive(
            project, [kind.value for kind in kinds], now, exclude_run_id, ids=list(scored)
        )
        hits = [RecallHit(row, scored[row.id]) for row in rows]
        return sorted(hits, key=lambda hit: (-hit.score, hit.record.id))[:limit]

    def prune(self, project: str = "") -> int:
        """Delete expired records (and, best effort, their vectors); returns how many."""
        expired = self._store.prune(int(self._clock()), project)
        by_kind: dict[str, list[str]] = {}
        for kind, id_ in expired:
            by_kind.setdefault(kind, []).append(id_)
        for kind, ids in by_kind.items():
            try:
                self._vectors.delete(collection_of(RecordKind(kind)), ids)
            except VectorStoreDown as error:  # recall reads the table, so a stale vector is never returned
                log.warning("expired vectors of %d record(s) left in Qdrant: %s", len(ids), error)
        return len(expired)


class PeriodicPruner:
    """Prunes expired records every ``interval_seconds`` on a daemon thread, so a long-lived
    service does not need a CronJob calling ``Prune`` for its database to stop growing.

    A failing prune is logged and retried at the next tick; ``stop`` ends the thread promptly.
    """

    def __init__(self, records: ProjectMemory, interval_seconds: float) -> None:
        if interval_seconds <= 0:
            raise ValueError("interval_seconds must be positive")
        self._records = records
        self._interval = interval_seconds
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prune-records", daemon=True)
        self.runs = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            try:
                pruned = self._records.prune()
            except Exception:  # the database may be briefly unavailable; the next tick retries
                log.exception("pruning expired project records failed")
                continue
            self.runs += 1
            if pruned:
                log.info("pruned %d expired project record(s)", pruned)
