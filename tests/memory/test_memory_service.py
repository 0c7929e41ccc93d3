"""MemoryService over a real gRPC channel, with the real model, SQLite cache and local Qdrant."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from autopack.memory.v1 import memory_pb2, memory_pb2_grpc
from autopack_common.clients import open_channel
from autopack_common.content import EMPTY_TEXT_SHA256
from autopack_common.database import create_db_engine
from autopack_common.server import RunningServer, create_server
from autopack_memory.__main__ import build_memory
from autopack_memory.service import MemoryServicer, memory_binding
from autopack_memory.settings import MemorySettings
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVICE = "autopack.memory.v1.MemoryService"
TIMEOUT = 30


@pytest.fixture
def server(minilm, sqlite_url, tmp_path, span_exporter) -> Iterator[RunningServer]:  # type: ignore[no-untyped-def]
    from autopack_common.database import upgrade_schema

    settings = MemorySettings(database_url=sqlite_url, qdrant_path=tmp_path / "qdrant")
    engine = create_db_engine(settings.resolved_database_url("memory"))
    upgrade_schema(engine, "autopack_memory.migrations", "alembic_version_memory")
    memory = build_memory(settings, engine, minilm.embedder)
    running = create_server([memory_binding(MemoryServicer(memory))], "127.0.0.1:0")
    yield running
    running.stop(0)
    memory.close()
    engine.dispose()


@pytest.fixture
def stub(server: RunningServer) -> Iterator[memory_pb2_grpc.MemoryServiceStub]:
    channel = open_channel("memory", server.address)
    yield memory_pb2_grpc.MemoryServiceStub(channel)
    channel.close()


def _items(*pairs: tuple[str, str, dict[str, str]]) -> list[memory_pb2.MemoryItem]:
    return [memory_pb2.MemoryItem(id=i, text=t, metadata=m) for i, t, m in pairs]


INTENTION = (
    "intention",
    "Build a command-line tool that imports customer CSV exports into PostgreSQL",
    {"kind": "intention", "run_id": "run-1"},
)
SUMMARY = (
    "phase-1",
    "Phase 1 drew the product logo for the landing page",
    {"kind": "summary", "run_id": "run-1"},
)


def _invalid(call: object, request: object, field: str) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=TIMEOUT)  # type: ignore[operator]
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith(f"{field}: ")


def test_health_reports_the_memory_service_serving(server: RunningServer) -> None:
    with grpc.insecure_channel(server.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_upsert_then_search_with_and_without_filter(stub) -> None:  # type: ignore[no-untyped-def]
    reply = stub.Upsert(
        memory_pb2.UpsertRequest(collection="run-1.planning", items=_items(INTENTION, SUMMARY)),
        timeout=TIMEOUT,
    )
    assert (reply.upserted, reply.embedding_model) == (2, "sentence-transformers/all-MiniLM-L6-v2")

    hits = stub.Search(
        memory_pb2.SearchRequest(
            collection="run-1.planning", query="load client spreadsheets into a database"
        ),
        timeout=TIMEOUT,
    ).hits
    assert [hit.item.id for hit in hits] == ["intention", "phase-1"]
    assert hits[0].item.text == INTENTION[1] and dict(hits[0].item.metadata) == INTENTION[2]
    assert 1.0 >= hits[0].score > hits[1].score >= -1.0

    only = stub.Search(
        memory_pb2.SearchRequest(
            collection="run-1.planning", query="project", limit=10, filter={"kind": "summary"}
        ),
        timeout=TIMEOUT,
    ).hits
    assert [hit.item.id for hit in only] == ["phase-1"]


def test_search_on_a_missing_collection_has_no_hits(stub) -> None:  # type: ignore[no-untyped-def]
    reply = stub.Search(
        memory_pb2.SearchRequest(collection="nobody-wrote-here", query="anything"), timeout=TIMEOUT
    )
    assert list(reply.hits) == []


def test_bad_upserts_name_the_field_and_store_nothing(stub) -> None:  # type: ignore[no-untyped-def]
    good, missing_id = _items(INTENTION, ("", "text without id", {}))
    _invalid(
        stub.Upsert, memory_pb2.UpsertRequest(collection="notes", items=[good, missing_id]), "items[1].id"
    )
    _invalid(
        stub.Upsert,
        memory_pb2.UpsertRequest(collection="notes", items=_items(("a", "", {}))),
        "items[0].text",
    )
    _invalid(stub.Upsert, memory_pb2.UpsertRequest(collection="notes"), "items")
    _invalid(stub.Upsert, memory_pb2.UpsertRequest(collection="../escape", items=[good]), "collection")
    _invalid(stub.Upsert, memory_pb2.UpsertRequest(items=[good]), "collection")

    reply = stub.Search(memory_pb2.SearchRequest(collection="notes", query=INTENTION[1]), timeout=TIMEOUT)
    assert list(reply.hits) == []  # the valid first item was not stored either


def test_bad_searches_name_the_field(stub) -> None:  # type: ignore[no-untyped-def]
    _invalid(stub.Search, memory_pb2.SearchRequest(collection="notes"), "query")
    _invalid(stub.Search, memory_pb2.SearchRequest(collection="no spaces", query="q"), "collection")
    _invalid(stub.Search, memory_pb2.SearchRequest(collection="notes", query="q", limit=-1), "limit")
    _invalid(
        stub.Search, memory_pb2.SearchRequest(collection="notes", query="q", filter={"a.b": "c"}), "filter"
    )


def _candidates() -> list[memory_pb2.CandidateFile]:
    return [
        memory_pb2.CandidateFile(path="README.md", content="# Invoices\n" + "Usage notes.\n" * 40),
        memory_pb2.CandidateFile(
            path="src/csv_reader.py",
            content="import csv\n\ndef rows(path):\n    return list(csv.reader(open(path)))\n",
        ),
        memory_pb2.CandidateFile(
            path="src/logo_renderer.py",
            content="from PIL import Image\n\ndef logo():\n    return Image.new('RGB', (64, 64))\n",
        ),
        memory_pb2.CandidateFile(path="src/importer.py", content="def run():\n    pass\n", pinned=True),
    ]


def test_select_context_keeps_pinned_then_ranked_files_within_budget(stub, span_exporter) -> None:  # type: ignore[no-untyped-def]
    span_exporter.clear()
    request = memory_pb2.SelectContextRequest(
        run_id="run-7",
        phase_id="phase-3",
        query="parse CSV rows into records",
        candidates=_candidates(),
        token_budget=30,
    )
    reply = stub.SelectContext(request, timeout=TIMEOUT)

    assert reply.mode == memory_pb2.SELECTION_MODE_SEMANTIC
    assert [(f.path, f.reason) for f in reply.kept] == [
        ("src/importer.py", "pinned"),
        ("src/csv_reader.py", "ranked 1"),
    ]
    assert reply.used_tokens == sum(f.tokens for f in reply.kept) <= 30
    omitted = {f.path: f.reason for f in reply.omitted}
    assert omitted["README.md"].startswith("over budget (ranked")
    assert omitted["src/logo_renderer.py"].startswith("over budget (ranked")
    assert reply.kept[1].tokens == -(-len(_candidates()[1].content) // 4)

    span = _server_span(span_exporter, "SelectContext")
    attributes = dict(span.attributes)
    assert attributes["autopack.memory.mode"] == "semantic"
    assert attributes["autopack.memory.kept"] == 2
    assert attributes["autopack.memory.omitted"] == 2
    assert attributes["autopack.memory.used_tokens"] == reply.used_tokens
    assert attributes["autopack.run_id"] == "run-7" and attributes["autopack.phase_id"] == "phase-3"
    texts = [request.query, *(c.content for c in request.candidates)]
    assert not any(text in str(value) for value in attributes.values() for text in texts)


def test_search_span_counts_hits(stub, span_exporter) -> None:  # type: ignore[no-untyped-def]
    stub.Upsert(
        memory_pb2.UpsertRequest(collection="spans", items=_items(INTENTION, SUMMARY)), timeout=TIMEOUT
    )
    span_exporter.clear()
    stub.Search(memory_pb2.SearchRequest(collection="spans", query="customer CSV", limit=1), timeout=TIMEOUT)
    attributes = dict(_server_span(span_exporter, "Search").attributes)
    assert attributes["autopack.memory.hits"] == 1
    assert attributes["autopack.memory.mode"] == "semantic"
    assert not any("customer CSV" in str(value) for value in attributes.values())


def test_bad_selections_name_the_field(stub) -> None:  # type: ignore[no-untyped-def]
    _invalid(stub.SelectContext, memory_pb2.SelectContextRequest(token_budget=10), "query")
    _invalid(stub.SelectContext, memory_pb2.SelectContextRequest(query="q"), "token_budget")
    _invalid(stub.SelectContext, memory_pb2.SelectContextRequest(query="q", token_budget=-1), "token_budget")
    duplicate = [memory_pb2.CandidateFile(path="a.py"), memory_pb2.CandidateFile(path="a.py")]
    _invalid(
        stub.SelectContext,
        memory_pb2.SelectContextRequest(query="q", token_budget=10, candidates=duplicate),
        "candidates[1].path",
    )


def _server_span(exporter, method: str):  # type: ignore[no-untyped-def]
    """The server span of ``method``; it ends just after the reply is sent, so wait briefly."""
    name = f"/{SERVICE}/{method}"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for span in exporter.get_finished_spans():
            if span.name == name and span.kind.name == "SERVER":
                return span
        time.sleep(0.02)
    raise AssertionError(f"no server span {name}: {[s.name for s in exporter.get_finished_spans()]}")


def test_concurrent_calls_share_the_model_cache_and_store_safely(stub) -> None:  # type: ignore[no-untyped-def]
    from concurrent.futures import ThreadPoolExecutor

    def work(n: int) -> tuple[int, int]:
        upsert = memory_pb2.UpsertRequest(
            collection="busy",
            items=[memory_pb2.MemoryItem(id=f"item-{n}", text=f"note number {n} about CSV rows")],
        )
        stub.Upsert(upsert, timeout=TIMEOUT)
        selection = stub.SelectContext(
            memory_pb2.SelectContextRequest(
                query="parse CSV rows", candidates=_candidates(), token_budget=30
            ),
            timeout=TIMEOUT,
        )
        return selection.mode, len(selection.kept)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(work, range(16)))

    assert set(results) == {(memory_pb2.SELECTION_MODE_SEMANTIC, 2)}
    hits = stub.Search(
        memory_pb2.SearchRequest(collection="busy", query="note", limit=100), timeout=TIMEOUT
    ).hits
    assert sorted(hit.item.id for hit in hits) == sorted(f"item-{n}" for n in range(16))


def test_index_workspace_then_select_context_by_reference(stub) -> None:  # type: ignore[no-untyped-def]
    import hashlib

    big = '"""Long module."""\n' + "".join(
        f"def step_{n}(rows):\n    return rows[{n}:]\n\n" for n in range(400)
    )
    files = {
        "etl/csv_reader.py": "def read_rows(path):\n    '''Parse each CSV row.'''\n    return []\n",
        "etl/pipeline.py": big,
        "ui/logo.py": "def draw_logo():\n    pass\n",
    }
    first = stub.IndexWorkspace(
        memory_pb2.IndexWorkspaceRequest(
            workspace="ws-1",
            files=[memory_pb2.WorkspaceFile(path=p, content=t) for p, t in files.items()],
        ),
        timeout=TIMEOUT,
    )
    assert (first.files, first.updated) == (3, 3)
    again = stub.IndexWorkspace(
        memory_pb2.IndexWorkspaceRequest(
            workspace="ws-1",
            files=[
                memory_pb2.WorkspaceFile(path=p, content_sha256=hashlib.sha256(t.encode()).hexdigest())
                for p, t in files.items()
            ],
        ),
        timeout=TIMEOUT,
    )
    assert (again.unchanged, again.needs_content) == (3, [])

    reply = stub.SelectContext(
        memory_pb2.SelectContextRequest(
            query="parse CSV rows in the pipeline steps",
            workspace="ws-1",
            token_budget=400,
            summary_budget_percent=50,
        ),
        timeout=TIMEOUT,
    )
    assert reply.kept[0].path == "etl/csv_reader.py"
    assert [s.path for s in reply.summarized] == ["etl/pipeline.py"]
    assert reply.summarized[0].summary.startswith("# outline of etl/pipeline.py")
    assert reply.used_tokens <= 400
    with pytest.raises(grpc.RpcError) as missing:
        stub.SelectContext(
            memory_pb2.SelectContextRequest(query="q", workspace="nope", token_budget=10), timeout=TIMEOUT
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    _invalid(
        stub.IndexWorkspace,
        memory_pb2.IndexWorkspaceRequest(workspace="ws-1", files=[memory_pb2.WorkspaceFile(path="a.py")]),
        "files[0].content_sha256",
    )
    # An empty file (proto3 cannot tell empty content from none) is sent with the empty text's
    # hash; the refused request above changed nothing.
    empty = stub.IndexWorkspace(
        memory_pb2.IndexWorkspaceRequest(
            workspace="ws-1",
            files=[memory_pb2.WorkspaceFile(path="etl/__init__.py", content_sha256=EMPTY_TEXT_SHA256)],
        ),
        timeout=TIMEOUT,
    )
    assert (empty.files, empty.updated, empty.needs_content) == (4, 1, [])


def test_remember_recall_prune_across_runs(stub) -> None:  # type: ignore[no-untyped-def]
    record = memory_pb2.ProjectRecord(
        project="github.com/acme/shop",
        kind=memory_pb2.RECORD_KIND_ERROR_PATTERN,
        text="ModuleNotFoundError for shop.api: fixed by adding shop/__init__.py",
        run_id="run-1",
    )
    remembered = stub.Remember(memory_pb2.RememberRequest(record=record), timeout=TIMEOUT)
    assert remembered.indexed and len(remembered.id) == 32
    recalled = stub.Recall(
        memory_pb2.RecallRequest(project="github.com/acme/shop", query="ModuleNotFoundError shop.api"),
        timeout=TIMEOUT,
    )
    assert recalled.mode == memory_pb2.SELECTION_MODE_SEMANTIC
    assert [hit.record.id for hit in recalled.hits] == [remembered.id]
    assert recalled.hits[0].record.expires_at - recalled.hits[0].record.created_at == 30 * 24 * 3600
    assert stub.Prune(memory_pb2.PruneRequest(), timeout=TIMEOUT).deleted == 0
    _invalid(
        stub.Remember,
        memory_pb2.RememberRequest(record=memory_pb2.ProjectRecord(project="p", text="t")),
        "record.kind",
    )
    _invalid(
        stub.Recall,
        memory_pb2.RecallRequest(project="p", query="q", kinds=[memory_pb2.RECORD_KIND_UNSPECIFIED]),
        "kinds[0]",
    )


def test_check_drift_against_the_stored_intention(stub) -> None:  # type: ignore[no-untyped-def]
    stub.Upsert(
        memory_pb2.UpsertRequest(collection="intentions", items=_items(("run-7", *INTENTION[1:]))),
        timeout=TIMEOUT,
    )
    reply = stub.CheckDrift(
        memory_pb2.CheckDriftRequest(
            run_id="run-7", change_summary="Drew a new company logo for the website"
        ),
        timeout=TIMEOUT,
    )
    assert reply.verdict == memory_pb2.DRIFT_VERDICT_ADVISORY
    assert reply.similarity < reply.threshold == 0.5
    assert reply.intention == INTENTION[1]
    _invalid(stub.CheckDrift, memory_pb2.CheckDriftRequest(run_id="run-7"), "change_summary")
