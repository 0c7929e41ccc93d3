"""Builder test kit: Messages API payloads, a local Anthropic stand-in, and a real gRPC server.

The stand-in speaks the Messages API wire format on 127.0.0.1 so the official SDK code path
(headers, retries, error classes, response parsing) runs for real without leaving the host.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from autopack.builder.v1 import builder_pb2, builder_pb2_grpc
from autopack.common.v1 import common_pb2
from autopack_builder.builder import Builder
from autopack_builder.calls import CallRunner
from autopack_builder.providers import Provider, ProviderSet
from autopack_builder.routing import RoutingTable, load_routing
from autopack_builder.service import SERVICE_FULL_NAME, BuilderServicer
from autopack_builder.store import LlmCallStore
from autopack_common.database import create_db_engine, upgrade_schema
from autopack_common.server import ServiceBinding, create_server
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

TEST_API_KEY = "sk-ant-test-0000-not-a-real-key"
RESPONSE_MODEL = "claude-sonnet-4-5-20250929"


def message_payload(
    text: str,
    *,
    stop_reason: str = "end_turn",
    input_tokens: int = 1500,
    output_tokens: int = 600,
    model: str = RESPONSE_MODEL,
) -> dict[str, Any]:
    """A Messages API response body as the API returns it."""
    return {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "service_tier": "standard",
        },
    }


def files_answer(files: list[tuple[str, str, str]], summary: str = "Added the helper.") -> str:
    """The JSON answer the output contract asks for: (path, mode, new_content) triples."""
    return json.dumps(
        {"summary": summary, "files": [{"path": p, "mode": m, "new_content": c} for p, m, c in files]},
        indent=1,
    )


@pytest.fixture
def make_message() -> Callable[..., dict[str, Any]]:
    return message_payload


@pytest.fixture
def make_answer() -> Callable[..., str]:
    return files_answer


@dataclass
class ScriptedReply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class SeenRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


def presented_key(seen: SeenRequest) -> str | None:
    """The API key of a request: the API takes ``x-api-key`` or, as SDK 2.x sends it, a Bearer token."""
    if "x-api-key" in seen.headers:
        return seen.headers["x-api-key"]
    authorization = seen.headers.get("authorization", "")
    return authorization.removeprefix("Bearer ") if authorization.startswith("Bearer ") else None


class FakeAnthropic:
    """A Messages API server: replies from a script (the last reply repeats) and keeps every request."""

    def __init__(self) -> None:
        self.requests: list[SeenRequest] = []
        self._script: list[ScriptedReply] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                seen = SeenRequest(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                reply = fake._reply_for(seen)
                payload = json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.send_header("request-id", "req_011CTestRequest")
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_args: object) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def script(self, *replies: ScriptedReply) -> None:
        with self._lock:
            self._script = list(replies)

    def reply_messages(self, *messages: dict[str, Any]) -> None:
        self.script(*(ScriptedReply(200, message) for message in messages))

    def _reply_for(self, seen: SeenRequest) -> ScriptedReply:
        with self._lock:
            self.requests.append(seen)
            if seen.path != "/v1/messages":
                return ScriptedReply(404, _error_body("not_found_error", f"no route {seen.path}"))
            if presented_key(seen) != TEST_API_KEY:
                return ScriptedReply(401, _error_body("authentication_error", "invalid x-api-key"))
            if not self._script:
                return ScriptedReply(500, _error_body("api_error", "nothing scripted"))
            return self._script.pop(0) if len(self._script) > 1 else self._script[0]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _error_body(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_011CTestRequest"}


@pytest.fixture
def scripted_reply() -> type[ScriptedReply]:
    return ScriptedReply


@pytest.fixture
def error_body() -> Callable[[str, str], dict[str, Any]]:
    return _error_body


@pytest.fixture
def fake_anthropic(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAnthropic]:
    """The stand-in, with ANTHROPIC_API_KEY / ANTHROPIC_BASE_URL pointing the SDK at it."""
    fake = FakeAnthropic()
    monkeypatch.setenv("ANTHROPIC_API_KEY", TEST_API_KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.base_url)
    for name in ("ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_PROFILE", "ANTHROPIC_OPEN_TELEMETRY"):
        monkeypatch.delenv(name, raising=False)
    yield fake
    fake.close()


@pytest.fixture
def span_exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(span_exporter: InMemorySpanExporter) -> TracerProvider:
    """A local provider: spans are inspected without touching the global tracing setup."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    return provider


@dataclass
class BuilderStack:
    """A builder behind a real gRPC server on port 0, its store, a stub and the backoffs it waited."""

    stub: builder_pb2_grpc.BuilderServiceStub
    store: LlmCallStore
    address: str
    sleeps: list[float]
    runner: CallRunner


@pytest.fixture
def start_builder(sqlite_url: str, tracer_provider: TracerProvider) -> Iterator[Callable[..., BuilderStack]]:
    """Start builders with given providers and the packaged routing table; all stopped afterwards.

    Backoff waits are recorded in ``sleeps`` instead of slept: the tests check what the builder
    would wait (retry-after honoured) without spending the time.
    """
    cleanups: list[Callable[[], None]] = []

    def start(
        *providers: Provider,
        database_url: str = sqlite_url,
        routing: RoutingTable | None = None,
        default_model: str = "",
        estimator: object | None = None,
    ) -> BuilderStack:
        engine = create_db_engine(database_url)
        upgrade_schema(engine, "autopack_builder.migrations", "alembic_version_builder")
        store = LlmCallStore(engine)
        sleeps: list[float] = []
        runner = CallRunner(
            ProviderSet({provider.name: provider for provider in providers}),
            routing or load_routing(),
            store,
            tracer=tracer_provider.get_tracer("test"),
            sleep=sleeps.append,
        )
        builder = Builder(runner, default_model=default_model, estimator=estimator)
        running = create_server(
            [
                ServiceBinding(
                    SERVICE_FULL_NAME,
                    builder_pb2_grpc.add_BuilderServiceServicer_to_server,
                    BuilderServicer(builder, routing_source="test"),
                )
            ],
            "127.0.0.1:0",
        )
        channel = grpc.insecure_channel(running.address)
        cleanups.extend(
            [engine.dispose, *(p.close for p in providers), lambda: running.stop(0), channel.close]
        )
        return BuilderStack(
            builder_pb2_grpc.BuilderServiceStub(channel), store, running.address, sleeps, runner
        )

    yield start
    for cleanup in reversed(cleanups):
        cleanup()


def _phase(**overrides: Any) -> common_pb2.PhaseSpec:
    fields: dict[str, Any] = {
        "phase_id": "telemetry-p1-string-util",
        "description": "Add a string helper module with slugify and truncate functions.",
        "category": "implementation",
        "complexity": "low",
        "deliverables": ["examples/telemetry_utils/string_helper.py"],
        "scope": common_pb2.Scope(paths=["examples/telemetry_utils/"], read_only_context=["README.md"]),
    }
    fields.update(overrides)
    return common_pb2.PhaseSpec(**fields)


@pytest.fixture
def build_request() -> Callable[..., builder_pb2.BuildRequest]:
    """A valid BuildRequest for the seed's telemetry phase; keyword overrides per field."""

    def make(phase: common_pb2.PhaseSpec | None = None, **overrides: Any) -> builder_pb2.BuildRequest:
        fields: dict[str, Any] = {
            "run_id": "run-1",
            "phase": phase if phase is not None else _phase(),
            "context_files": [common_pb2.ContextFile(path="README.md", content="# Telemetry utils\n")],
            "estimate_id": "est-1",
            "selected_budget": 8192,
            "max_tokens": 8192,
            "attempt": 1,
        }
        fields.update(overrides)
        return builder_pb2.BuildRequest(**fields)

    return make


@pytest.fixture
def phase_spec() -> Callable[..., common_pb2.PhaseSpec]:
    return _phase


@pytest.fixture
def write_recordings(tmp_path: Path) -> Callable[[list[dict[str, Any]]], Path]:
    """Write recording lines to <tmp>/recordings/calls.jsonl and return the directory."""

    def write(lines: list[dict[str, Any]], name: str = "calls.jsonl") -> Path:
        directory = tmp_path / "recordings"
        directory.mkdir(exist_ok=True)
        (directory / name).write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
        return directory

    return write
