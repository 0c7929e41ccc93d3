"""``python -m autopack_memory`` as a real process: embedded defaults, start-up, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from autopack.memory.v1 import memory_pb2, memory_pb2_grpc
from autopack_common.clients import NotServing, wait_until_serving

SERVICE = "autopack.memory.v1.MemoryService"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_serving(address: str, process: subprocess.Popen, log: Path) -> None:  # type: ignore[type-arg]
    try:
        wait_until_serving(address, SERVICE, 90, alive=lambda: process.poll() is None)
    except NotServing as error:
        raise AssertionError(
            f"memory did not become SERVING ({process.poll()}):\n{log.read_text()}"
        ) from error


@pytest.mark.parametrize(
    ("embeddings", "mode"),
    [("none", memory_pb2.SELECTION_MODE_LEXICAL), ("local", memory_pb2.SELECTION_MODE_SEMANTIC)],
)
def test_the_service_process_starts_serves_and_stops_on_sigterm(
    tmp_path: Path, embeddings: str, mode: int
) -> None:
    address = f"127.0.0.1:{_free_port()}"
    data_dir = tmp_path / "data"
    env = {
        key: value
        for key, value in os.environ.items()
        if key
        not in ("DATABASE_URL", "QDRANT_URL", "AUTOPACK_MEMORY_QDRANT_PATH", "OTEL_EXPORTER_OTLP_ENDPOINT")
    }
    env.update(
        AUTOPACK_MEMORY_ADDR=address,
        AUTOPACK_DATA_DIR=str(data_dir),
        AUTOPACK_TRACE_DIR=str(tmp_path / "traces"),
        AUTOPACK_MEMORY_EMBEDDINGS=embeddings,
    )
    log = tmp_path / "memory.log"
    with log.open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "autopack_memory"], env=env, stderr=stderr)
    try:
        _wait_serving(address, process, log)
        with grpc.insecure_channel(address) as channel:
            stub = memory_pb2_grpc.MemoryServiceStub(channel)
            selection = stub.SelectContext(
                memory_pb2.SelectContextRequest(
                    query="parse CSV rows",
                    token_budget=1000,
                    candidates=[
                        memory_pb2.CandidateFile(path="logo.py", content="def draw_logo(): ..."),
                        memory_pb2.CandidateFile(
                            path="csv_reader.py", content="def parse_rows(csv_text): ..."
                        ),
                    ],
                ),
                timeout=30,
            )
            assert selection.mode == mode
            assert selection.kept[0].path == "csv_reader.py"

            upsert = memory_pb2.UpsertRequest(
                collection="run-1", items=[memory_pb2.MemoryItem(id="goal", text="import customer CSV files")]
            )
            assert stub.Upsert(upsert, timeout=30).upserted == 1
            hits = stub.Search(
                memory_pb2.SearchRequest(collection="run-1", query="CSV import"), timeout=30
            ).hits
            assert [hit.item.id for hit in hits] == ["goal"]

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert (data_dir / "qdrant").is_dir()
    with sqlite3.connect(data_dir / "memory.db") as database:
        cached = database.execute("SELECT count(*) FROM embedding_cache").fetchone()[0]
    assert cached == (0 if embeddings == "none" else 5)  # query + 2 files + 1 item + search query
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any(line["message"] == "stopped" for line in lines)
