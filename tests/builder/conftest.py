"""Builder test kit: local Anthropic and OpenAI stand-ins (``fake_llm``) and a real gRPC server."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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

from tests.builder.fake_llm import (
    TEST_API_KEY,
    TEST_OPENAI_KEY,
    FakeAnthropic,
    FakeOpenAI,
    ScriptedReply,
    anthropic_error,
    completion_payload,
    message_payload,
)


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
def make_completion() -> Callable[..., dict[str, Any]]:
    return completion_payload


@pytest.fixture
def make_answer() -> Callable[..., str]:
    return files_answer


@pytest.fixture
def scripted_reply() -> type[ScriptedReply]:
    return ScriptedReply


@pytest.fixture
def error_body() -> Callable[[str, str], dict[str, Any]]:
    return anthropic_error


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
def fake_openai(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    """A Chat Completions stand-in, with OPENAI_API_KEY / OPENAI_BASE_URL pointing the SDK at it."""
    fake = FakeOpenAI()
    monkeypatch.setenv("OPENAI_API_KEY", TEST_OPENAI_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", f"{fake.base_url}/v1")
    for name in ("OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
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
