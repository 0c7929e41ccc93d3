"""``python -m autopack_memory``: migrate the cache, load the model once, serve."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from autopack_common.bootstrap import run_service
from autopack_common.database import create_db_engine, upgrade_schema
from autopack_common.server import ServiceBinding
from sqlalchemy import Engine

from autopack_memory.drift import DriftDetector
from autopack_memory.embedding import CachingEmbedder, Embedder, LocalEmbedder, OpenAIEmbedder
from autopack_memory.memory import Memory
from autopack_memory.records import PeriodicPruner, ProjectMemory
from autopack_memory.selection import ContextSelector
from autopack_memory.service import MemoryServicer, memory_binding
from autopack_memory.settings import MemorySettings
from autopack_memory.store import EmbeddingCache, RecordStore, WorkspaceIndex
from autopack_memory.vectors import VectorStore

log = logging.getLogger("autopack_memory")


def load_embedder(settings: MemorySettings) -> Embedder | None:
    """The configured model, loaded and warmed now so no request pays for it."""
    if settings.embeddings == "none":
        log.info("embeddings disabled: lexical ranking and search only")
        return None
    started = time.perf_counter()
    embedder: Embedder
    if settings.embeddings == "openai":
        embedder = OpenAIEmbedder(settings.openai_model)
    else:
        local = LocalEmbedder(settings.model_path)
        local.warm()
        embedder = local
    log.info(
        "embedding model %s (%d dims) ready in %.1fs",
        embedder.model_name,
        embedder.dimension,
        time.perf_counter() - started,
    )
    return embedder


def build_memory(settings: MemorySettings, engine: Engine, embedder: Embedder | None) -> Memory:
    """Wire the domain: cache, workspace indexes and records on ``engine``, Qdrant from settings."""
    caching = CachingEmbedder(embedder, EmbeddingCache(engine)) if embedder else None
    api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
    vectors = VectorStore.open(url=settings.qdrant_url, api_key=api_key, path=settings.resolved_qdrant_path())
    selector = ContextSelector(
        caching, max_embeddings_per_call=settings.max_embeddings_per_call, chunk_chars=settings.chunk_chars
    )
    return Memory(
        caching,
        vectors,
        selector,
        workspaces=WorkspaceIndex(engine),
        records=ProjectMemory(RecordStore(engine), vectors, caching),
        drift=DriftDetector(
            vectors, caching, settings.drift_threshold, settings.drift_mode, settings.drift_lexical_threshold
        ),
    )


def build(settings: MemorySettings) -> tuple[Sequence[ServiceBinding], Sequence[Callable[[], None]]]:
    """Servicer and closers for ``run_service``: schema first, then model, then Qdrant.

    Expired project records are pruned at start-up and then every
    ``prune_interval_seconds`` (``Prune`` does it on demand), so a long-lived database does not
    grow with records nobody can recall any more.
    """
    engine = create_db_engine(settings.resolved_database_url("memory"))
    upgrade_schema(engine, "autopack_memory.migrations", "alembic_version_memory")
    memory = build_memory(settings, engine, load_embedder(settings))
    pruned = memory.records.prune()
    if pruned:
        log.info("pruned %d expired project record(s)", pruned)
    closers: list[Callable[[], None]] = [memory.close, engine.dispose]
    if settings.prune_interval_seconds > 0:
        pruner = PeriodicPruner(memory.records, settings.prune_interval_seconds)
        pruner.start()
        closers.insert(0, pruner.stop)
    return [memory_binding(MemoryServicer(memory))], closers


def main() -> None:
    settings = MemorySettings()
    run_service("memory", settings, lambda: build(settings))


if __name__ == "__main__":
    main()
