"""Qdrant collections: where memory items and their vectors live.

Local mode (files under a directory, no server) is the embedded default; ``QDRANT_URL``
selects a server. Point ids are UUIDv5 of the caller's id (Qdrant only accepts integers
and UUIDs), and the caller's id travels in the payload so hits give it back verbatim.
Collections record the embedding model in their metadata: vectors of two models are not
comparable, so writing or searching with another model is refused rather than silently
returning nonsense. A collection created with embeddings disabled holds no vectors and
is searched lexically.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from autopack_common.errors import FailedPrecondition, Unavailable
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

# Letters, digits, "-", "_", "."; the first must be a letter or digit so "." and ".." can
# never name a directory in local mode.
COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
METADATA_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

_POINT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://autopack.dev/memory/v1/items")
_SCROLL_PAGE = 256


class VectorStoreDown(Unavailable):
    """Qdrant cannot be reached or failed: callers may degrade instead of failing."""


def point_id(item_id: str) -> str:
    """The Qdrant point id of a caller's item id (stable across processes and versions)."""
    return str(uuid.uuid5(_POINT_NAMESPACE, item_id))


@dataclass(frozen=True)
class StoredItem:
    """A remembered text and its exact-match metadata."""

    id: str
    text: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ScoredItem:
    item: StoredItem
    score: float


@dataclass(frozen=True)
class CollectionInfo:
    """What a collection holds: vector size (None = no vectors) and the model that made them."""

    dimension: int | None
    model: str | None


def _item_from_payload(payload: Mapping[str, object] | None) -> StoredItem:
    payload = payload or {}
    metadata = payload.get("metadata") or {}
    return StoredItem(
        id=str(payload.get("id", "")),
        text=str(payload.get("text", "")),
        metadata={str(key): str(value) for key, value in dict(metadata).items()},  # type: ignore[call-overload]
    )


def _filter(conditions: Mapping[str, str] | None) -> models.Filter | None:
    if not conditions:
        return None
    return models.Filter(
        must=[
            models.FieldCondition(key=f"metadata.{key}", match=models.MatchValue(value=value))
            for key, value in sorted(conditions.items())
        ]
    )


class VectorStore:
    """Thread-safe access to Qdrant collections.

    Local mode is a single-process embedded store whose client is not thread-safe, so
    its calls are serialised; a server client is used concurrently.
    """

    def __init__(self, client: QdrantClient, local: bool) -> None:
        self._client = client
        self._lock: threading.RLock | None = threading.RLock() if local else None
        self._known: dict[str, CollectionInfo] = {}
        self._create_lock = threading.Lock()

    @classmethod
    def open(
        cls, url: str | None = None, api_key: str | None = None, path: Path | None = None
    ) -> VectorStore:
        """A server client when ``url`` is given, else local mode under ``path``."""
        if url:
            return cls(QdrantClient(url=url, api_key=api_key, timeout=30), local=False)
        if path is None:
            raise ValueError("either a Qdrant URL or a local path is required")
        path.mkdir(parents=True, exist_ok=True)
        return cls(QdrantClient(path=str(path), force_disable_check_same_thread=True), local=True)

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Serialise local-mode calls; an unreachable or failing server is UNAVAILABLE, not a crash."""
        with self._lock if self._lock is not None else nullcontext():
            try:
                yield
            except ResponseHandlingException as error:
                raise VectorStoreDown(f"Qdrant is unreachable: {error}") from error
            except UnexpectedResponse as error:
                if error.status_code is not None and error.status_code >= 500:
                    raise VectorStoreDown(f"Qdrant answered {error.status_code}") from error
                raise

    def close(self) -> None:
        with self._guard():
            self._client.close()

    def info(self, collection: str) -> CollectionInfo | None:
        """The collection's vector size and model, or None when it does not exist."""
        known = self._known.get(collection)
        if known is not None:
            return known
        with self._guard():
            if not self._client.collection_exists(collection):
                return None
            config = self._client.get_collection(collection).config
        vectors = config.params.vectors
        dimension = vectors.size if isinstance(vectors, models.VectorParams) else None
        model = (getattr(config, "metadata", None) or {}).get("embedding_model")
        info = CollectionInfo(dimension=dimension, model=str(model) if model else None)
        self._known[collection] = info
        return info

    def ensure_collection(self, collection: str, dimension: int | None, model: str) -> CollectionInfo:
        """Create the collection on first use; refuse one built for another model."""
        with self._create_lock:
            info = self.info(collection)
            if info is None:
                vectors_config: models.VectorParams | dict[str, models.VectorParams] = (
                    models.VectorParams(size=dimension, distance=models.Distance.COSINE)
                    if dimension is not None
                    else {}
                )
                with self._guard():
                    try:
                        self._client.create_collection(
                            collection, vectors_config=vectors_config, metadata={"embedding_model": model}
                        )
                    except Exception:
                        # Another replica may have created it first; anything else re-raises.
                        if not self._client.collection_exists(collection):
                            raise
                self._known.pop(collection, None)
                info = self.info(collection)
                assert info is not None
        self.check_compatible(collection, info, dimension, model)
        return info

    @staticmethod
    def check_compatible(collection: str, info: CollectionInfo, dimension: int | None, model: str) -> None:
        """Vectors of different models (or sizes) must never be mixed or compared."""
        if info.dimension != dimension or (info.model is not None and info.model != model):
            held = f"{info.dimension}-dimensional vectors" if info.dimension else "no vectors"
            wanted = f"{dimension}-dimensional vectors" if dimension else "no vectors (embeddings disabled)"
            raise FailedPrecondition(
                f"collection {collection!r} holds {held} from model {info.model or 'unknown'}; "
                f"the configured model {model} gives {wanted}"
            )

    def upsert(self, collection: str, items: Sequence[StoredItem], vectors: np.ndarray | None = None) -> int:
        """Insert or replace items by id; ``vectors`` is None for a collection without vectors."""
        points = [
            models.PointStruct(
                id=point_id(item.id),
                vector=vectors[index].tolist() if vectors is not None else {},
                payload={"id": item.id, "text": item.text, "metadata": dict(item.metadata)},
            )
            for index, item in enumerate(items)
        ]
        with self._guard():
            self._client.upsert(collection, points=points, wait=True)
        return len(points)

    def search(
        self,
        collection: str,
        vector: np.ndarray,
        limit: int,
        conditions: Mapping[str, str] | None = None,
    ) -> list[ScoredItem]:
        """Nearest items by cosine; a collection that does not exist has no hits."""
        if self.info(collection) is None:
            return []
        with self._guard():
            response = self._client.query_points(
                collection,
                query=vector.tolist(),
                query_filter=_filter(conditions),
                limit=limit,
                with_payload=True,
            )
        return [
            ScoredItem(_item_from_payload(point.payload), float(point.score)) for point in response.points
        ]

    def scan(
        self, collection: str, conditions: Mapping[str, str] | None = None, max_items: int = 10_000
    ) -> list[StoredItem]:
        """Up to ``max_items`` items matching the filter, for lexical search."""
        if self.info(collection) is None:
            return []
        items: list[StoredItem] = []
        offset: models.ExtendedPointId | None = None
        while len(items) < max_items:
            with self._guard():
                records, offset = self._client.scroll(
                    collection,
                    scroll_filter=_filter(conditions),
                    limit=min(_SCROLL_PAGE, max_items - len(items)),
                    offset=offset,
                    with_payload=True,
                    with_vectors=False,
                )
            items.extend(_item_from_payload(record.payload) for record in records)
            if offset is None:
                break
        return items

    def count(self, collection: str) -> int:
        """Points in the collection (0 when it does not exist)."""
        if self.info(collection) is None:
            return 0
        with self._guard():
            return int(self._client.count(collection, exact=True).count)

    def delete(self, collection: str, item_ids: Sequence[str]) -> None:
        """Remove items by caller id; a missing collection or id is not an error."""
        if not item_ids or self.info(collection) is None:
            return
        with self._guard():
            self._client.delete(
                collection,
                points_selector=models.PointIdsList(points=[point_id(i) for i in item_ids]),
                wait=True,
            )

    def get(self, collection: str, item_id: str) -> StoredItem | None:
        """One item by caller id, or None."""
        if self.info(collection) is None:
            return None
        with self._guard():
            records = self._client.retrieve(collection, [point_id(item_id)], with_payload=True)
        return _item_from_payload(records[0].payload) if records else None
