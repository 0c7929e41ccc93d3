"""Build through the official openai SDK against a local Chat Completions server (JSON and streaming)."""

from __future__ import annotations

import grpc
import pytest
from autopack_builder.providers import OpenAIProvider

from tests.builder.fake_llm import ScriptedReply, openai_error

DELIVERABLE = "examples/telemetry_utils/string_helper.py"
HELPER = "def truncate(text: str, limit: int) -> str:\n    return text[:limit]\n"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_openai_build_accounts_cached_and_reasoning_tokens_and_cost(
    start_builder, build_request, fake_openai, make_completion, make_answer, stream: bool
) -> None:
    fake_openai.reply_completions(
        make_completion(
            make_answer([(DELIVERABLE, "create", HELPER)]),
            prompt_tokens=2000,
            completion_tokens=800,
            cached_tokens=1500,
            reasoning_tokens=300,
        )
    )
    stack = start_builder(OpenAIProvider(timeout_seconds=10, stream=stream))

    response = stack.stub.Build(build_request(model="gpt-5"), timeout=15)

    [seen] = fake_openai.requests
    assert seen.path == "/v1/chat/completions" and seen.body["model"] == "gpt-5"
    assert seen.body["max_completion_tokens"] == 8192
    assert [m["role"] for m in seen.body["messages"]] == ["system", "user"]
    assert "OUTPUT CONTRACT" in seen.body["messages"][0]["content"]
    if stream:
        assert seen.body["stream_options"] == {"include_usage": True}
    assert [op.path for op in response.operations] == [DELIVERABLE]
    usage = response.usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (2000, 800, 2800)
    assert (usage.cache_read_input_tokens, usage.reasoning_output_tokens) == (1500, 300)
    [call] = response.calls
    # gpt-5 per million: OpenAI counts the 1500 cached tokens inside the 2000 prompt tokens,
    # so 500 are priced as input (1.25) and 1500 as cache reads (0.125), plus 800 output (10)
    assert call.cost_usd == pytest.approx((500 * 1.25 + 800 * 10 + 1500 * 0.125) / 1e6)
    [row] = stack.store.list_calls()
    assert (row.provider, row.cache_read_input_tokens, row.reasoning_output_tokens) == ("openai", 1500, 300)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_openai_length_finish_is_a_cut_off_that_continues(
    start_builder, build_request, fake_openai, make_completion, make_answer, stream: bool
) -> None:
    full = make_answer(
        [(DELIVERABLE, "create", HELPER), ("examples/telemetry_utils/more.py", "create", "y\n")]
    )
    cut = full[: full.index("more.py") + 20]
    rest = make_answer([("examples/telemetry_utils/more.py", "create", "y\n")])
    fake_openai.reply_completions(
        make_completion(cut, finish_reason="length", completion_tokens=1000), make_completion(rest)
    )
    stack = start_builder(OpenAIProvider(timeout_seconds=10, stream=stream))

    response = stack.stub.Build(build_request(model="gpt-5", max_tokens=1000), timeout=15)

    assert response.continuations == 1 and not response.truncated
    assert [call.stop_reason for call in response.calls] == ["length", "stop"]
    assert [op.path for op in response.operations] == [DELIVERABLE, "examples/telemetry_utils/more.py"]
    assert "Continue from file examples/telemetry_utils/more.py" in fake_openai.requests[1].prompt


@pytest.mark.parametrize(
    ("status", "kind", "message", "code", "requests"),
    [
        (401, "invalid_api_key", "Incorrect API key", grpc.StatusCode.FAILED_PRECONDITION, 1),
        (
            400,
            "invalid_request_error",
            "max_completion_tokens is too large",
            grpc.StatusCode.INVALID_ARGUMENT,
            1,
        ),
        (500, "server_error", "boom", grpc.StatusCode.UNAVAILABLE, 4),
        (429, "rate_limit_exceeded", "slow down", grpc.StatusCode.RESOURCE_EXHAUSTED, 4),
    ],
)
def test_openai_errors_map_to_statuses(
    start_builder, build_request, fake_openai, status, kind, message, code, requests
) -> None:
    fake_openai.script(ScriptedReply(status, openai_error(kind, message), {"retry-after-ms": "1"}))
    stack = start_builder(OpenAIProvider(timeout_seconds=10))

    with pytest.raises(grpc.RpcError) as caught:
        stack.stub.Build(build_request(model="gpt-5"), timeout=15)

    assert caught.value.code() == code
    assert len(fake_openai.requests) == requests
    assert "sk-test" not in caught.value.details()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(
    ("text", "reason"),
    [("", "EMPTY_FILES"), ("Happy to help! Which file should I change?", "NO_JSON")],
    ids=["empty", "prose"],
)
def test_openai_empty_and_prose_answers_are_typed_errors(
    start_builder, build_request, fake_openai, make_completion, text, reason, stream: bool
) -> None:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    fake_openai.reply_completions(make_completion(text, completion_tokens=12))
    stack = start_builder(OpenAIProvider(timeout_seconds=10, stream=stream))

    with pytest.raises(grpc.RpcError) as caught:
        stack.stub.Build(build_request(model="gpt-5"), timeout=15)

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_details_pb2.ErrorInfo()
    rpc_status.from_call(caught.value).details[0].Unpack(info)  # type: ignore[union-attr]
    assert info.reason == reason and int(info.metadata["output_tokens"]) == 12 * int(info.metadata["calls"])
