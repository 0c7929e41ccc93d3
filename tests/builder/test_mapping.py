"""Usage totals: exact sums, a split left unset when any call did not report it, total always set."""

from __future__ import annotations

from autopack.common.v1 import common_pb2
from autopack_builder.models import BuildResult, FileOp, LlmCallRecord
from autopack_builder.service import response_from_result, usage_message


def _call(
    input_tokens: int | None, output_tokens: int | None, total: int, stop: str = "end_turn"
) -> LlmCallRecord:
    return LlmCallRecord("anthropic", "claude-sonnet-4-6", 4096, input_tokens, output_tokens, total, stop, 10)


def test_usage_sums_known_splits() -> None:
    usage = usage_message([_call(100, 41, 141), _call(120, 900, 1020)])

    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (220, 941, 1161)


def test_unknown_split_stays_unset_but_total_is_kept() -> None:
    usage = usage_message([_call(100, 41, 141), _call(None, None, 5000)])

    assert not usage.HasField("input_tokens") and not usage.HasField("output_tokens")
    assert usage.total_tokens == 5141


def test_response_reports_the_final_call() -> None:
    result = BuildResult(
        operations=(FileOp("a.py", "create", "x"), FileOp("b.py", "delete")),
        calls=(_call(1, 2, 3), _call(4, 4096, 4100, "max_tokens")),
        summary="s",
    )

    response = response_from_result(result)

    assert [op.mode for op in response.operations] == [
        common_pb2.FILE_MODE_CREATE,
        common_pb2.FILE_MODE_DELETE,
    ]
    assert response.truncated and response.stop_reason == "max_tokens" and response.actual_max_tokens == 4096
    assert [c.usage.total_tokens for c in response.calls] == [3, 4100]
    assert response.usage.total_tokens == 4103
