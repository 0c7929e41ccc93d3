"""One ``chat <model>`` CLIENT span per LLM call, with GenAI attributes and no content."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from autopack_builder.builder import Builder
from autopack_builder.calls import CallRunner
from autopack_builder.providers import AnthropicProvider, ProviderSet, ReplayProvider
from autopack_builder.routing import load_routing
from autopack_builder.service import task_from_request
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

SECRET_CONTENT = "def very_private_helper(): return 42\n"


def _chat_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name.startswith("chat ")]


def _assert_no_content(span: ReadableSpan) -> None:
    for value in (span.attributes or {}).values():
        text = str(value)
        assert "REQUIRED DELIVERABLES" not in text and "OUTPUT CONTRACT" not in text
        assert "very_private_helper" not in text and "slugify and truncate" not in text
        assert "sk-ant" not in text


@pytest.fixture
def recordings(write_recordings: Callable[..., Path], make_message, make_answer) -> Path:
    answer = make_answer([("examples/telemetry_utils/string_helper.py", "create", SECRET_CONTENT)])
    return write_recordings(
        [
            {
                "phase_id": "telemetry-p1-string-util",
                "response": make_message(answer, input_tokens=3669, output_tokens=820),
            }
        ]
    )


def test_replay_call_span_carries_genai_attributes(
    start_builder, build_request, span_exporter, recordings: Path
) -> None:
    stack = start_builder(ReplayProvider(recordings))

    stack.stub.Build(build_request(max_tokens=4096), timeout=10)

    [span] = _chat_spans(span_exporter)
    assert span.name == "chat claude-sonnet-4-6"
    assert span.kind == SpanKind.CLIENT
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "replay"
    assert attributes["gen_ai.request.model"] == "claude-sonnet-4-6"
    assert attributes["gen_ai.request.max_tokens"] == 4096
    assert attributes["gen_ai.usage.input_tokens"] == 3669
    assert attributes["gen_ai.usage.output_tokens"] == 820
    assert tuple(attributes["gen_ai.response.finish_reasons"]) == ("end_turn",)  # type: ignore[arg-type]
    assert attributes["gen_ai.response.model"] == "claude-sonnet-4-5-20250929"
    assert attributes["autopack.replay"] is True
    _assert_no_content(span)


def test_call_span_is_a_child_of_the_current_span(
    tracer_provider: TracerProvider, span_exporter, build_request, recordings: Path
) -> None:
    tracer = tracer_provider.get_tracer("test")
    runner = CallRunner(
        ProviderSet({"replay": ReplayProvider(recordings)}), load_routing(), None, tracer=tracer
    )
    builder = Builder(runner)

    with tracer.start_as_current_span("phase telemetry-p1-string-util") as parent:
        builder.build(task_from_request(build_request()))

    [span] = _chat_spans(span_exporter)
    assert span.parent is not None and span.parent.span_id == parent.get_span_context().span_id


def test_anthropic_spans_one_per_call_including_the_retry(
    start_builder, build_request, span_exporter, fake_anthropic, make_message, make_answer
) -> None:
    fake_anthropic.reply_messages(
        make_message('{"files": []}', output_tokens=41),
        make_message(make_answer([("examples/telemetry_utils/string_helper.py", "create", SECRET_CONTENT)])),
    )
    provider = AnthropicProvider(timeout_seconds=10)
    stack = start_builder(provider)

    stack.stub.Build(build_request(), timeout=10)

    spans = _chat_spans(span_exporter)
    assert [span.attributes["autopack.builder.call"] for span in spans] == [1, 2]  # type: ignore[index]
    for span in spans:
        assert span.attributes["gen_ai.provider.name"] == "anthropic"  # type: ignore[index]
        assert "autopack.replay" not in span.attributes  # type: ignore[operator]
        _assert_no_content(span)
    assert [span.attributes["gen_ai.usage.output_tokens"] for span in spans] == [41, 600]  # type: ignore[index]
    # the SDK's own spans are off, so its content mode can never put prompts into a trace
    assert provider._client.open_telemetry["traces"]["enabled"] is False


def test_failed_call_span_has_error_status(
    start_builder,
    build_request,
    span_exporter,
    fake_anthropic,
    scripted_reply,
    error_body: Callable[..., dict[str, Any]],
) -> None:
    fake_anthropic.script(
        scripted_reply(529, error_body("overloaded_error", "Overloaded"), {"retry-after-ms": "5"})
    )
    stack = start_builder(AnthropicProvider(timeout_seconds=10))

    with pytest.raises(grpc.RpcError):
        stack.stub.Build(build_request(), timeout=10)

    spans = _chat_spans(span_exporter)
    assert len(spans) == 4  # one span per HTTP request: the retries are the builder's, not the SDK's
    for span in spans:
        assert span.status.status_code == StatusCode.ERROR
        assert span.attributes["error.type"] == "Unavailable"  # type: ignore[index]
        assert "gen_ai.usage.output_tokens" not in span.attributes  # type: ignore[operator]
