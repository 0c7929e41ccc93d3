"""The memory service's behaviour without gRPC: validate, embed, store, search, select.

Everything is validated before anything is written, so a bad request changes nothing.
Field names in errors are the request's (``items[2].id``) so a caller can fix its call.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from autopack_common.content import EMPTY_TEXT_SHA256, text_sha256
from autopack_common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable

from autopack_memory.drift import DriftDetector
from autopack_memory.embedding import CachingEmbedder, EmbeddingUnavailable
from autopack_memory.ranking import Hints, lexical_scores
from autopack_memory.records import ProjectMemory
from autopack_memory.selection import DEFAULT_MAX_SUMMARIES, Candidate, ContextSelector, Selection
from autopack_memory.store import IndexChange, WorkspaceIndex
from autopack_memory.vectors import (
    COLLECTION_NAME,
    METADATA_KEY,
    ScoredItem,
    StoredItem,
    VectorStore,
    VectorStoreDown,
)

log = logging.getLogger(__name__)

DEFAULT_SEARCH_LIMIT = 5
# A larger limit is served as this many: "maximum hits" is still honoured.
MAX_SEARCH_LIMIT = 100
# Each item is embedded on the request path (~50-100 ms a text on two CPU cores).
MAX_UPSERT_ITEMS = 256
MAX_CANDIDATES = 10_000
MAX_WORKSPACE_CHARS = 512
_SHA256_HEX = frozenset("0123456789abcdef")
# Lexical search reads the matching items; beyond this many it needs embeddings.
LEXICAL_SCAN_LIMIT = 10_000
NO_EMBEDDINGS_MODEL = "none"


@dataclass(frozen=True)
class UpsertResult:
    upserted: int
    embedding_model: str
    degraded: bool = False


@dataclass(frozen=True)
class SearchResult:
    hits: list[ScoredItem]
    lexical: bool
    degraded: bool = False


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

    def __init__(
        self,
        embedder: CachingEmbedder | None,
        vectors: VectorStore,
        selector: ContextSelector,
        workspaces: WorkspaceIndex | None = None,
        records: ProjectMemory | None = None,
        drift: DriftDetector | None = None,
    ):
        self._embedder = embedder
        self._vectors = vectors
        self._selector = selector
        self._workspaces = workspaces
        self._records = records
        self.drift = drift or DriftDetector(vectors, embedder)
        self._warming = ThreadPoolExecutor(max_workers=1, thread_name_prefix="warm-cards")
        # The last warming job, so a caller (and the tests) can wait for it.
        self.last_warming: Future[int] | None = None

    @property
    def records(self) -> ProjectMemory:
        """Project records across runs; FAILED_PRECONDITION when no database was configured."""
        if self._records is None:
            raise FailedPrecondition("project records are not configured")
        return self._records

    @property
    def embedding_model(self) -> str:
        return self._embedder.model_name if self._embedder else NO_EMBEDDINGS_MODEL

    @property
    def _dimension(self) -> int | None:
        return self._embedder.dimension if self._embedder else None

    def close(self) -> None:
        self.stop_background()
        self._vectors.close()

    def stop_background(self) -> None:
        """Drop queued warming and wait for the running job (closing without closing the vector store)."""
        self._warming.shutdown(wait=True, cancel_futures=True)

    def _warm_in_background(self, files: list[tuple[str, str]]) -> Future[int] | None:
        """Embed newly indexed files' cards on one background thread, so the first selection over
        the workspace finds them cached; best effort (a failure only costs that later call)."""
        if self._embedder is None or not files:
            return None

        def warm() -> int:
            try:
                return self._selector.warm_cards(files)
            except Exception:
                log.exception("warming the cards of %d indexed file(s) failed", len(files))
                return 0

        return self._warming.submit(warm)

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
        try:
            return self._upsert(collection, items)
        except VectorStoreDown as error:
            # Memory is best effort: a phase must not fail because Qdrant is down.
            log.warning(
                "vector store unavailable, %d item(s) of %r not stored: %s", len(items), collection, error
            )
            return UpsertResult(upserted=0, embedding_model=self.embedding_model, degraded=True)

    def _upsert(self, collection: str, items: Sequence[StoredItem]) -> UpsertResult:
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
        try:
            return self._search(collection, query, limit, conditions)
        except VectorStoreDown as error:
            log.warning("vector store unavailable, search of %r answered with no hits: %s", collection, error)
            return SearchResult(hits=[], lexical=True, degraded=True)

    def _search(
        self, collection: str, query: str, limit: int, conditions: Mapping[str, str] | None
    ) -> SearchResult:
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

    def select_context(
        self,
        query: str,
        candidates: Sequence[Candidate],
        token_budget: int,
        workspace: str = "",
        pinned_paths: Sequence[str] = (),
        scope_paths: Sequence[str] = (),
        max_summaries: int = 0,
        summary_budget_percent: int = 0,
    ) -> Selection:
        """Rank candidate files (given, or an indexed workspace's) and keep what fits ``token_budget``."""
        if not query.strip():
            raise InvalidArgument("query", "required")
        if token_budget <= 0:
            raise InvalidArgument("token_budget", "required and must be > 0")
        if max_summaries < -1:
            raise InvalidArgument("max_summaries", "must be -1 (none), 0 (default) or a positive count")
        if not 0 <= summary_budget_percent <= 50:
            raise InvalidArgument("summary_budget_percent", "must be 0-50")
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
        if workspace:
            if candidates:
                raise InvalidArgument("candidates", "must be empty when workspace is given")
            candidates = self._indexed_candidates(workspace, pinned_paths)
        pinned = [c.path for c in candidates if c.pinned] if not workspace else list(pinned_paths)
        hints = Hints(scope_paths=list(scope_paths), pinned_paths=pinned)
        summaries = DEFAULT_MAX_SUMMARIES if max_summaries == 0 else max(max_summaries, 0)
        return self._selector.select(
            query, candidates, token_budget, hints, summaries, outline_share=summary_budget_percent / 100
        )

    def _indexed_candidates(self, workspace: str, pinned_paths: Sequence[str]) -> list[Candidate]:
        if self._workspaces is None:
            raise FailedPrecondition("workspace indexes are not configured")
        files = self._workspaces.files(workspace)
        if files is None:
            raise NotFound(f"workspace {workspace[:80]!r} is not indexed: call IndexWorkspace first")
        if len(files) > MAX_CANDIDATES:
            raise FailedPrecondition(
                f"workspace holds {len(files)} files, at most {MAX_CANDIDATES} can be ranked"
            )
        pinned = set(pinned_paths)
        return [Candidate(path=path, content=content, pinned=path in pinned) for path, content in files]

    def index_workspace(
        self, workspace: str, files: Sequence[tuple[str, str, str]], replace: bool = False
    ) -> IndexChange:
        """Record (path, sha256, content) entries of a workspace; content may be empty when the hash is known."""
        if self._workspaces is None:
            raise FailedPrecondition("workspace indexes are not configured")
        if not workspace:
            raise InvalidArgument("workspace", "required")
        if len(workspace) > MAX_WORKSPACE_CHARS:
            raise InvalidArgument("workspace", f"at most {MAX_WORKSPACE_CHARS} characters")
        if len(files) > MAX_CANDIDATES:
            raise InvalidArgument("files", f"at most {MAX_CANDIDATES} files, got {len(files)}")
        entries: list[tuple[str, str, str | None]] = []
        seen: dict[str, int] = {}
        for index, (path, sha, content) in enumerate(files):
            if not path or len(path) > 1024:
                raise InvalidArgument(f"files[{index}].path", "required, at most 1024 characters")
            if path in seen:
                raise InvalidArgument(f"files[{index}].path", f"duplicate of files[{seen[path]}].path")
            seen[path] = index
            sha = sha.lower()
            if content:
                actual = text_sha256(content)
                if sha and sha != actual:
                    raise InvalidArgument(f"files[{index}].content_sha256", "does not match the content")
                entries.append((path, actual, content))
            elif len(sha) == 64 and set(sha) <= _SHA256_HEX:
                # The empty file's hash is always known: it is the empty content.
                entries.append((path, sha, "" if sha == EMPTY_TEXT_SHA256 else None))
            else:
                raise InvalidArgument(
                    f"files[{index}].content_sha256",
                    f"required (64 hex digits) without content; an empty file's is {EMPTY_TEXT_SHA256}",
                )
        change = self._workspaces.update(workspace, entries, replace)
        waiting = set(change.needs_content)
        fresh = [(path, content) for path, _sha, content in entries if content and path not in waiting]
        warming = self._warm_in_background(fresh)
        if warming is not None:
            self.last_warming = warming
        return change
