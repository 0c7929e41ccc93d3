"""What the estimator is told about a Build: answers only, continuation chains summed."""

from __future__ import annotations

from autopack.builder.v1 import builder_pb2
from autopack.common.v1 import common_pb2
from autopack_orchestrator.outcomes import estimator_samples


def call(
    output: int, stop: str, max_tokens: int = 1000, error: str = "", role: str = "builder", inputs: int = 100
) -> builder_pb2.LlmCall:
    usage = common_pb2.TokenUsage(total_tokens=0 if error else inputs + output)
    if not error:
        usage.input_tokens = inputs
        usage.output_tokens = output
    return builder_pb2.LlmCall(
        provider="anthropic",
        model="m",
        max_tokens=max_tokens,
        usage=usage,
        stop_reason="" if error else stop,
        error=error,
        role=role,
    )


def test_failed_requests_and_other_roles_are_no_samples() -> None:
    build = builder_pb2.BuildResponse(
        calls=[
            call(0, "", error="529 overloaded"),
            call(0, "", error="529 overloaded"),
            call(40, "end_turn", role="doctor"),
            call(700, "end_turn"),
        ]
    )
    [sample] = estimator_samples(build)
    assert (sample.output_tokens, sample.input_tokens, sample.truncated, sample.final) == (
        700,
        100,
        False,
        True,
    )


def test_a_continuation_chain_is_one_sample_with_the_summed_output_and_the_first_budget() -> None:
    build = builder_pb2.BuildResponse(
        calls=[
            call(1000, "max_tokens", max_tokens=1000),
            call(0, "", error="connection reset"),
            call(1500, "max_tokens", max_tokens=1500),
            call(300, "end_turn", max_tokens=2250),
        ],
        continuations=2,
    )
    [sample] = estimator_samples(build)
    assert sample.output_tokens == 2800 and sample.max_tokens == 1000
    assert not sample.truncated and sample.stop_reason == "end_turn" and sample.calls == 3
    assert sample.input_tokens == 300


def test_a_chain_still_cut_off_is_a_lower_bound() -> None:
    build = builder_pb2.BuildResponse(
        calls=[call(1000, "max_tokens"), call(1500, "length", max_tokens=1500)], truncated=True
    )
    [sample] = estimator_samples(build)
    assert sample.truncated and sample.output_tokens == 2500


def test_a_re_ask_after_a_malformed_answer_is_a_separate_sample_only_the_last_is_final() -> None:
    build = builder_pb2.BuildResponse(calls=[call(200, "end_turn"), call(600, "end_turn")])
    first, second = estimator_samples(build)
    assert (first.output_tokens, first.final) == (200, False)
    assert (second.output_tokens, second.final) == (600, True)


def test_a_build_without_calls_is_one_sample_of_its_totals() -> None:
    build = builder_pb2.BuildResponse(
        usage=common_pb2.TokenUsage(input_tokens=10, output_tokens=90, total_tokens=100),
        stop_reason="max_tokens",
        truncated=True,
        actual_max_tokens=90,
        model="m",
    )
    [sample] = estimator_samples(build)
    assert (sample.output_tokens, sample.max_tokens, sample.truncated) == (90, 90, True)


def test_only_failed_requests_give_nothing() -> None:
    assert estimator_samples(builder_pb2.BuildResponse(calls=[call(0, "", error="429")])) == []
