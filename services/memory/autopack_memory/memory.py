"""The memory service's behaviour without gRPC: validate, embed, store, search, select.

Everything is validated before anything is written, so a bad request changes nothing.
Field names in errors are the request's (``items[2].id``) so a caller can fix its call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from autopack_common.errors import InvalidArgument, Unavailable

from autopack_memory.embedding import CachingEmbedder, EmbeddingUnavailable
from autopack_memory.selection import Candidate, ContextSelector, Selection, lexical_scores
from autopack_memory.vectors import COLLECTION_NAME, METADATA_KEY, ScoredItem, StoredItem, VectorStore

DEFAULT_SEARCH_LIMIT = 5
# A larger limit is served as this many: "maximum hits" is still honoured.
MAX_SEARCH_LIMIT = 100
# Each item is embedded on the request path (~50-100 ms a text on two CPU cores).
MAX_UPSERT_ITEMS = 256
MAX_CANDIDATES = 10_000
# Lexical search reads the matching items; beyond this many it needs embeddings.
LEXICAL_SCAN_LIMIT = 10_000
NO_EMBEDDINGS_MODEL = "none"


@dataclass(frozen=True)
class UpsertResult:
    upserted: int
    embedding_model: str


@dataclass(frozen=True)
class SearchResult:
    hits: list[ScoredItem]
    lexical: bool


def validate_collection(collection: str, field: str = "collection") -> None:
    if not collection:
        raise InvalidArgument(field, "required")
    if not COLLECTION_NAME.match(collection):
        raise InvalidArgument(
            field,
            f"{collection[:40]!r} is not a collection name: use letters, digits, '-', '_' and '.', "
            "start with a letter or digit, at most 128 characters",
        )


def validate_metadata(metadata: Mapping[str, str], field: str) -> None:
    for key in metadata:
        if not METADATA_KEY.match(key):
            raise InvalidArgument(field, f"key {key[:40]!r} must be 1-64 letters, digits, '-' or '_'")


class Memory:
    """Collections of remembered texts plus context selection, over one embedding model.

    ``embedder`` None means embeddings are disabled: collections then hold no vectors and
    are searched lexically, and context selection is lexical.
    """

    def __init__(self, embedder: CachingEmbedder | None, vectors: VectorStore, selector: ContextSelector):
        self._embedder = embedder
        self._vectors = vectors
        self._selector = selector

    @property
    def embedding_model(self) -> str:
        return self._embedder.model_name if self._embedder else NO_EMBEDDINGS_MODEL

    @property
    def _dimension(self) -> int | None:
        return self._embedder.dimension if self._embedder else None

    def close(self) -> None:
        self._vectors.close()

    def upsert(self, collection: str, items: Sequence[StoredItem]) -> UpsertResult:
        """Insert or replace items by id; the collection is created on first use."""
        validate_collection(collection)
        if not items:
            raise InvalidArgument("items", "at least one item is required")
        if len(items) > MAX_UPSERT_ITEMS:
            raise InvalidArgument("items", f"at most {MAX_UPSERT_ITEMS} items per request, got {len(items)}")
        seen: dict[str, int] = {}
        for index, item in enumerate(items):
            if not item.id:
                raise InvalidArgument(f"items[{index}].id", "required")
            if not item.text.strip():
                raise InvalidArgument(f"items[{index}].text", "required")
            if item.id in seen:
                raise InvalidArgument(f"items[{index}].id", f"duplicate of items[{seen[item.id]}].id")
            seen[item.id] = index
            validate_metadata(item.metadata, f"items[{index}].metadata")

        existing = self._vectors.info(collection)
        if existing is not None:
            self._vectors.check_compatible(collection, existing, self._dimension, self.embedding_model)
        vectors = None
        if self._embedder is not None:
            try:
                vectors = self._embedder.embed([item.text for item in items])
            except EmbeddingUnavailable as error:
                raise Unavailable(f"embedding model unavailable: {error}") from error
        self._vectors.ensure_collection(collection, self._dimension, self.embedding_model)
        upserted = self._vectors.upsert(collection, items, vectors)
        return UpsertResult(upserted=upserted, embedding_model=self.embedding_model)

    def search(
        self, collection: str, query: str, limit: int = 0, conditions: Mapping[str, str] | None = None
    ) -> SearchResult:
        """Items most similar to ``query``, optionally only those whose metadata matches."""
        validate_collection(collection)
        if not query.strip():
            raise InvalidArgument("query", "required")
        if limit < 0:
            raise InvalidArgument("limit", "must be >= 0 (0 means the default of 5)")
        validate_metadata(conditions or {}, "filter")
        limit = min(limit or DEFAULT_SEARCH_LIMIT, MAX_SEARCH_LIMIT)

        info = self._vectors.info(collection)
        if info is None:
            return SearchResult(hits=[], lexical=self._embedder is None)
        if self._embedder is None or info.dimension is None:
            return SearchResult(hits=self._lexical_search(collection, query, limit, conditions), lexical=True)
        self._vectors.check_compatible(collection, info, self._dimension, self.embedding_model)
        try:
            vector = self._embedder.embed([query])[0]
        except EmbeddingUnavailable as error:
            raise Unavailable(f"embedding model unavailable: {error}") from error
        return SearchResult(hits=self._vectors.search(collection, vector, limit, conditions), lexical=False)

    def _lexical_search(
        self, collection: str, query: str, limit: int, conditions: Mapping[str, str] | None
    ) -> list[ScoredItem]:
        items = self._vectors.scan(collection, conditions, LEXICAL_SCAN_LIMIT)
        scores = lexical_scores(query, [item.text for item in items])
        ranked = sorted(zip(items, scores, strict=True), key=lambda pair: -pair[1])
        return [ScoredItem(item, score) for item, score in ranked[:limit] if score > 0]

    def select_context(self, query: str, candidates: Sequence[Candidate], token_budget: int) -> Selection:
        """Rank candidate files for the phase and keep what fits ``token_budget``."""
        if not query.strip():
            raise InvalidArgument("query", "required")
        if token_budget <= 0:
            raise InvalidArgument("token_budget", "required and must be > 0")
        if len(candidates) > MAX_CANDIDATES:
            raise InvalidArgument("candidates", f"at most {MAX_CANDIDATES} files, got {len(candidates)}")
        seen: dict[str, int] = {}
        for index, candidate in enumerate(candidates):
            if not candidate.path:
                raise InvalidArgument(f"candidates[{index}].path", "required")
            if candidate.path in seen:
                raise InvalidArgument(
                    f"candidates[{index}].path", f"duplicate of candidates[{seen[candidate.path]}].path"
                )
            seen[candidate.path] = index
        return self._selector.select(query, candidates, token_budget)
