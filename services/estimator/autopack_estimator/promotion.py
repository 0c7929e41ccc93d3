"""The promotion guard: a candidate worse than the current model on held-out phases is not served.

A calibration is judged on phases it did not learn from (the report's before/after) against the
current model. It is *rejected* -- stored, shown, but refused by ``PromoteModel`` unless forced --
when any of the three figures is worse beyond its tolerance:

* **median SMAPE**: more than ``SMAPE_TOLERANCE`` percentage points above the current model's, or
  more than chance explains when that is larger (``smape_noise`` of the report: two standard errors
  of the paired per-phase differences -- 30 held-out phases move a median by several points).
  When the current model misses more budgets than the operating point and the candidate brings
  them within it or halves them, misses come first: only a clearly less accurate candidate
  (``SMAPE_TOLERANCE_FIXING_MISSES`` points) is refused;
* **budget misses**: above both the current model's + ``MISS_TOLERANCE`` and the operating point
  (``DEFAULT_MAX_MISS_RATE``): trading misses for waste is fine while misses stay within the aim;
* **P90 waste**: more than ``WASTE_TOLERANCE`` above what the current model reaches *at the same
  or fewer misses* (its buffers scaled along the frontier), or -- when the candidate does not miss
  less -- more than ``DOMINATED_TOLERANCE`` above the current model as served even at the best of
  its own buffer levels that misses no more (dominated). Comparing raw P90 waste would punish a
  candidate for buying fewer misses; comparing at equal misses asks whether it is a better model,
  not a more cautious one. Both comparisons read the candidate along its frontier, never only as
  served: on 40 held-out phases one miss is 2.5 %, so a buffer that happens to sit just above a
  phase's need buys nothing there and would make a better model look dominated (such verdicts
  flipped from one fold to the next on the same data). The tolerances are wide because a P90 of
  30 held-out phases is their third worst: it moves by a fifth between two samples of the same
  model.

A calibration judged on fewer than ``MIN_JUDGED_PHASES`` distinct phases is rejected too: it
cannot show it is better. The one-sentence recommendation is what ``autopack calibrate`` prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autopack_estimator.frontier import DEFAULT_MAX_MISS_RATE, waste_at

#: Fewer distinct held-out phases than this cannot show that a candidate is better: it is refused.
MIN_JUDGED_PHASES = 12
SMAPE_TOLERANCE = 2.0
SMAPE_TOLERANCE_FIXING_MISSES = 10.0
MISS_TOLERANCE = 0.01
WASTE_TOLERANCE = 0.25
DOMINATED_TOLERANCE = 0.05


@dataclass(frozen=True)
class PromotionVerdict:
    """Whether to promote a candidate; every reason starts with the metric it is about."""

    promote: bool
    reasons: tuple[str, ...]
    sentence: str


def promotion_verdict(report: Any, max_miss_rate: float = DEFAULT_MAX_MISS_RATE) -> PromotionVerdict:
    """Judge a calibration report (before = current model, after = candidate, both held out)."""
    before, after = report.before, report.after
    if not report.folds or before.events < MIN_JUDGED_PHASES:
        reason = (
            f"held-out evaluation: {before.events if report.folds else 'no'} distinct phases to test it on "
            f"(at least {MIN_JUDGED_PHASES} are needed to tell a better model from luck)"
        )
        return PromotionVerdict(False, (reason,), f"Do not promote it: {reason}.")
    reasons = []
    smape_tolerance = max(SMAPE_TOLERANCE, getattr(report, "smape_noise", 0.0))
    if before.budget_miss_rate > max_miss_rate and after.budget_miss_rate <= max(
        max_miss_rate, before.budget_miss_rate / 2
    ):
        smape_tolerance = max(smape_tolerance, SMAPE_TOLERANCE_FIXING_MISSES)
    if after.median_smape > before.median_smape + smape_tolerance:
        reasons.append(
            f"median SMAPE: predictions are further off ({before.median_smape:.1f}% now, "
            f"{after.median_smape:.1f}% with the candidate; tolerance +{smape_tolerance:.1f} points)"
        )
    if after.budget_miss_rate > max(before.budget_miss_rate + MISS_TOLERANCE, max_miss_rate):
        reasons.append(
            f"budget misses: more phases would run out of tokens ({before.budget_miss_rate:.1%} now, "
            f"{after.budget_miss_rate:.1%} with the candidate; allowed up to {max_miss_rate:.0%})"
        )
    reference = _waste_reference(report, after.budget_miss_rate)
    if reference is not None and after.waste_p90 > reference * (1.0 + WASTE_TOLERANCE):
        reasons.append(
            f"P90 waste: it reserves more tokens than needed ({after.waste_p90:.2f}x the output for the "
            f"worst tenth of phases, where the current model needs {reference:.2f}x for as few misses; "
            f"tolerance +{WASTE_TOLERANCE:.0%})"
        )
    elif before.budget_miss_rate <= after.budget_miss_rate and (
        own := _best_waste_without_more_misses(report, before.budget_miss_rate)
    ) > before.waste_p90 * (1.0 + DOMINATED_TOLERANCE):
        reasons.append(
            f"P90 waste: it reserves more tokens ({own:.2f}x against {before.waste_p90:.2f}x for the worst tenth "
            f"of phases, even with its safety margins trimmed to miss no more) without running out less often "
            f"({after.budget_miss_rate:.1%} against {before.budget_miss_rate:.1%})"
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


def _waste_reference(report: Any, miss_rate: float) -> float | None:
    """The waste the current model needs for ``miss_rate`` or fewer misses, read off the frontiers.

    Both models are read at their best frontier point with at most ``miss_rate`` misses, so neither
    gains from where its buffer happens to sit between two held-out phases; the candidate's own
    frontier point is used when it is better than the candidate as served. None: no frontier.
    """
    baseline = waste_at(list(report.baseline_frontier), miss_rate)
    if baseline is None:
        return None
    candidate = waste_at(list(report.frontier), miss_rate)
    served = report.after.waste_p90
    return baseline * (served / candidate) if candidate and candidate < served else baseline


def _best_waste_without_more_misses(report: Any, miss_rate: float) -> float:
    """The candidate's least P90 waste at ``miss_rate`` or fewer misses along its frontier.

    As served when there is no frontier, or when no buffer level of it misses that little.
    """
    own = waste_at(list(report.frontier), miss_rate) if report.frontier else None
    return own if own is not None else report.after.waste_p90
