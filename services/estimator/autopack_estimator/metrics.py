"""Accuracy metrics over outcomes, with the seeds' truncation-aware semantics (P6, BUILD-142).

* SMAPE, underestimation and waste are computed on **clean** events only (success and not
  truncated): a truncated event's actual is only a lower bound (censored), and a failed attempt's
  output size says little about what the phase needed.
* Truncation and budget-miss rates are computed on **all** events: they are the risk side. A
  truncation at C says only "actual >= C", so it is a miss for any budget <= C (``is_budget_miss``).
* Waste = the ceiling actually sent (``actual_max_tokens``, else ``selected_budget``) over the
  actual output, because that is what the provider call reserved.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Outcome:
    """One LLM call under an estimate: what was predicted/budgeted and what happened."""

    category: str
    complexity: str
    deliverable_count: int
    predicted_output_tokens: int
    actual_output_tokens: int
    selected_budget: int
    actual_max_tokens: int | None
    success: bool
    truncated: bool

    @property
    def clean(self) -> bool:
        """Usable as an exact measurement: succeeded and did not hit the ceiling."""
        return self.success and not self.truncated


@dataclass(frozen=True)
class AccuracyMetrics:
    """Risk and cost of a set of outcomes (proto AccuracyMetrics)."""

    events: int
    clean_events: int
    mean_smape: float
    median_smape: float
    underestimation_rate: float
    truncation_rate: float
    budget_miss_rate: float
    waste_p50: float
    waste_p90: float


def smape(predicted: float, actual: float) -> float:
    """Symmetric mean absolute percentage error of one pair, in percent (0..200)."""
    denominator = abs(predicted) + abs(actual)
    if denominator == 0:
        return 0.0
    return 200.0 * abs(predicted - actual) / denominator


def waste_ratio(selected_budget: int, actual_max_tokens: int | None, actual_output_tokens: int) -> float:
    """Tokens reserved (the ceiling sent, else the budget) over tokens used; an actual below 1 counts as 1."""
    ceiling = actual_max_tokens if actual_max_tokens else selected_budget
    return ceiling / max(1, actual_output_tokens)


def is_budget_miss(budget: int, actual_output_tokens: int, truncated: bool) -> bool:
    """Whether ``budget`` was (or would have been) too small: a truncation at C needs more than C."""
    return actual_output_tokens > budget or (truncated and actual_output_tokens >= budget)


def deliverable_bucket(count: int) -> str:
    """Deliverable-count bucket used by reports: "0", "1", "2-3", "4-7", "8-15", "16+"."""
    if count < 0:
        raise ValueError(f"deliverable count must not be negative, got {count}")
    if count == 0:
        return "0"
    if count == 1:
        return "1"
    if count <= 3:
        return "2-3"
    if count <= 7:
        return "4-7"
    if count <= 15:
        return "8-15"
    return "16+"


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (q in 0..100), the numpy default; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = math.ceil(position)
    fraction = position - low
    return float(ordered[low] + (ordered[high] - ordered[low]) * fraction)


def accuracy(outcomes: Sequence[Outcome]) -> AccuracyMetrics:
    """Metrics of a set of outcomes; every field is 0 for an empty set."""
    total = len(outcomes)
    clean = [o for o in outcomes if o.clean]
    smapes = [smape(o.predicted_output_tokens, o.actual_output_tokens) for o in clean]
    wastes = [waste_ratio(o.selected_budget, o.actual_max_tokens, o.actual_output_tokens) for o in clean]
    return AccuracyMetrics(
        events=total,
        clean_events=len(clean),
        mean_smape=statistics.fmean(smapes) if smapes else 0.0,
        median_smape=statistics.median(smapes) if smapes else 0.0,
        underestimation_rate=(
            sum(1 for o in clean if o.actual_output_tokens > o.predicted_output_tokens) / len(clean)
            if clean
            else 0.0
        ),
        truncation_rate=sum(1 for o in outcomes if o.truncated) / total if total else 0.0,
        budget_miss_rate=(
            sum(1 for o in outcomes if is_budget_miss(o.selected_budget, o.actual_output_tokens, o.truncated))
            / total
            if total
            else 0.0
        ),
        waste_p50=percentile(wastes, 50),
        waste_p90=percentile(wastes, 90),
    )


def accuracy_by(outcomes: Sequence[Outcome], key: Callable[[Outcome], str]) -> dict[str, AccuracyMetrics]:
    """Metrics per value of ``key`` (e.g. category), keys sorted."""
    groups: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        groups.setdefault(key(outcome), []).append(outcome)
    return {name: accuracy(groups[name]) for name in sorted(groups)}
