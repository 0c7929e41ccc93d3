"""What counts as a truncated LLM answer: one rule for the builder, orchestrator and estimator.

Providers name the cut-off differently: Anthropic says ``max_tokens`` (or
``model_context_window_exceeded`` when the context window ran out), OpenAI Chat Completions
``length``, the OpenAI Responses API ``max_output_tokens``. Each of them means the answer ended
because of a ceiling, not because the model finished, so its output count is a lower bound.
"""

from __future__ import annotations

TRUNCATING_STOP_REASONS = frozenset(
    {"max_tokens", "length", "max_output_tokens", "model_context_window_exceeded"}
)
"""Stop reasons (compared case-insensitively) that mean the output hit a ceiling."""

HIGH_UTILIZATION_RATIO = 0.95
"""An answer that used this share of its budget or more is treated as at risk of truncation."""


def is_truncating_stop_reason(stop_reason: str | None) -> bool:
    """True when a provider's stop reason means the answer was cut off."""
    return bool(stop_reason) and stop_reason.strip().lower() in TRUNCATING_STOP_REASONS


def is_truncated(stop_reason: str | None, flagged: bool = False) -> bool:
    """True when the caller flagged a cut-off or the stop reason says so."""
    return flagged or is_truncating_stop_reason(stop_reason)


def is_high_utilization(output_tokens: int | None, budget: int | None) -> bool:
    """True when a complete answer still used at least 95% of its budget (escalate next time)."""
    if not output_tokens or not budget or budget <= 0:
        return False
    return output_tokens >= HIGH_UTILIZATION_RATIO * budget
