"""Shared by the end-to-end tests: a scripted Messages API server and a clean process environment.

The server speaks the Anthropic Messages wire format on 127.0.0.1, so the builder's real SDK
path runs unchanged. It answers per phase (the prompt's ``# Phase <id>`` header) and request
kind (build, the doctor's diagnosis, a re-plan) from a script, keeps every request, and can
hold a kind of request at a gate until the test opens it (to kill a process mid-phase).
"""

from __future__ import annotations

import json
import os
import re
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

API_KEY = "sk-ant-test-0000-not-a-real-key"
PHASE_HEADER = re.compile(r"# Phase ([\w.-]+)")


@dataclass
class Seen:
    kind: str  # build, diagnose or replan
    phase_id: str
    max_tokens: int
    text: str


@dataclass
class ScriptedModel:
    """Answers from ``script[(phase_id, kind)]`` in order (the last answer repeats)."""

    script: dict[tuple[str, str], list[dict[str, Any]]]
    gates: dict[tuple[str, str], threading.Event] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    counts: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    arrived: threading.Condition = field(default_factory=threading.Condition)
    base_url: str = ""

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        system = body.get("system", "")
        if isinstance(system, list):
            system = " ".join(block.get("text", "") for block in system)
        user = " ".join(
            message["content"]
            if isinstance(message["content"], str)
            else " ".join(block.get("text", "") for block in message["content"])
            for message in body.get("messages", [])
        )
        kind = "diagnose" if "Doctor" in system else "replan" if "planner" in system else "build"
        match = PHASE_HEADER.search(user)
        key = (match.group(1) if match else "?", kind)
        with self.arrived:
            self.seen.append(Seen(kind, key[0], int(body.get("max_tokens", 0)), user))
            index = self.counts[key]
            self.counts[key] += 1
            self.arrived.notify_all()
        gate = self.gates.get(key)
        if gate is not None:
            gate.wait(120)
        replies = self.script.get(key) or [{"text": "{}"}]
        reply = replies[min(index, len(replies) - 1)]
        text = reply["text"]
        output_tokens, stop = max(len(text) // 4, 1), "end_turn"
        if reply.get("truncate"):
            output_tokens, stop = int(body["max_tokens"]), "max_tokens"
            text = text[: len(text) // 2]
        return {
            "id": f"msg_{uuid.uuid4().hex[:20]}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "claude-sonnet-4-6"),
            "content": [{"type": "text", "text": text}],
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": len(user) // 4 + len(system) // 4, "output_tokens": output_tokens},
        }

    def wait_for(self, phase_id: str, kind: str = "build", count: int = 1, timeout: float = 120) -> None:
        """Block until ``count`` requests of that phase and kind arrived."""
        with self.arrived:
            if not self.arrived.wait_for(lambda: self.counts[(phase_id, kind)] >= count, timeout):
                raise TimeoutError(f"no {kind} request for {phase_id} within {timeout}s")

    def requests(self, phase_id: str, kind: str = "build") -> list[Seen]:
        with self.arrived:
            return [seen for seen in self.seen if seen.phase_id == phase_id and seen.kind == kind]


def serve_scripted_model(model: ScriptedModel) -> ThreadingHTTPServer:
    """Serve ``model`` on 127.0.0.1 (port chosen by the OS); sets ``model.base_url``."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))) or b"{}")
            authorised = self.headers.get("x-api-key") == API_KEY or (
                self.headers.get("authorization") == f"Bearer {API_KEY}"
            )
            ok = self.path == "/v1/messages" and authorised
            reply = model.answer(body) if ok else {"type": "error", "error": {"type": "authentication_error"}}
            payload = json.dumps(reply).encode()
            try:
                self.send_response(200 if ok else 401)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except OSError:
                pass  # the caller died while the reply was held (a killed replica's builder call)

        def log_message(self, *_args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    model.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    return server


@pytest.fixture(scope="module")
def scripted_model() -> Iterator[Callable[..., ScriptedModel]]:
    """Start scripted Messages API servers (``start(script, gates)``); all stopped afterwards."""
    servers: list[ThreadingHTTPServer] = []

    def start(
        script: dict[tuple[str, str], list[dict[str, Any]]],
        gates: dict[tuple[str, str], threading.Event] | None = None,
    ) -> ScriptedModel:
        model = ScriptedModel(script, gates or {})
        servers.append(serve_scripted_model(model))
        return model

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def clean_environment() -> dict[str, str]:
    """This process's environment without provider keys, telemetry or Autopack settings."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ANTHROPIC_", "OPENAI_", "OTEL_", "AUTOPACK_", "DATABASE_URL", "QDRANT_"))
    }
