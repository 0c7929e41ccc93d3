"""The promotion guard's verdict and the miss / waste frontier it reads."""

from __future__ import annotations

from dataclasses import replace

import pytest
from autopack_estimator.calibration import CalibrationReport
from autopack_estimator.frontier import (
    FrontierPoint,
    HeldOutBudget,
    best_within,
    global_buffer_frontier,
    judge,
    mark_chosen,
    no_worse_at_equal_misses,
    scaled_frontier,
    waste_at,
)
from autopack_estimator.metrics import AccuracyMetrics
from autopack_estimator.promotion import MIN_JUDGED_PHASES, promotion_verdict


def metrics(smape: float, misses: float, waste_p90: float, phases: int = 40) -> AccuracyMetrics:
    return AccuracyMetrics(
        events=phases,
        clean_events=phases - 5,
        mean_smape=smape,
        median_smape=smape,
        underestimation_rate=0.5,
        truncation_rate=0.05,
        budget_miss_rate=misses,
        waste_p50=waste_p90 / 2,
        waste_p90=waste_p90,
    )


def frontier(points: list[tuple[float, float, float]]) -> tuple[FrontierPoint, ...]:
    """(multiplier, misses, P90 waste) -> points, the multiplier 1.0 served."""
    return tuple(FrontierPoint(b, m, w / 2, w, m / 2, b == 1.0) for b, m, w in points)


def report(before: AccuracyMetrics, after: AccuracyMetrics, **fields: object) -> CalibrationReport:
    base = CalibrationReport(
        before=before,
        after=after,
        groups=(),
        training_events=60,
        folds=10,
        base_version="default-1",
        notes=(),
    )
    return replace(base, **fields)  # type: ignore[arg-type]


def test_the_issues_candidate_is_refused_for_smape_and_waste() -> None:
    """Held-out median SMAPE 40.4% -> 54.9%, P90 waste 3.5x -> 7.5x: it was promoted anyway."""
    verdict = promotion_verdict(
        report(
            metrics(40.4, 0.188, 3.5),
            metrics(54.9, 0.031, 7.5),
            baseline_frontier=frontier(
                [(1.0, 0.188, 3.5), (1.6, 0.06, 4.6), (2.0, 0.031, 5.2), (2.5, 0.0, 6.4)]
            ),
        )
    )
    assert not verdict.promote
    assert [reason.split(":")[0] for reason in verdict.reasons] == ["median SMAPE", "P90 waste"]
    assert "40.4%" in verdict.reasons[0] and "54.9%" in verdict.reasons[0]
    assert "5.20x" in verdict.reasons[1]  # what the current model needs for as few misses
    assert verdict.sentence.startswith("Do not promote it: median SMAPE")
    assert verdict.sentence.count(".") >= 1 and "\n" not in verdict.sentence


def test_more_misses_beyond_the_operating_point_are_refused() -> None:
    verdict = promotion_verdict(report(metrics(30.0, 0.02, 3.0), metrics(29.0, 0.09, 2.5)))
    assert not verdict.promote and verdict.reasons[0].startswith("budget misses")
    # Trading misses for waste inside the 5 % operating point is allowed.
    inside = promotion_verdict(report(metrics(30.0, 0.02, 3.0), metrics(29.0, 0.045, 2.5)))
    assert inside.promote, inside.reasons


def test_waste_is_compared_at_equal_misses_not_raw() -> None:
    current = frontier([(0.8, 0.3, 2.4), (1.0, 0.188, 3.35), (1.6, 0.05, 4.2), (2.0, 0.03, 5.0)])
    fewer_misses = report(metrics(35.2, 0.188, 3.35), metrics(34.0, 0.03, 4.4), baseline_frontier=current)
    verdict = promotion_verdict(fewer_misses)
    assert verdict.promote, verdict.reasons  # 4.4x against the 5.0x the current model needs for 3 %
    assert verdict.sentence.startswith("Promote it:") and "3.0%" in verdict.sentence
    wasteful = replace(fewer_misses, after=metrics(34.0, 0.03, 7.0))
    assert promotion_verdict(wasteful).reasons[0].startswith("P90 waste")


def test_a_candidate_dominated_by_the_current_model_is_refused() -> None:
    verdict = promotion_verdict(report(metrics(30.0, 0.04, 3.0), metrics(30.0, 0.04, 3.4)))
    assert not verdict.promote and verdict.reasons[0].startswith("P90 waste")
    assert promotion_verdict(report(metrics(30.0, 0.04, 3.0), metrics(30.0, 0.04, 3.1))).promote


def test_domination_is_read_along_the_candidates_frontier() -> None:
    """A buffer sitting just above a held-out phase buys nothing there; trimmed, the candidate wins."""
    current = frontier([(1.0, 0.05, 3.2), (1.25, 0.05, 4.0)])
    trimmable = frontier([(0.9, 0.05, 3.05), (1.0, 0.05, 3.9), (1.1, 0.025, 4.3)])
    cautious = report(
        metrics(14.3, 0.05, 3.2), metrics(14.3, 0.05, 3.9), baseline_frontier=current, frontier=trimmable
    )
    assert promotion_verdict(cautious).promote, promotion_verdict(cautious).reasons
    worse = frontier([(0.9, 0.075, 3.3), (1.0, 0.05, 3.9), (1.1, 0.025, 4.3)])
    verdict = promotion_verdict(replace(cautious, frontier=worse))
    assert not verdict.promote and verdict.reasons[0].startswith("P90 waste")
    assert "3.90x against 3.20x" in verdict.reasons[0]


def test_smape_tolerance_grows_with_the_noise_of_the_comparison() -> None:
    base = report(metrics(30.0, 0.04, 3.0), metrics(34.0, 0.04, 3.0))
    assert promotion_verdict(base).reasons[0].startswith("median SMAPE")
    assert promotion_verdict(replace(base, smape_noise=5.0)).promote
    # Fixing misses comes first: only a clearly less accurate candidate is refused then.
    fixing = report(metrics(30.0, 0.15, 3.0), metrics(36.0, 0.04, 3.0))
    assert promotion_verdict(fixing).promote
    assert not promotion_verdict(replace(fixing, after=metrics(45.0, 0.04, 3.0))).promote


def test_too_few_phases_cannot_be_judged() -> None:
    few = promotion_verdict(report(metrics(30.0, 0.1, 3.0, phases=9), metrics(20.0, 0.0, 2.0, phases=9)))
    assert not few.promote and few.reasons[0].startswith("held-out evaluation")
    assert str(MIN_JUDGED_PHASES) in few.reasons[0]
    in_sample = promotion_verdict(report(metrics(30.0, 0.1, 3.0), metrics(20.0, 0.0, 2.0), folds=0))
    assert not in_sample.promote


def item(predicted: int, actual: int, *, buffer: float = 1.5, truncated: bool = False) -> HeldOutBudget:
    return HeldOutBudget(
        predicted=predicted,
        buffer=buffer,
        floor=0,
        memory_need=0,
        ceiling=64000,
        actual=actual,
        truncated=truncated,
        clean=not truncated,
        rounding=1,
    )


def test_a_truncation_at_c_is_a_miss_for_budgets_up_to_c_and_costs_c() -> None:
    items = [item(1000, 1000), item(1000, 2000, truncated=True)]
    at_two = judge(items, lambda _item: 2.0, 2.0)
    assert at_two.miss_rate == 0.5  # budget 2000 = the truncation's bound: it still truncates
    assert at_two.lost_share == pytest.approx(2000 / 3000)
    above = judge(items, lambda _item: 2.001, 2.001)
    assert above.miss_rate == 0.0 and above.lost_share == 0.0  # never extrapolated beyond the bound
    assert above.waste_p90 == pytest.approx(2.001)  # waste only over clean outcomes


def test_frontiers_trade_misses_for_waste_and_mark_the_served_point() -> None:
    items = [item(1000, actual) for actual in (500, 900, 1000, 1200, 1400, 1800, 2500, 4000)]
    scaled = mark_chosen(scaled_frontier(items), 1.0)
    assert [p.buffer for p in scaled if p.chosen] == [1.0]
    misses = [p.miss_rate for p in scaled]
    wastes = [p.waste_p90 for p in scaled]
    assert misses == sorted(misses, reverse=True) and wastes == sorted(wastes)
    served = next(p for p in scaled if p.chosen)
    assert served.miss_rate == 3 / 8  # a budget of 1500: 1800, 2500 and 4000 miss
    global_ = global_buffer_frontier(items)
    best = best_within(global_, 0.15)
    assert best is not None and best.miss_rate <= 0.15
    assert all(p.waste_p90 >= best.waste_p90 for p in global_ if p.miss_rate <= 0.15)
    assert waste_at(global_, 0.15) == best.waste_p90
    assert waste_at(global_, -1.0) is None


def test_halving_misses_above_the_operating_point_also_puts_misses_first() -> None:
    halved = report(metrics(17.0, 0.111, 2.7), metrics(20.8, 0.055, 3.6))
    assert promotion_verdict(halved).promote
    not_halved = replace(halved, after=metrics(20.8, 0.08, 3.6))
    assert promotion_verdict(not_halved).reasons[0].startswith("median SMAPE")


def test_no_worse_at_equal_misses_reads_both_frontiers_and_the_served_points() -> None:
    current = frontier([(0.9, 0.10, 2.9), (1.0, 0.08, 3.25), (1.6, 0.04, 5.2)])
    assert no_worse_at_equal_misses(frontier([(0.8, 0.06, 3.4), (1.0, 0.04, 4.1)]), current)
    # As served it misses less, but the current model trimmed to 4 % needs less than its 5.6x.
    assert not no_worse_at_equal_misses(frontier([(0.8, 0.06, 4.5), (1.0, 0.04, 5.6)]), current)
    # No fewer misses than the current model as served, for more waste: dominated.
    assert not no_worse_at_equal_misses(frontier([(0.9, 0.08, 2.8), (1.0, 0.08, 3.5)]), current)
