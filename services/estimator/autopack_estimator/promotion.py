"""The promotion guard: a candidate worse than the current model on held-out phases is not served.

A calibration is judged on phases it did not learn from (the report's before/after) against the
current model. It is *rejected* -- stored, shown, but refused by ``PromoteModel`` unless forced --
when any of the three figures is worse beyond its tolerance:

* **median SMAPE**: more than ``SMAPE_TOLERANCE`` percentage points above the current model's;
* **budget misses**: above both the current model's + ``MISS_TOLERANCE`` and the operating point
  (``DEFAULT_MAX_MISS_RATE``): trading misses for waste is fine while misses stay within the aim;
* **P90 waste**: more than ``WASTE_TOLERANCE`` above what the current model reaches *at the same
  or fewer misses* (its buffers scaled along the frontier). Comparing raw P90 waste would punish
  a candidate for buying fewer misses; comparing at equal misses asks whether it is a better
  model, not a more cautious one.

The one-sentence recommendation is what ``autopack calibrate`` prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autopack_estimator.frontier import DEFAULT_MAX_MISS_RATE, waste_at

SMAPE_TOLERANCE = 2.0
MISS_TOLERANCE = 0.01
WASTE_TOLERANCE = 0.10


@dataclass(frozen=True)
class PromotionVerdict:
    """Whether to promote a candidate; every reason starts with the metric it is about."""

    promote: bool
    reasons: tuple[str, ...]
    sentence: str


def promotion_verdict(report: Any, max_miss_rate: float = DEFAULT_MAX_MISS_RATE) -> PromotionVerdict:
    """Judge a calibration report (before = current model, after = candidate, both held out)."""
    before, after = report.before, report.after
    if not report.folds:
        reason = (
            "held-out evaluation: too few distinct phases to test the candidate on phases it did not "
            "learn from"
        )
        return PromotionVerdict(False, (reason,), f"Do not promote it: {reason}.")
    reasons = []
    if after.median_smape > before.median_smape + SMAPE_TOLERANCE:
        reasons.append(
            f"median SMAPE: predictions are further off ({before.median_smape:.1f}% now, "
            f"{after.median_smape:.1f}% with the candidate; tolerance +{SMAPE_TOLERANCE:g} points)"
        )
    if after.budget_miss_rate > max(before.budget_miss_rate + MISS_TOLERANCE, max_miss_rate):
        reasons.append(
            f"budget misses: more phases would run out of tokens ({before.budget_miss_rate:.1%} now, "
            f"{after.budget_miss_rate:.1%} with the candidate; allowed up to {max_miss_rate:.0%})"
        )
    frontier = list(report.baseline_frontier)
    reference = waste_at(frontier, after.budget_miss_rate) if frontier else None
    if reference is None and after.budget_miss_rate >= before.budget_miss_rate:
        reference = before.waste_p90
    if reference is not None and after.waste_p90 > reference * (1.0 + WASTE_TOLERANCE):
        reasons.append(
            f"P90 waste: it reserves more tokens than needed ({after.waste_p90:.2f}x the output for the "
            f"worst tenth of phases, where the current model needs {reference:.2f}x for as few misses; "
            f"tolerance +{WASTE_TOLERANCE:.0%})"
        )
    if reasons:
        return PromotionVerdict(False, tuple(reasons), f"Do not promote it: {reasons[0]}.")
    sentence = (
        f"Promote it: on phases it did not learn from it runs out of tokens on {after.budget_miss_rate:.1%} "
        f"of calls (now {before.budget_miss_rate:.1%}), reserves at most {after.waste_p90:.1f}x the output "
        f"for nine calls in ten (now {before.waste_p90:.1f}x) and is typically {after.median_smape:.0f}% off "
        f"(now {before.median_smape:.0f}%)."
    )
    return PromotionVerdict(True, (), sentence)
