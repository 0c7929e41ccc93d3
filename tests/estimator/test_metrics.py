"""Accuracy metrics on hand-computed examples, with truncation-aware (censored) semantics."""

from __future__ import annotations

import pytest
from autopack_estimator.metrics import (
    AccuracyMetrics,
    Outcome,
    accuracy,
    accuracy_by,
    deliverable_bucket,
    percentile,
    smape,
    waste_ratio,
)


def outcome(
    predicted: int,
    actual: int,
    selected: int,
    *,
    max_tokens: int | None = None,
    success: bool = True,
    truncated: bool = False,
    category: str = "implementation",
) -> Outcome:
    return Outcome(
        category=category,
        complexity="low",
        deliverable_count=2,
        predicted_output_tokens=predicted,
        actual_output_tokens=actual,
        selected_budget=selected,
        actual_max_tokens=max_tokens,
        success=success,
        truncated=truncated,
    )


def test_smape_by_hand() -> None:
    assert smape(100, 150) == pytest.approx(40.0)  # 200 * 50 / 250
    assert smape(150, 100) == pytest.approx(40.0)  # symmetric
    assert smape(5200, 16384) == pytest.approx(103.63, abs=0.01)  # the seeds' docs example
    assert smape(0, 0) == 0.0
    assert smape(0, 500) == 200.0


def test_waste_uses_the_ceiling_sent_else_the_selected_budget() -> None:
    assert waste_ratio(4096, None, 1000) == pytest.approx(4.096)
    assert waste_ratio(4096, 2048, 1000) == pytest.approx(2.048)
    assert waste_ratio(4096, None, 0) == 4096.0  # stays finite


@pytest.mark.parametrize(
    ("count", "bucket"),
    [
        (0, "0"),
        (1, "1"),
        (2, "2-3"),
        (3, "2-3"),
        (4, "4-7"),
        (7, "4-7"),
        (8, "8-15"),
        (15, "8-15"),
        (16, "16+"),
        (99, "16+"),
    ],
)
def test_deliverable_buckets(count: int, bucket: str) -> None:
    assert deliverable_bucket(count) == bucket


def test_negative_deliverable_count_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        deliverable_bucket(-1)


def test_percentile_interpolates_linearly() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([1.0, 2.0, 3.0, 4.0], 90) == pytest.approx(3.7)
    assert percentile([7.0], 90) == 7.0
    assert percentile([], 50) == 0.0


def test_accuracy_on_a_hand_computed_set() -> None:
    clean_under = outcome(100, 150, 200)  # SMAPE 40, underestimated, waste 200/150
    clean_over = outcome(200, 100, 300, max_tokens=250)  # SMAPE 66.67, waste 250/100
    truncated = outcome(100, 400, 256, success=False, truncated=True)  # lower bound: no SMAPE, a miss
    failed = outcome(100, 90, 128, success=False)  # not clean, not a miss
    metrics = accuracy([clean_under, clean_over, truncated, failed])
    waste_low, waste_high = 200 / 150, 2.5
    assert metrics == AccuracyMetrics(
        events=4,
        clean_events=2,
        mean_smape=pytest.approx((40 + 200 / 3) / 2),
        median_smape=pytest.approx((40 + 200 / 3) / 2),
        underestimation_rate=0.5,
        truncation_rate=0.25,
        budget_miss_rate=0.25,
        waste_p50=pytest.approx((waste_low + waste_high) / 2),
        waste_p90=pytest.approx(waste_low + 0.9 * (waste_high - waste_low)),
    )


def test_truncated_events_are_censored_out_of_smape_but_counted_as_risk() -> None:
    clean = outcome(1000, 1000, 2048)
    truncated = outcome(5200, 16384, 8192, success=False, truncated=True)
    metrics = accuracy([clean, truncated])
    assert metrics.median_smape == 0.0  # only the clean event is scored
    assert metrics.clean_events == 1
    assert metrics.truncation_rate == 0.5
    assert metrics.budget_miss_rate == 0.5
    assert metrics.waste_p90 == pytest.approx(2.048)


def test_budget_miss_is_about_the_selected_budget_not_the_ceiling() -> None:
    capped = outcome(9000, 9000, 20000, max_tokens=8192)
    assert accuracy([capped]).budget_miss_rate == 0.0
    assert accuracy([outcome(9000, 9001, 9000)]).budget_miss_rate == 1.0


def test_empty_sets_score_zero() -> None:
    assert accuracy([]) == AccuracyMetrics(0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    only_failures = accuracy([outcome(100, 50, 200, success=False)])
    assert (only_failures.events, only_failures.clean_events, only_failures.median_smape) == (1, 0, 0.0)


def test_accuracy_by_groups_and_sorts_keys() -> None:
    outcomes = [
        outcome(100, 100, 200, category="tests"),
        outcome(100, 300, 200, category="docs"),
        outcome(100, 100, 200, category="tests"),
    ]
    grouped = accuracy_by(outcomes, lambda o: o.category)
    assert list(grouped) == ["docs", "tests"]
    assert grouped["tests"].events == 2
    assert grouped["docs"].budget_miss_rate == 1.0
    by_bucket = accuracy_by(outcomes, lambda o: deliverable_bucket(o.deliverable_count))
    assert list(by_bucket) == ["2-3"]
