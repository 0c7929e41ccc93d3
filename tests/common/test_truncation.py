"""The one truncation rule every service uses."""

import pytest
from autopack_common.truncation import is_high_utilization, is_truncated, is_truncating_stop_reason


@pytest.mark.parametrize(
    "stop_reason",
    ["max_tokens", "length", "max_output_tokens", "model_context_window_exceeded", " MAX_TOKENS "],
)
def test_every_providers_cut_off_counts_as_truncation(stop_reason: str) -> None:
    assert is_truncating_stop_reason(stop_reason)
    assert is_truncated(stop_reason)


@pytest.mark.parametrize("stop_reason", ["end_turn", "stop", "stop_sequence", "tool_use", "", None])
def test_a_finished_answer_is_not_truncated_unless_flagged(stop_reason: str | None) -> None:
    assert not is_truncated(stop_reason)
    assert is_truncated(stop_reason, flagged=True)


def test_high_utilization_starts_at_95_percent_of_the_budget() -> None:
    assert is_high_utilization(950, 1000)
    assert not is_high_utilization(949, 1000)
    assert not is_high_utilization(None, 1000)
    assert not is_high_utilization(500, 0)
