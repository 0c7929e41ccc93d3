"""Diagnose and Replan over a real gRPC channel, through the anthropic SDK against a local Messages API."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from autopack.builder.v1 import builder_pb2
from autopack.common.v1 import common_pb2
from autopack_builder.doctor import DoctorAnswerError, parse_diagnosis, parse_replan
from autopack_builder.providers import AnthropicProvider, ReplayProvider
from google.rpc import error_details_pb2
from grpc_status import rpc_status

CHEAP, STRONG = "claude-sonnet-4-6", "claude-opus-4-6"


def _diagnosis(
    action: str = "retry_with_hint", confidence: float = 0.9, hint: str = "Import re first."
) -> str:
    return json.dumps(
        {"action": action, "confidence": confidence, "diagnosis": "NameError: re", "hint": hint}
    )


def _phase() -> common_pb2.PhaseSpec:
    return common_pb2.PhaseSpec(
        phase_id="p1-wordfreq",
        description="Add textkit/wordfreq.py with word_counts(text).",
        deliverables=["textkit/wordfreq.py"],
        scope=common_pb2.Scope(paths=["textkit/"]),
        validation_command=["python", "-m", "pytest", "-q", "tests/test_wordfreq.py"],
    )


def _failures() -> list[builder_pb2.FailedAttempt]:
    return [
        builder_pb2.FailedAttempt(
            attempt=1,
            outcome="CHECK_FAILED",
            fingerprint="nameerror re",
            detail="NameError: name 're' is not defined",
        )
    ]


def _diagnose_request(**overrides: Any) -> builder_pb2.DiagnoseRequest:
    fields: dict[str, Any] = {
        "run_id": "run-1",
        "phase": _phase(),
        "failures": _failures(),
        "intention_context": "A small text toolkit.",
        "mitigations_applied": ["missing_import"],
    }
    fields.update(overrides)
    return builder_pb2.DiagnoseRequest(**fields)


@pytest.fixture
def stack(start_builder, fake_anthropic):
    return start_builder(AnthropicProvider(timeout_seconds=10))


def _error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    return info


def test_confident_cheap_diagnosis_is_kept(stack, fake_anthropic, make_message) -> None:
    fake_anthropic.reply_messages(
        make_message(_diagnosis(confidence=0.85), input_tokens=900, output_tokens=80)
    )

    response = stack.stub.Diagnose(_diagnose_request(), timeout=15)

    [seen] = fake_anthropic.requests
    assert seen.body["model"] == CHEAP and seen.body["max_tokens"] == 2048  # the doctor role's default
    assert "Doctor of Autopack" in seen.body["system"]
    prompt = seen.body["messages"][0]["content"]
    assert "NameError: name 're' is not defined" in prompt
    assert "python -m pytest -q tests/test_wordfreq.py" in prompt  # the validation command
    assert "- missing_import" in prompt and "A small text toolkit." in prompt
    assert response.action == builder_pb2.DOCTOR_ACTION_RETRY_WITH_HINT
    assert (response.confidence, response.hint, response.diagnosis) == (
        0.85,
        "Import re first.",
        "NameError: re",
    )
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (
        900,
        80,
        980,
    )
    [call] = response.calls
    assert call.role == "doctor" and call.parse_outcome == "ok" and call.call_id > 0
    [row] = stack.store.list_calls(run_id="run-1")
    assert (row.role, row.phase_id, row.parse_outcome) == ("doctor", "p1-wordfreq", "ok")
    assert json.loads(row.raw_answer)["confidence"] == 0.85


def test_low_confidence_asks_the_strong_model_and_keeps_its_answer(
    stack, fake_anthropic, make_message
) -> None:
    fake_anthropic.reply_messages(
        make_message(_diagnosis(confidence=0.5), output_tokens=70),
        make_message(_diagnosis("replan", 0.8, hint="Split the phase."), output_tokens=90, model=STRONG),
    )

    response = stack.stub.Diagnose(_diagnose_request(), timeout=15)

    assert [r.body["model"] for r in fake_anthropic.requests] == [CHEAP, STRONG]
    assert response.action == builder_pb2.DOCTOR_ACTION_REPLAN
    assert (response.confidence, response.model, response.hint) == (0.8, STRONG, "Split the phase.")
    assert len(response.calls) == 2 and response.usage.output_tokens == 160


def test_malformed_answers_are_a_typed_error_with_the_calls(stack, fake_anthropic, make_message) -> None:
    fake_anthropic.reply_messages(
        make_message("I think the import is missing."),  # prose: no JSON
        make_message('{"action": "reboot", "confidence": 2, "diagnosis": "x"}', model=STRONG),
    )

    with pytest.raises(grpc.RpcError) as caught:
        stack.stub.Diagnose(_diagnose_request(), timeout=15)

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "doctor's answer is unusable" in caught.value.details()
    info = _error_info(caught.value)
    assert info.reason == "INVALID_DIAGNOSIS" and info.metadata["calls"] == "2"
    outcomes = [row.parse_outcome for row in stack.store.list_calls()]
    assert outcomes == ["invalid:no_json", "invalid:invalid_action"]


def test_malformed_cheap_answer_escalates_and_the_strong_one_is_kept(
    stack, fake_anthropic, make_message
) -> None:
    fake_anthropic.reply_messages(
        make_message('{"action": "retry_with_hint", "confidence": 0.9'),  # cut JSON
        make_message(_diagnosis("skip_phase", 0.75, hint=""), model=STRONG),
    )

    response = stack.stub.Diagnose(_diagnose_request(), timeout=15)

    assert response.action == builder_pb2.DOCTOR_ACTION_SKIP_PHASE and response.model == STRONG


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"run_id": ""}, "run_id"),
        ({"failures": []}, "failures"),
        ({"failures": [builder_pb2.FailedAttempt(attempt=0, outcome="X")]}, "failures[0].attempt"),
        ({"phase": common_pb2.PhaseSpec(phase_id="p1")}, "phase.description"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"intention_context": "x" * 2049}, "intention_context"),
    ],
)
def test_bad_requests_name_the_field_and_call_nothing(stack, fake_anthropic, overrides, field) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stack.stub.Diagnose(_diagnose_request(**overrides), timeout=15)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(field)
    assert fake_anthropic.requests == [] and stack.store.list_calls() == []


def _replan_request(**overrides: Any) -> builder_pb2.ReplanRequest:
    fields: dict[str, Any] = {
        "run_id": "run-1",
        "phase": _phase(),
        "failures": _failures() * 2,
        "intention_context": "A small text toolkit.",
        "max_tokens": 1500,
    }
    fields.update(overrides)
    return builder_pb2.ReplanRequest(**fields)


def test_replan_returns_the_revised_description(stack, fake_anthropic, make_message) -> None:
    revised = "Add textkit/wordfreq.py: import re at the top, then define word_counts(text)."
    answer = json.dumps({"revised_description": revised, "rationale": "Both attempts forgot the import."})
    fake_anthropic.reply_messages(make_message(f"Here it is:\n```json\n{answer}\n```", model=STRONG))

    response = stack.stub.Replan(_replan_request(), timeout=15)

    [seen] = fake_anthropic.requests
    assert seen.body["model"] == STRONG and seen.body["max_tokens"] == 1500
    assert "Keep the same deliverables" in seen.body["system"]
    assert "A small text toolkit." in seen.body["messages"][0]["content"]
    assert response.revised_description == revised
    assert response.rationale == "Both attempts forgot the import."
    assert response.model == STRONG and response.calls[0].role == "doctor"
    assert [row.role for row in stack.store.list_calls()] == ["doctor"]


def test_replan_that_changes_nothing_is_a_typed_error(stack, fake_anthropic, make_message) -> None:
    same = json.dumps({"revised_description": _phase().description, "rationale": "fine"})
    fake_anthropic.reply_messages(make_message(same))

    with pytest.raises(grpc.RpcError) as caught:
        stack.stub.Replan(_replan_request(), timeout=15)

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert _error_info(caught.value).reason == "INVALID_REPLAN"
    assert [row.parse_outcome for row in stack.store.list_calls()] == ["invalid:unchanged"]


def test_replay_serves_doctor_recordings_apart_from_builder_ones(
    start_builder, write_recordings, make_message
) -> None:
    directory = write_recordings(
        [
            {"phase_id": "p1-wordfreq", "response": make_message('{"files": []}')},
            {
                "phase_id": "p1-wordfreq",
                "role": "doctor",
                "response": make_message(_diagnosis("mark_fatal", 0.9)),
            },
        ]
    )
    stack = start_builder(ReplayProvider(directory))

    response = stack.stub.Diagnose(_diagnose_request(), timeout=15)

    assert response.action == builder_pb2.DOCTOR_ACTION_MARK_FATAL
    assert response.calls[0].provider == "replay"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("no json here", "no_json"),
        (
            '{"action": "retry_with_hint", "confidence": "high", "diagnosis": "d", "hint": "h"}',
            "invalid_confidence",
        ),
        ('{"action": "retry_with_hint", "confidence": 0.9, "diagnosis": "d"}', "invalid_hint"),
        ('{"action": "skip_phase", "confidence": 0.9, "diagnosis": ""}', "invalid_diagnosis"),
        ('{"action": "skip_phase", "confidence": true, "diagnosis": "d"}', "invalid_confidence"),
        ('[1, 2] {"action": 3}', "invalid_action"),
    ],
)
def test_parse_diagnosis_rejects_malformed_answers(text: str, reason: str) -> None:
    with pytest.raises(DoctorAnswerError) as caught:
        parse_diagnosis(text)
    assert caught.value.reason == reason


def test_parse_diagnosis_accepts_the_monolith_action_name() -> None:
    parsed = parse_diagnosis('{"action": "RETRY_WITH_FIX", "confidence": 1, "diagnosis": "d", "hint": "h"}')
    assert (parsed.action, parsed.confidence) == ("retry_with_hint", 1.0)


def test_parse_replan_rejects_an_essay() -> None:
    with pytest.raises(DoctorAnswerError, match="more than"):
        parse_replan(json.dumps({"revised_description": "x" * 2000}), "short")


def test_doctor_fails_over_per_model_of_its_chain(
    start_builder, fake_anthropic, fake_openai, make_completion
) -> None:
    from autopack_builder.providers import OpenAIProvider

    from tests.builder.fake_llm import ScriptedReply, anthropic_error

    fake_anthropic.script(
        ScriptedReply(529, anthropic_error("overloaded_error", "Overloaded"), {"retry-after": "0"})
    )
    fake_openai.reply_completions(
        make_completion(_diagnosis(confidence=0.4)),
        make_completion(_diagnosis("replan", 0.9, hint="Split it.")),
    )
    stack = start_builder(AnthropicProvider(timeout_seconds=10), OpenAIProvider(timeout_seconds=10))

    response = stack.stub.Diagnose(_diagnose_request(), timeout=15)

    # cheap model: 4 x 529, fail-over gpt-5 answers with 0.4; the strong model is another model with
    # its own 4 requests, then gpt-5 answers again, confidently
    assert response.action == builder_pb2.DOCTOR_ACTION_REPLAN and response.model == "gpt-5-2025-08-07"
    assert [r.body["model"] for r in fake_anthropic.requests] == [CHEAP] * 4 + [STRONG] * 4
    assert len(fake_openai.requests) == 2
