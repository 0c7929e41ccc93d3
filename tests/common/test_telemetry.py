"""Spans carry run and phase ids from baggage across a real gRPC hop; JSONL export."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
from autopack_common.server import ServiceBinding, create_server
from autopack_common.telemetry import (
    BaggageAttributesProcessor,
    JsonlSpanExporter,
    phase_baggage,
    traced_channel,
)
from opentelemetry import context, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


def test_baggage_and_trace_context_cross_a_grpc_call(tmp_path: Path) -> None:
    memory = InMemorySpanExporter()
    jsonl = tmp_path / "spans.jsonl"
    provider = TracerProvider(resource=Resource.create({"service.name": "autopack-test"}))
    provider.add_span_processor(BaggageAttributesProcessor())
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.add_span_processor(SimpleSpanProcessor(JsonlSpanExporter(jsonl)))
    tracer = provider.get_tracer("test")

    def handler(request: bytes, grpc_context: grpc.ServicerContext) -> bytes:
        with tracer.start_as_current_span("inner work"):
            return request

    generic = grpc.method_handlers_generic_handler(
        "test.Echo", {"Call": grpc.unary_unary_rpc_method_handler(handler)}
    )
    running = create_server(
        [
            ServiceBinding(
                "test.Echo", lambda servicer, server: server.add_generic_rpc_handlers((servicer,)), generic
            )
        ],
        tracer_provider=provider,
    )
    try:
        channel = traced_channel(running.address, tracer_provider=provider)
        token = context.attach(phase_baggage("run-1", "phase-1"))
        try:
            with tracer.start_as_current_span("phase phase-1"):
                channel.unary_unary("/test.Echo/Call")(b"x", timeout=5)
        finally:
            context.detach(token)
    finally:
        running.stop(2)
    # The SERVER span ends after the reply is on the wire: wait for it rather than race it.
    deadline = time.monotonic() + 5
    while len(memory.get_finished_spans()) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    spans = memory.get_finished_spans()
    names = {span.name for span in spans}
    assert names == {"phase phase-1", "inner work", "/test.Echo/Call"}
    assert len(spans) == 4, [(span.name, span.kind) for span in spans]  # CLIENT + SERVER for the call
    assert len({span.context.trace_id for span in spans}) == 1
    for span in spans:
        assert span.attributes["autopack.run_id"] == "run-1"
        assert span.attributes["autopack.phase_id"] == "phase-1"
    kinds = {span.kind for span in spans}
    assert {trace.SpanKind.CLIENT, trace.SpanKind.SERVER} <= kinds
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert {line["name"] for line in lines} == names
    assert all(line["resource"]["attributes"]["service.name"] == "autopack-test" for line in lines)
