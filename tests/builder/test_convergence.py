"""The issue's "done when": cut-off phases converge, a persistent 529 fails over, malformed output is typed.

Everything runs through the real anthropic and openai SDKs (streaming and not) against the
local wire-format servers, over a real gRPC channel.
"""

from __future__ import annotations

import json
import re
from typing import Any

import grpc
import pytest
from autopack.common.v1 import common_pb2
from autopack_builder.escalation import EstimatorBudget
from autopack_builder.providers import AnthropicProvider, OpenAIProvider
from autopack_common.server import create_server
from autopack_estimator.service import open_servicer, service_binding
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.builder.fake_llm import ScriptedReply, SeenRequest, anthropic_error, message_payload

DIR = "examples/telemetry_utils/"
FILES = [
    (f"{DIR}a.py", "A = 1\n" * 40),
    (f"{DIR}b.py", "B = 2\n" * 40),
    (f"{DIR}c.py", "C = 3\n" * 40),
]


def _answer(files: list[tuple[str, str]]) -> str:
    return json.dumps(
        {
            "summary": "Three modules.",
            "files": [{"path": p, "mode": "create", "new_content": c} for p, c in files],
        },
        indent=1,
    )


def _cut_inside(text: str, path: str) -> str:
    """The answer cut in the middle of ``path``'s content."""
    start = text.index(f'"path": "{path}"')
    return text[: start + 80]


def _continue_from(seen: SeenRequest) -> str | None:
    match = re.search(r"Continue from file (\S+):", seen.prompt)
    return match.group(1) if match else None


def _twice_cut(seen: SeenRequest) -> ScriptedReply:
    """First answer cut inside b.py, the continuation cut inside c.py, the second one finishes."""
    resume = _continue_from(seen)
    if resume is None:
        return ScriptedReply(
            200,
            message_payload(
                _cut_inside(_answer(FILES), FILES[1][0]),
                stop_reason="max_tokens",
                output_tokens=seen.body["max_tokens"],
            ),
        )
    if resume == FILES[1][0]:
        rest = _answer(FILES[1:])
        return ScriptedReply(
            200,
            message_payload(
                _cut_inside(rest, FILES[2][0]),
                stop_reason="max_tokens",
                output_tokens=seen.body["max_tokens"],
            ),
        )
    return ScriptedReply(200, message_payload(_answer(FILES[2:]), output_tokens=300))


def _phase(**overrides: Any) -> common_pb2.PhaseSpec:
    fields: dict[str, Any] = {
        "phase_id": "p-three-modules",
        "description": "Add three modules a, b and c.",
        "deliverables": [path for path, _ in FILES],
        "scope": common_pb2.Scope(paths=[DIR]),
        "validation_command": ["python", "-m", "pytest", "-q"],
    }
    fields.update(overrides)
    return common_pb2.PhaseSpec(**fields)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_phase_cut_mid_file_twice_completes_through_continuation(
    start_builder, build_request, fake_anthropic, stream: bool
) -> None:
    fake_anthropic.respond_with(_twice_cut)
    stack = start_builder(AnthropicProvider(timeout_seconds=10, stream=stream))

    response = stack.stub.Build(build_request(phase=_phase(), max_tokens=1000), timeout=30)

    assert not response.truncated and response.continuations == 2
    assert [(op.path, op.new_content) for op in response.operations] == FILES
    first, second, third = fake_anthropic.requests
    assert [r.body["max_tokens"] for r in (first, second, third)] == [1000, 1500, 2250]  # local rule x1.5
    assert "`python -m pytest -q`" in first.prompt  # the validation command is in the prompt
    # never re-emit finished files: each continuation lists what is kept and where to resume
    assert f"- {FILES[0][0]} (create)" in second.prompt and _continue_from(second) == FILES[1][0]
    assert f"- {FILES[1][0]} (create)" in third.prompt and _continue_from(third) == FILES[2][0]
    assert response.usage.output_tokens == 1000 + 1500 + 300
    rows = stack.store.list_calls()
    assert [row.parse_outcome for row in rows] == ["salvaged", "salvaged", "ok"]
    assert [row.salvaged_operations for row in rows] == [1, 1, None]
    assert "continuation 1 from examples/telemetry_utils/b.py" in (rows[1].note or "")
    assert "local rule (no estimator configured)" in (rows[1].note or "")


def test_continuation_budget_comes_from_the_estimator(
    start_builder, build_request, fake_anthropic, sqlite_url: str, tmp_path
) -> None:
    from autopack.estimator.v1 import estimator_pb2, estimator_pb2_grpc

    servicer, engine = open_servicer(f"sqlite:///{tmp_path / 'estimator.db'}")
    estimator = create_server([service_binding(servicer)], "127.0.0.1:0")
    budgets = EstimatorBudget(estimator.address)
    try:
        channel = grpc.insecure_channel(estimator.address)
        estimate = estimator_pb2_grpc.EstimatorServiceStub(channel).Estimate(
            estimator_pb2.EstimateRequest(
                run_id="run-1",
                phase_id="p-three-modules",
                description="Add three modules a, b and c.",
                deliverables=[path for path, _ in FILES],
                model="claude-sonnet-4-6",
            ),
            timeout=10,
        )
        channel.close()
        fake_anthropic.respond_with(_twice_cut)
        stack = start_builder(AnthropicProvider(timeout_seconds=10), estimator=budgets)

        response = stack.stub.Build(
            build_request(phase=_phase(), max_tokens=1000, estimate_id=estimate.estimate_id), timeout=30
        )

        assert response.continuations == 2 and len(response.operations) == 3
        notes = [row.note or "" for row in stack.store.list_calls()]
        assert all("from estimator Escalate" in note for note in notes[1:]), notes
        budgets_sent = [r.body["max_tokens"] for r in fake_anthropic.requests]
        assert budgets_sent[0] == 1000 and all(b > 0 for b in budgets_sent[1:])
    finally:
        budgets.close()
        estimator.stop(0)
        servicer.close()
        engine.dispose()


def test_unreachable_estimator_falls_back_to_the_local_rule_and_says_so(
    start_builder, build_request, fake_anthropic
) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    budgets = EstimatorBudget(address, grpc.insecure_channel(address))  # no channel retries: fail fast
    fake_anthropic.respond_with(_twice_cut)
    stack = start_builder(AnthropicProvider(timeout_seconds=10), estimator=budgets)

    response = stack.stub.Build(
        build_request(phase=_phase(), max_tokens=1000, estimate_id="est-1"), timeout=60
    )

    budgets.close()
    assert response.continuations == 2
    assert "local rule (estimator Escalate failed: UNAVAILABLE)" in (stack.store.list_calls()[1].note or "")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_persistent_529_costs_four_requests_then_the_failover_model_finishes(
    start_builder, build_request, fake_anthropic, fake_openai, make_completion, stream: bool
) -> None:
    fake_anthropic.script(
        ScriptedReply(529, anthropic_error("overloaded_error", "Overloaded"), {"retry-after": "0"})
    )
    fake_openai.reply_completions(make_completion(_answer(FILES), prompt_tokens=1400, completion_tokens=900))
    stack = start_builder(
        AnthropicProvider(timeout_seconds=10, stream=stream),
        OpenAIProvider(timeout_seconds=10, stream=stream),
    )

    response = stack.stub.Build(build_request(phase=_phase()), timeout=30)

    assert len(fake_anthropic.requests) == 4  # not 24: one layer owns retries
    assert stack.sleeps == [0.0, 0.0, 0.0]  # retry-after honoured
    [openai_request] = fake_openai.requests
    assert openai_request.body["model"] == "gpt-5" and openai_request.body["max_completion_tokens"] == 8192
    assert openai_request.body["messages"][0]["role"] == "system"
    assert bool(openai_request.body.get("stream")) is stream
    assert (response.provider, response.model) == ("openai", "gpt-5-2025-08-07")
    assert [op.path for op in response.operations] == [path for path, _ in FILES]
    assert [bool(call.error) for call in response.calls] == [True] * 4 + [False]
    assert (response.usage.input_tokens, response.usage.output_tokens) == (1400, 900)
    assert "fail-over #1" in (stack.store.list_calls()[-1].note or "")


def test_rate_limit_waits_what_retry_after_asks(
    start_builder, build_request, fake_anthropic, make_message, make_answer
) -> None:
    fake_anthropic.script(
        ScriptedReply(429, anthropic_error("rate_limit_error", "slow down"), {"retry-after": "7"}),
        ScriptedReply(200, make_message(make_answer([(FILES[0][0], "create", FILES[0][1])]))),
    )
    stack = start_builder(AnthropicProvider(timeout_seconds=10))

    response = stack.stub.Build(build_request(), timeout=30)

    assert stack.sleeps == [7.0] and len(fake_anthropic.requests) == 2
    assert [call.error != "" for call in response.calls] == [True, False]


def _error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    info = error_details_pb2.ErrorInfo()
    rpc_status.from_call(error).details[0].Unpack(info)  # type: ignore[union-attr]
    return info


PROSE = "I have looked at the code and I think the change is straightforward."
GOOD_FIRST = json.dumps({"path": FILES[0][0], "mode": "create", "new_content": FILES[0][1]})


@pytest.mark.parametrize(
    ("forced", "answers", "reason", "salvaged"),
    [
        ("full_file_json", [PROSE, PROSE], "NO_JSON", 0),
        # the wrapper is unclosed but its one file object is complete: salvaged and reported
        (
            "full_file_json",
            ['{"files": [{"path": "a.py", "mode": "create", "new_content": "x"}', PROSE],
            "NO_JSON",
            1,
        ),
        ("ndjson", [GOOD_FIRST + "\n{not json}\n", "<<<<<<< SEARCH\nx\n"], "INVALID_BLOCK", 1),
        ("search_replace", [f"{FILES[0][0]}\n<<<<<<< SEARCH\n\n=======\nA = 1\n", PROSE], "NO_JSON", 0),
        (
            "unified_diff",
            ["--- a/x.py\n+++ b/x.py\n@@ -1,3 +1,3 @@\n-a\n+b\n", "no blocks here"],
            "NO_BLOCKS",
            0,
        ),
        (
            "line_edits",
            ['{"files": [{"path": "x.py", "mode": "edit", "edits": [{"action": "zap"}]}]}', "x"],
            "NO_BLOCKS",
            0,
        ),
    ],
    ids=["prose", "unclosed-json", "ndjson-bad-line", "unterminated-block", "bad-hunk", "bad-action"],
)
def test_malformed_output_of_any_kind_is_a_typed_error_with_what_was_salvaged(
    start_builder, build_request, fake_anthropic, forced, answers, reason, salvaged
) -> None:
    fake_anthropic.reply_messages(*(message_payload(text) for text in answers))
    stack = start_builder(AnthropicProvider(timeout_seconds=10))

    with pytest.raises(grpc.RpcError) as caught:
        stack.stub.Build(build_request(phase=_phase(), output_format=forced), timeout=30)

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # never INTERNAL/UNKNOWN
    info = _error_info(caught.value)
    assert info.reason == reason
    assert info.metadata["salvaged_operations"] == str(salvaged)
    assert info.metadata["calls"] == "2"  # the answer, then one re-ask in the fallback format
    formats = [row.output_format for row in stack.store.list_calls()]
    assert formats[0] == forced and formats[1] != forced


def test_empty_answers_retry_once_then_fail_typed(start_builder, build_request, fake_anthropic) -> None:
    fake_anthropic.reply_messages(message_payload("", output_tokens=0))
    stack = start_builder(AnthropicProvider(timeout_seconds=10))

    with pytest.raises(grpc.RpcError) as caught:
        stack.stub.Build(build_request(phase=_phase()), timeout=30)

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert _error_info(caught.value).reason in ("EMPTY_FILES", "NO_JSON")


def test_no_empty_files_retry_on_the_last_attempt_nor_twice_per_phase(
    start_builder, build_request, fake_anthropic
) -> None:
    fake_anthropic.reply_messages(message_payload('{"files": []}', output_tokens=20))
    stack = start_builder(AnthropicProvider(timeout_seconds=10))

    with pytest.raises(grpc.RpcError):
        stack.stub.Build(build_request(phase=_phase(), attempt=1, max_attempts=3), timeout=30)
    assert len(fake_anthropic.requests) == 2  # the one retry of the phase
    with pytest.raises(grpc.RpcError):
        stack.stub.Build(build_request(phase=_phase(), attempt=2, max_attempts=3), timeout=30)
    assert len(fake_anthropic.requests) == 3  # already used by attempt 1
    with pytest.raises(grpc.RpcError):
        stack.stub.Build(build_request(phase=_phase(phase_id="other"), attempt=3, max_attempts=3), timeout=30)
    assert len(fake_anthropic.requests) == 4  # last attempt: no retry


def test_infrastructure_failures_never_reach_the_prompt(
    start_builder, build_request, fake_anthropic, make_message, make_answer
) -> None:
    fake_anthropic.reply_messages(make_message(make_answer([(FILES[0][0], "create", FILES[0][1])])))
    stack = start_builder(AnthropicProvider(timeout_seconds=10))

    stack.stub.Build(
        build_request(
            attempt=2, previous_failure="builder Build failed (UNAVAILABLE): anthropic unavailable (529)"
        ),
        timeout=30,
    )
    stack.stub.Build(build_request(attempt=3, previous_failure="pytest: NameError: slugify"), timeout=30)

    first, second = fake_anthropic.requests
    assert "Previous attempt failed" not in first.prompt and "529" not in first.prompt
    assert "NameError: slugify" in second.prompt


def test_create_of_a_context_file_becomes_modify_and_edits_carry_the_base_hash(
    start_builder, build_request, fake_anthropic, make_message
) -> None:
    import hashlib

    readme = "# Telemetry utils\n"
    answer = {
        "files": [
            {"path": "README.md", "mode": "create", "new_content": "# Utils\n"},
            {"path": "examples/telemetry_utils/new.py", "mode": "modify", "new_content": "x = 1\n"},
        ]
    }
    edits = {
        "files": [{"path": "README.md", "mode": "edit", "edits": [{"action": "append", "content": "More."}]}]
    }
    fake_anthropic.reply_messages(make_message(json.dumps(answer)), make_message(json.dumps(edits)))
    stack = start_builder(AnthropicProvider(timeout_seconds=10))
    request = build_request(existing_paths=["examples/telemetry_utils/__init__.py"])

    response = stack.stub.Build(request, timeout=30)
    edited = stack.stub.Build(build_request(output_format="line_edits"), timeout=30)

    assert [(op.path, op.mode) for op in response.operations] == [
        ("README.md", common_pb2.FILE_MODE_MODIFY),
        ("examples/telemetry_utils/new.py", common_pb2.FILE_MODE_CREATE),
    ]
    assert len(response.normalizations) == 2
    [op] = edited.operations
    assert op.mode == common_pb2.FILE_MODE_EDIT
    assert op.base_sha256 == hashlib.sha256(readme.encode()).hexdigest()
    assert (
        op.edits[0].line.action == common_pb2.LINE_EDIT_ACTION_APPEND and op.edits[0].line.content == "More."
    )


def test_bad_format_request_names_the_field_and_calls_nothing(
    start_builder, build_request, fake_anthropic
) -> None:
    stack = start_builder(AnthropicProvider(timeout_seconds=10))

    with pytest.raises(grpc.RpcError) as caught:
        stack.stub.Build(build_request(output_format="xml"), timeout=10)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("output_format")
    assert fake_anthropic.requests == [] and stack.store.list_calls() == []


def test_format_falls_back_on_the_next_attempt_after_a_cut_off(
    start_builder, build_request, fake_anthropic, make_message
) -> None:
    cut = _cut_inside(_answer(FILES), FILES[0][0])
    fake_anthropic.reply_messages(make_message(cut, stop_reason="max_tokens", output_tokens=1000))
    stack = start_builder(AnthropicProvider(timeout_seconds=10))

    first = stack.stub.Build(build_request(phase=_phase(), max_tokens=1000), timeout=30)
    fake_anthropic.reply_messages(
        make_message("\n".join(json.dumps({"path": p, "mode": "create", "new_content": c}) for p, c in FILES))
    )
    second = stack.stub.Build(build_request(phase=_phase(), attempt=2), timeout=30)

    assert first.truncated and first.output_format == "full_file_json"
    assert second.output_format == "ndjson" and len(second.operations) == 3
    assert "OUTPUT CONTRACT (NDJSON)" in fake_anthropic.requests[-1].system


def test_clients_never_retry_a_build_the_builder_already_retried(
    start_builder, build_request, fake_anthropic
) -> None:
    from autopack.builder.v1 import builder_pb2_grpc
    from autopack_common.clients import open_channel

    fake_anthropic.script(
        ScriptedReply(529, anthropic_error("overloaded_error", "Overloaded"), {"retry-after": "0"})
    )
    stack = start_builder(AnthropicProvider(timeout_seconds=10))  # no OpenAI: nothing to fail over to
    channel = open_channel("builder", stack.address)  # the channel every service uses (retries UNAVAILABLE)

    with pytest.raises(grpc.RpcError) as caught:
        builder_pb2_grpc.BuilderServiceStub(channel).Build(build_request(), timeout=30)
    channel.close()

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(fake_anthropic.requests) == 4  # not 16: the channel's UNAVAILABLE retries skip Build


def test_a_model_that_used_up_its_requests_is_skipped_for_the_rest_of_the_build(
    start_builder, build_request, fake_anthropic, fake_openai, make_completion
) -> None:
    from tests.builder.fake_llm import openai_error

    fake_anthropic.script(
        ScriptedReply(529, anthropic_error("overloaded_error", "Overloaded"), {"retry-after": "0"})
    )
    cut = _cut_inside(_answer(FILES), FILES[1][0])
    fake_openai.script(
        ScriptedReply(200, make_completion(cut, finish_reason="length", completion_tokens=1000)),
        ScriptedReply(500, openai_error("server_error", "boom"), {"retry-after": "0"}),
    )
    stack = start_builder(AnthropicProvider(timeout_seconds=10), OpenAIProvider(timeout_seconds=10))

    with pytest.raises(grpc.RpcError) as caught:
        stack.stub.Build(build_request(phase=_phase(), max_tokens=1000), timeout=30)

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    # sonnet: 4 x 529, then gpt-5 answers (cut); the continuation gets 4 x 500 from gpt-5 and
    # does not go back to sonnet, which already failed in this build
    assert len(fake_anthropic.requests) == 4 and len(fake_openai.requests) == 5
    assert _error_info(caught.value).metadata["calls"] == "1"
