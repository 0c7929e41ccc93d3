"""Workspace indexes: incremental by content hash, then SelectContext by reference."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from autopack_common.content import text_sha256
from autopack_common.database import create_db_engine, upgrade_schema
from autopack_common.errors import InvalidArgument, NotFound
from autopack_memory.memory import Memory
from autopack_memory.selection import Candidate, ContextSelector
from autopack_memory.store import WorkspaceIndex
from autopack_memory.vectors import VectorStore
from sqlalchemy import Engine

FILES = {
    "app/parser.py": "def parse_rows(text):\n    return text.splitlines()\n",
    "app/logo.py": "def draw_logo(canvas):\n    canvas.paint()\n",
    "README.md": "# App\nParses CSV rows.\n",
}


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_db_engine(database_url)
    upgrade_schema(engine, "autopack_memory.migrations", "alembic_version_memory")
    yield engine
    engine.dispose()


@pytest.fixture
def memory(engine: Engine, qdrant_path) -> Iterator[Memory]:  # type: ignore[no-untyped-def]
    vectors = VectorStore.open(path=qdrant_path)
    yield Memory(None, vectors, ContextSelector(None), workspaces=WorkspaceIndex(engine))
    vectors.close()


def _full(files: dict[str, str]) -> list[tuple[str, str, str]]:
    return [(path, "", text) for path, text in files.items()]


def test_indexing_is_incremental_by_content_hash(memory: Memory) -> None:
    first = memory.index_workspace("ws-1", _full(FILES))
    assert (first.files, first.updated, first.unchanged, first.removed, first.needs_content) == (
        3,
        3,
        0,
        0,
        [],
    )

    # The next call sends hashes only for unchanged files and content for the changed one.
    edited = FILES["app/logo.py"] + "# edited\n"
    entries = [(p, text_sha256(t), "") for p, t in FILES.items() if p != "app/logo.py"]
    second = memory.index_workspace("ws-1", [*entries, ("app/logo.py", "", edited)])
    assert (second.updated, second.unchanged) == (1, 2)

    # Another workspace of the same repository needs no content it already has...
    other = memory.index_workspace("ws-2", [(p, text_sha256(t), "") for p, t in FILES.items()])
    assert (other.updated, other.needs_content) == (3, [])
    # ...but content never seen must be sent.
    unknown = memory.index_workspace("ws-2", [("new.py", text_sha256("print(1)\n"), "")])
    assert unknown.needs_content == ["new.py"] and unknown.files == 3

    replaced = memory.index_workspace(
        "ws-2", [("README.md", text_sha256(FILES["README.md"]), "")], replace=True
    )
    assert (replaced.files, replaced.removed, replaced.unchanged) == (1, 2, 1)


def test_select_context_by_reference_equals_sending_the_files(memory: Memory) -> None:
    memory.index_workspace("ws", _full(FILES))
    by_reference = memory.select_context(
        "parse CSV rows", [], 1000, workspace="ws", pinned_paths=["app/logo.py"], scope_paths=["app"]
    )
    candidates = [Candidate(p, t, pinned=p == "app/logo.py") for p, t in FILES.items()]
    sent = memory.select_context("parse CSV rows", candidates, 1000, scope_paths=["app"])
    assert by_reference.kept == sent.kept
    assert by_reference.kept[0].reason == "pinned"
    assert by_reference.kept[1].path == "app/parser.py"


def test_bad_index_and_reference_requests_name_the_field_and_change_nothing(memory: Memory) -> None:
    memory.index_workspace("ws", _full(FILES))
    bad = [
        (lambda: memory.index_workspace("", _full(FILES)), "workspace"),
        (lambda: memory.index_workspace("ws", [("a.py", "", "x"), ("a.py", "", "y")]), "files[1].path"),
        (
            lambda: memory.index_workspace("ws", [("a.py", "", "x"), ("b.py", "zz", "")]),
            "files[1].content_sha256",
        ),
        (
            lambda: memory.index_workspace("ws", [("a.py", text_sha256("other"), "x")]),
            "files[0].content_sha256",
        ),
        (lambda: memory.select_context("q", [Candidate("a.py", "x")], 10, workspace="ws"), "candidates"),
        (lambda: memory.select_context("q", [], 10, max_summaries=-2), "max_summaries"),
        (lambda: memory.select_context("q", [], 10, summary_budget_percent=51), "summary_budget_percent"),
    ]
    for call, field in bad:
        with pytest.raises(InvalidArgument) as raised:
            call()
        assert raised.value.field == field
    unchanged = memory.index_workspace("ws", [(p, text_sha256(t), "") for p, t in FILES.items()])
    assert (unchanged.files, unchanged.unchanged, unchanged.updated) == (3, 3, 0)
    with pytest.raises(NotFound):
        memory.select_context("q", [], 10, workspace="never-indexed")


def test_indexing_warms_the_file_cards_so_the_first_selection_only_embeds_its_query(
    engine: Engine, qdrant_path, hashing_embedder
) -> None:  # type: ignore[no-untyped-def]
    from autopack_memory.embedding import CachingEmbedder
    from autopack_memory.store import EmbeddingCache

    caching = CachingEmbedder(hashing_embedder, EmbeddingCache(engine))
    vectors = VectorStore.open(path=qdrant_path)
    memory = Memory(caching, vectors, ContextSelector(caching), workspaces=WorkspaceIndex(engine))
    try:
        memory.index_workspace("ws", _full(FILES))
        assert memory.last_warming is not None
        assert memory.last_warming.result(timeout=30) == len(FILES)

        selection = memory.select_context("parse CSV rows", [], 1000, workspace="ws")
        assert (selection.embeddings_computed, selection.embedding_cache_hits) == (1, len(FILES))
        # The same files sent as candidates rank identically: warming changes cost, not results.
        sent = ContextSelector(caching).select(
            "parse CSV rows", [Candidate(p, t) for p, t in FILES.items()], 1000
        )
        assert [(f.path, f.score) for f in sent.kept] == [(f.path, f.score) for f in selection.kept]
    finally:
        memory.close()
