"""Build over a real gRPC channel with the replay provider."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from autopack.common.v1 import common_pb2
from autopack_builder.providers import ReplayProvider
from google.rpc import error_details_pb2
from grpc_status import rpc_status

DELIVERABLE = "examples/telemetry_utils/string_helper.py"
HELPER = 'def slugify(text: str) -> str:\n    return "-".join(text.lower().split())\n'


def _answer(make_answer: Callable[..., str]) -> str:
    return make_answer(
        [
            (DELIVERABLE, "create", HELPER),
            ("examples/telemetry_utils/__init__.py", "create", '"""Telemetry utils."""\n'),
        ],
        summary="Added slugify in string_helper.",
    )


@pytest.fixture
def replay_dir(
    write_recordings: Callable[..., Path],
    make_message: Callable[..., dict[str, Any]],
    make_answer: Callable[..., str],
) -> Path:
    return write_recordings(
        [
            {
                "phase_id": "telemetry-p1-string-util",
                "attempt": 1,
                "response": make_message(_answer(make_answer), input_tokens=3669, output_tokens=820),
            },
            {
                "run_id": "run-1",
                "phase_id": "empty-phase",
                "attempt": 1,
                "response": make_message('{"files": [], "summary": "Nothing to do."}', output_tokens=41),
            },
        ]
    )


def test_build_returns_operations_usage_and_records_the_call(
    start_builder, build_request, replay_dir: Path
) -> None:
    stack = start_builder(ReplayProvider(replay_dir))

    response = stack.stub.Build(build_request(), timeout=10)

    assert [(op.path, op.mode) for op in response.operations] == [
        (DELIVERABLE, common_pb2.FILE_MODE_CREATE),
        ("examples/telemetry_utils/__init__.py", common_pb2.FILE_MODE_CREATE),
    ]
    assert response.operations[0].new_content == HELPER
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (
        3669,
        820,
        4489,
    )
    assert (response.provider, response.model, response.stop_reason) == (
        "replay",
        "claude-sonnet-4-5-20250929",
        "end_turn",
    )
    assert not response.truncated
    assert response.actual_max_tokens == 8192
    assert response.summary == "Added slugify in string_helper."
    assert len(response.calls) == 1
    assert response.calls[0].usage.output_tokens == 820 and response.calls[0].max_tokens == 8192

    [row] = stack.store.list_calls(run_id="run-1")
    assert (row.phase_id, row.attempt, row.estimate_id, row.provider) == (
        "telemetry-p1-string-util",
        1,
        "est-1",
        "replay",
    )
    assert (row.input_tokens, row.output_tokens, row.total_tokens, row.max_tokens) == (3669, 820, 4489, 8192)


def test_budget_below_the_recording_is_truncated_and_salvaged(
    start_builder, build_request, replay_dir: Path
) -> None:
    stack = start_builder(ReplayProvider(replay_dir))

    response = stack.stub.Build(build_request(max_tokens=700), timeout=10)

    # cut at 700 of 820 tokens: the complete file is kept, the continuation (700 x 1.5 = 1050)
    # gets the whole recording, and only the file not kept yet is taken from it
    assert not response.truncated and response.continuations == 1
    assert response.actual_max_tokens == 1050
    assert response.usage.output_tokens == 700 + 820
    assert [op.path for op in response.operations] == [DELIVERABLE, "examples/telemetry_utils/__init__.py"]
    rows = stack.store.list_calls()
    assert [(c.stop_reason, c.parse_outcome) for c in rows] == [
        ("max_tokens", "salvaged"),
        ("end_turn", "ok"),
    ]


def test_empty_files_is_retried_once_then_fails_with_usage_in_the_status(
    start_builder, build_request, phase_spec, replay_dir: Path
) -> None:
    stack = start_builder(ReplayProvider(replay_dir))

    with pytest.raises(grpc.RpcError) as caught:
        stack.stub.Build(build_request(phase=phase_spec(phase_id="empty-phase")), timeout=10)

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "empty files array" in caught.value.details()
    status = rpc_status.from_call(caught.value)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.domain) == ("EMPTY_FILES", "builder.autopack")
    assert dict(info.metadata) == {
        "provider": "replay",
        "model": "claude-sonnet-4-5-20250929",
        "stop_reason": "end_turn",
        "calls": "2",
        "input_tokens": "3000",
        "output_tokens": "82",
        "total_tokens": "3082",
        "actual_max_tokens": "8192",
        "failed_requests": "0",
        "call_ids": "1,2",
    }
    assert [c.call_index for c in stack.store.list_calls(phase_id="empty-phase")] == [1, 2]


def test_missing_recording_names_the_phase_and_records_nothing(
    start_builder, build_request, phase_spec, replay_dir: Path
) -> None:
    stack = start_builder(ReplayProvider(replay_dir))

    with pytest.raises(grpc.RpcError) as caught:
        stack.stub.Build(build_request(phase=phase_spec(phase_id="never-recorded")), timeout=10)

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "'never-recorded'" in caught.value.details()
    assert stack.store.list_calls() == []


def _invalid_cases() -> list[tuple[dict[str, Any], str]]:
    return [
        ({"phase": None}, "phase:"),
        ({"phase_id": ""}, "phase.phase_id"),
        ({"description": "  "}, "phase.description"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"attempt": -1}, "attempt"),
        ({"selected_budget": -1}, "selected_budget"),
        ({"deliverables": ["ok.py", "../escape.py"]}, "phase.deliverables[1]"),
        ({"deliverables": ["pkg/"]}, "phase.deliverables[0]"),
        ({"scope_paths": ["/abs/"]}, "phase.scope.paths[0]"),
        ({"read_only": ["a\\b"]}, "phase.scope.read_only_context[0]"),
        ({"context_path": "../secret"}, "context_files[0].path"),
        ({"intention_context": "x" * 2049}, "intention_context"),
    ]


@pytest.mark.parametrize(("change", "field"), _invalid_cases())
def test_bad_input_is_invalid_argument_naming_the_field_and_nothing_is_called(
    start_builder, build_request, phase_spec, replay_dir: Path, change: dict[str, Any], field: str
) -> None:
    stack = start_builder(ReplayProvider(replay_dir))
    phase_fields: dict[str, Any] = {}
    request_fields: dict[str, Any] = {}
    for key, value in change.items():
        if key in ("phase_id", "description", "deliverables"):
            phase_fields[key] = value
        elif key == "scope_paths":
            phase_fields["scope"] = common_pb2.Scope(paths=value)
        elif key == "read_only":
            phase_fields["scope"] = common_pb2.Scope(paths=["src/"], read_only_context=value)
        elif key == "context_path":
            request_fields["context_files"] = [common_pb2.ContextFile(path=value, content="x")]
        elif key != "phase":
            request_fields[key] = value
    request = build_request(phase=phase_spec(**phase_fields), **request_fields)
    if "phase" in change:
        request.ClearField("phase")

    with pytest.raises(grpc.RpcError) as caught:
        stack.stub.Build(request, timeout=10)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(field)
    assert stack.store.list_calls() == []
