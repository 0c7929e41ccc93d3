"""Build over a real gRPC channel through the official anthropic SDK, against a local Messages API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from autopack_builder.providers import AnthropicProvider
from autopack_common.errors import FailedPrecondition

DELIVERABLE = "examples/telemetry_utils/string_helper.py"
HELPER = "def truncate(text: str, limit: int) -> str:\n    return text[:limit]\n"


@pytest.fixture
def provider(fake_anthropic) -> AnthropicProvider:
    """The production provider class; key and base URL come from the environment, as in production."""
    return AnthropicProvider(timeout_seconds=10)


def _good(make_message, make_answer, **usage: Any) -> dict[str, Any]:
    return make_message(make_answer([(DELIVERABLE, "create", HELPER)]), **usage)


def test_request_wire_format_and_exact_usage(
    start_builder, build_request, provider, fake_anthropic, make_message, make_answer
) -> None:
    fake_anthropic.reply_messages(_good(make_message, make_answer, input_tokens=3669, output_tokens=1042))
    stack = start_builder(provider)

    response = stack.stub.Build(build_request(max_tokens=30000), timeout=15)

    [seen] = fake_anthropic.requests
    assert seen.path == "/v1/messages"
    # SDK 2.x sends the key as a Bearer token; the API also accepts x-api-key
    assert seen.headers.get("x-api-key", seen.headers.get("authorization")) in (
        "sk-ant-test-0000-not-a-real-key",
        "Bearer sk-ant-test-0000-not-a-real-key",
    )
    assert seen.headers["anthropic-version"]
    assert seen.body["model"] == "claude-sonnet-4-6"  # the builder's default model
    assert seen.body["max_tokens"] == 30000  # large budgets go out non-streaming with an explicit timeout
    assert "OUTPUT CONTRACT" in seen.body["system"]
    [message] = seen.body["messages"]
    assert message["role"] == "user"
    assert "REQUIRED DELIVERABLES" in message["content"]
    assert (
        "- examples/telemetry_utils/ (directory prefix - creating or modifying files under this path is ALLOWED)"
        in message["content"]
    )
    assert "# Telemetry utils" in message["content"]  # the context file

    assert [op.path for op in response.operations] == [DELIVERABLE]
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (
        3669,
        1042,
        4711,
    )
    assert (response.provider, response.model, response.stop_reason) == (
        "anthropic",
        "claude-sonnet-4-5-20250929",
        "end_turn",
    )
    [row] = stack.store.list_calls()
    assert (row.provider, row.input_tokens, row.output_tokens, row.total_tokens) == (
        "anthropic",
        3669,
        1042,
        4711,
    )


def test_requested_model_is_sent(
    start_builder, build_request, provider, fake_anthropic, make_message, make_answer
) -> None:
    fake_anthropic.reply_messages(_good(make_message, make_answer, model="claude-opus-4-1-20250805"))
    stack = start_builder(provider)

    response = stack.stub.Build(build_request(model="claude-opus-4-1"), timeout=15)

    assert fake_anthropic.requests[0].body["model"] == "claude-opus-4-1"
    assert response.model == "claude-opus-4-1-20250805"


def test_max_tokens_truncation_salvages_complete_files(
    start_builder, build_request, provider, fake_anthropic, make_message, make_answer
) -> None:
    full = make_answer(
        [(DELIVERABLE, "create", HELPER), ("examples/telemetry_utils/more.py", "create", "x = 1\n" * 50)]
    )
    cut = full[: full.index("x = 1") + 40]
    fake_anthropic.reply_messages(make_message(cut, stop_reason="max_tokens", output_tokens=2048))
    stack = start_builder(provider)

    response = stack.stub.Build(build_request(max_tokens=2048), timeout=15)

    # the same cut-off answer again: one continuation ("continue from" the cut file), then no
    # progress, so the complete operation is returned with truncated=true for the orchestrator
    assert response.truncated and response.stop_reason == "max_tokens"
    assert [op.path for op in response.operations] == [DELIVERABLE]
    assert response.continuations == 1
    first, second = fake_anthropic.requests
    assert first.body["max_tokens"] == 2048 and second.body["max_tokens"] == 3072  # local rule x1.5
    continuation = second.body["messages"][0]["content"]
    assert f"- {DELIVERABLE} (create)" in continuation and "do NOT emit them again" in continuation
    assert "Continue from file examples/telemetry_utils/more.py" in continuation
    assert "local rule (no estimator configured)" in (stack.store.list_calls()[1].note or "")


def test_empty_files_is_retried_exactly_once_with_stronger_emphasis(
    start_builder, build_request, provider, fake_anthropic, make_message, make_answer
) -> None:
    fake_anthropic.reply_messages(
        make_message('{"files": [], "summary": "No changes needed."}', output_tokens=41, input_tokens=3669),
        _good(make_message, make_answer, input_tokens=3720, output_tokens=900),
    )
    stack = start_builder(provider)

    response = stack.stub.Build(build_request(), timeout=15)

    assert len(fake_anthropic.requests) == 2
    first, retry = (r.body["messages"][0]["content"] for r in fake_anthropic.requests)
    assert "CRITICAL" not in first
    assert 'CRITICAL: your previous answer to this request had an EMPTY "files" array' in retry
    assert [op.path for op in response.operations] == [DELIVERABLE]
    assert [c.usage.output_tokens for c in response.calls] == [41, 900]
    assert (response.usage.input_tokens, response.usage.output_tokens) == (7389, 941)
    assert [row.call_index for row in stack.store.list_calls()] == [1, 2]


def test_persistent_empty_files_fails_after_exactly_one_retry(
    start_builder, build_request, provider, fake_anthropic, make_message
) -> None:
    fake_anthropic.reply_messages(make_message('```json\n{"files": []}\n```', output_tokens=41))
    stack = start_builder(provider)

    with pytest.raises(grpc.RpcError) as caught:
        stack.stub.Build(build_request(), timeout=15)

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "empty files array" in caught.value.details()
    assert len(fake_anthropic.requests) == 2
    assert len(stack.store.list_calls()) == 2


def test_unusable_output_fails_with_the_reason(
    start_builder, build_request, provider, fake_anthropic, make_message
) -> None:
    fake_anthropic.reply_messages(
        make_message('{"files": [{"path": "../../etc/cron.d/x", "mode": "create", "new_content": "x"}]}')
    )
    stack = start_builder(provider)

    with pytest.raises(grpc.RpcError) as caught:
        stack.stub.Build(build_request(), timeout=15)

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "files[0].path" in caught.value.details() and '".."' in caught.value.details()
    assert "0 complete operation(s) salvaged" in caught.value.details()
    # one re-ask in the fallback format (NDJSON), then the typed error
    assert len(fake_anthropic.requests) == 2
    assert "OUTPUT CONTRACT (NDJSON)" in fake_anthropic.requests[1].body["system"]
    rows = stack.store.list_calls()  # the tokens were spent, so the calls are accounted
    assert [(row.output_format, row.parse_outcome) for row in rows] == [
        ("full_file_json", "invalid:invalid_operation"),
        ("ndjson", "invalid:invalid_operation"),
    ]


@pytest.mark.parametrize(
    ("status", "kind", "code"),
    [
        (529, "overloaded_error", grpc.StatusCode.UNAVAILABLE),
        (500, "api_error", grpc.StatusCode.UNAVAILABLE),
        (429, "rate_limit_error", grpc.StatusCode.RESOURCE_EXHAUSTED),
    ],
)
def test_transient_errors_cost_four_requests_honouring_retry_after(
    start_builder,
    build_request,
    provider,
    fake_anthropic,
    error_body: Callable[..., dict[str, Any]],
    scripted_reply,
    status: int,
    kind: str,
    code: grpc.StatusCode,
) -> None:
    fake_anthropic.script(scripted_reply(status, error_body(kind, "try again"), {"retry-after-ms": "5"}))
    stack = start_builder(provider)

    with pytest.raises(grpc.RpcError) as caught:
        stack.stub.Build(build_request(), timeout=15)

    assert caught.value.code() == code
    assert str(status) in caught.value.details()
    # one layer owns retries (the SDK's are off): 4 requests, the provider's retry-after between them;
    # the fail-over model (gpt-5) has no provider configured here, so the error is the last 529/5xx/429
    assert len(fake_anthropic.requests) == 4
    assert stack.sleeps == [0.005, 0.005, 0.005]
    rows = stack.store.list_calls()
    assert [row.error is not None and str(status) in row.error for row in rows] == [True] * 4
    assert {row.total_tokens for row in rows} == {0}


def test_rejected_key_is_failed_precondition_without_leaking_it(
    start_builder, build_request, fake_anthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-wrong-key")
    stack = start_builder(AnthropicProvider(timeout_seconds=10))

    with pytest.raises(grpc.RpcError) as caught:
        stack.stub.Build(build_request(), timeout=15)

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "credentials" in caught.value.details()
    assert "sk-ant" not in caught.value.details()
    assert len(fake_anthropic.requests) == 1  # 401 is not retried


def test_unreachable_provider_is_unavailable(
    start_builder, build_request, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://127.0.0.1:{port}")
    stack = start_builder(AnthropicProvider(timeout_seconds=5))

    with pytest.raises(grpc.RpcError) as caught:
        stack.stub.Build(build_request(), timeout=15)

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_second_call_failure_keeps_the_first_calls_usage(
    start_builder,
    build_request,
    provider,
    fake_anthropic,
    make_message,
    error_body: Callable[..., dict[str, Any]],
    scripted_reply,
) -> None:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    fake_anthropic.script(
        scripted_reply(200, make_message('{"files": []}', output_tokens=41, input_tokens=3669)),
        scripted_reply(529, error_body("overloaded_error", "Overloaded"), {"retry-after-ms": "5"}),
    )
    stack = start_builder(provider)

    with pytest.raises(grpc.RpcError) as caught:
        stack.stub.Build(build_request(), timeout=15)

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    info = error_details_pb2.ErrorInfo()
    rpc_status.from_call(caught.value).details[0].Unpack(info)  # type: ignore[union-attr]
    assert info.reason == "PROVIDER_ERROR"
    assert (info.metadata["calls"], info.metadata["output_tokens"], info.metadata["total_tokens"]) == (
        "1",
        "41",
        "3710",
    )
    assert info.metadata["failed_requests"] == "4"  # the 529s: counted, never billed


def test_missing_credentials_is_failed_precondition(
    start_builder, build_request, fake_anthropic, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/anthropic profile either
    stack = start_builder(AnthropicProvider(timeout_seconds=5))

    with pytest.raises(grpc.RpcError) as caught:
        stack.stub.Build(build_request(), timeout=15)

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "ANTHROPIC_API_KEY" in caught.value.details()
    assert fake_anthropic.requests == []


def test_broken_credentials_configuration_fails_at_construction(
    fake_anthropic, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    monkeypatch.setenv("ANTHROPIC_CONFIG_DIR", str(tmp_path / "missing"))

    with pytest.raises(FailedPrecondition, match="credentials could not be loaded"):
        AnthropicProvider(timeout_seconds=5)


@pytest.mark.parametrize(
    ("status", "kind", "message", "field"),
    [
        (
            400,
            "invalid_request_error",
            "max_tokens: 200000 > 64000, the maximum for this model",
            "max_tokens",
        ),
        (404, "not_found_error", "model: claude-nope", "model"),
        (400, "invalid_request_error", "prompt is too long: 250000 tokens > 200000 maximum", "context_files"),
    ],
)
def test_rejected_requests_are_invalid_argument_naming_the_field(
    start_builder,
    build_request,
    provider,
    fake_anthropic,
    error_body,
    scripted_reply,
    status,
    kind,
    message,
    field,
) -> None:
    fake_anthropic.script(scripted_reply(status, error_body(kind, message)))
    stack = start_builder(provider)

    with pytest.raises(grpc.RpcError) as caught:
        stack.stub.Build(build_request(max_tokens=200000), timeout=15)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(f"{field}:")
    assert len(fake_anthropic.requests) == 1  # 4xx is not retried
    assert stack.store.list_calls() == []
