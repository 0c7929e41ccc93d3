"""``python -m autopack_builder`` as a real process: migrate, serve, build from replay, stop on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
from autopack.builder.v1 import builder_pb2_grpc
from autopack_common.clients import wait_until_serving

SECRET_CONTENT = "def very_private_helper(): return 42\n"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_process_serves_replay_and_stops_gracefully(
    tmp_path: Path, write_recordings: Callable[..., Path], make_message, make_answer, build_request
) -> None:
    answer = make_answer([("examples/telemetry_utils/string_helper.py", "create", SECRET_CONTENT)])
    recordings = write_recordings(
        [{"phase_id": "telemetry-p1-string-util", "response": make_message(answer)}]
    )
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "OTEL_"))}
    env |= {
        "AUTOPACK_BUILDER_ADDR": f"127.0.0.1:{port}",
        "AUTOPACK_REPLAY_DIR": str(recordings),
        "AUTOPACK_TRACE_DIR": str(tmp_path / "traces"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'builder.db'}",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "autopack_builder"], env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    try:
        wait_until_serving(
            f"127.0.0.1:{port}",
            "autopack.builder.v1.BuilderService",
            30,
            alive=lambda: process.poll() is None,
        )
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            response = builder_pb2_grpc.BuilderServiceStub(channel).Build(build_request(), timeout=10)
        assert response.provider == "replay"
        assert [op.path for op in response.operations] == ["examples/telemetry_utils/string_helper.py"]
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0

    logs = stderr.decode()
    assert "provider replay" in logs
    assert "very_private_helper" not in logs
    spans = [json.loads(line) for line in (tmp_path / "traces" / "builder.jsonl").read_text().splitlines()]
    [chat] = [span for span in spans if span["name"] == "chat claude-sonnet-4-6"]
    assert chat["attributes"]["autopack.replay"] is True
    assert chat["attributes"]["gen_ai.provider.name"] == "replay"
    [server] = [span for span in spans if span["name"].endswith("BuilderService/Build")]
    assert chat["parent_id"] == server["context"]["span_id"]
    assert "very_private_helper" not in json.dumps(spans)
