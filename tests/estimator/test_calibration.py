"""Calibration: recovering known truth, censoring, shrinkage, robustness, held-out metrics, real data."""

from __future__ import annotations

import json
import random
import statistics
from dataclasses import replace
from pathlib import Path

import pytest
from autopack_estimator.calibration import (
    TrainingEvent,
    calibrate,
    evaluate,
    predict_outcomes,
    split_by_phase,
    split_by_time,
    time_split_evaluation,
)
from autopack_estimator.features import PhaseInput, phase_fingerprint
from autopack_estimator.frontier import DEFAULT_MAX_MISS_RATE
from autopack_estimator.metrics import accuracy, smape
from autopack_estimator.model import ModelParameters, TokenModel
from autopack_estimator.synthetic import synthetic_events

LEGACY_SAMPLE = Path(__file__).resolve().parent / "data" / "legacy_sample.ndjson"
DEFAULT = ModelParameters.default()
MODEL = TokenModel(DEFAULT)


def group_events(
    n: int,
    factor: float,
    *,
    seed: int,
    category: str = "tests",
    complexity: str = "low",
    sigma: float = 0.2,
) -> list[TrainingEvent]:
    """Clean events of one group whose truth is the default prediction x ``factor`` x noise."""
    rng = random.Random(seed)
    events = []
    for i in range(n):
        files = 1 + i % 3
        phase = PhaseInput(
            description=f"{category} phase {seed}-{i}",
            category_hint=category,
            complexity=complexity,
            deliverables=tuple(f"tests/pkg/test_{seed}_{i}_{j}.py" for j in range(files)),
        )
        actual = MODEL.predict(phase).predicted_output_tokens * factor * rng.lognormvariate(0.0, sigma)
        events.append(TrainingEvent(phase, max(1, round(actual)), success=True, truncated=False))
    return events


def learned(result, category: str, complexity: str):  # type: ignore[no-untyped-def]
    return next(g for g in result.report.groups if (g.category, g.complexity) == (category, complexity))


def load_legacy() -> list[TrainingEvent]:
    events = []
    for line in LEGACY_SAMPLE.read_text().splitlines():
        row = json.loads(line)
        phase = PhaseInput(
            description=row["description"],
            category_hint=row["category"],
            complexity=row["complexity"],
            deliverables=tuple(row["deliverables"]),
            model=row["model"],
        )
        events.append(TrainingEvent(phase, row["actual_output_tokens"], row["success"], row["truncated"]))
    return events


def test_calibration_recovers_known_group_multipliers() -> None:
    truth = {("implementation", "medium"): 1.3, ("tests", "low"): 0.5, ("docs", "low"): 1.0}
    events = synthetic_events(
        900,
        seed=4,
        truth_factors=truth,
        noise_sigma=0.25,
        phase_sigma=0.0,
        outlier_rate=0.0,
        failure_rate=0.0,
    )
    assert any(e.truncated for e in events)  # some truth lies above the budgets that were sent
    result = calibrate(events, DEFAULT, new_version="cal-test")
    for (category, complexity), factor in truth.items():
        group = learned(result, category, complexity)
        assert group.applied
        assert group.confidence >= 0.7
        assert group.factor == pytest.approx(factor, rel=0.08)
    assert result.report.after.median_smape < result.report.before.median_smape


def test_truncated_events_count_as_lower_bounds() -> None:
    """A badly underestimated group truncates often; ignoring the bounds would learn far too little."""
    events = synthetic_events(
        900,
        seed=4,
        truth_factors={("implementation", "medium"): 1.8},
        noise_sigma=0.25,
        phase_sigma=0.0,
        outlier_rate=0.0,
        failure_rate=0.0,
        retry_rate=0.0,
    )
    group = [
        e
        for e in events
        if MODEL.predict(e.phase).category == "implementation" and e.phase.complexity == "medium"
    ]
    truncated_share = sum(e.truncated for e in group) / len(group)
    assert truncated_share > 0.1
    clean_only = statistics.median(
        e.actual_output_tokens / MODEL.predict(e.phase).predicted_output_tokens for e in group if e.clean
    )
    factor = learned(calibrate(events, DEFAULT, new_version="c"), "implementation", "medium").factor
    assert abs(factor - 1.8) < abs(clean_only - 1.8)
    assert factor == pytest.approx(1.8, rel=0.15)


def test_few_samples_are_shrunk_toward_the_prior() -> None:
    few_events = group_events(6, 3.0, seed=1, sigma=0.4)
    sample_median = statistics.median(
        e.actual_output_tokens / MODEL.predict(e.phase).predicted_output_tokens for e in few_events
    )
    few = learned(calibrate(few_events, DEFAULT, new_version="c", min_confidence=0.0), "tests", "low")
    many = learned(
        calibrate(group_events(80, 3.0, seed=1, sigma=0.4), DEFAULT, new_version="c"), "tests", "low"
    )
    assert 1.0 < few.factor < 0.9 * sample_median  # pulled toward the current model (1.0)
    assert many.factor == pytest.approx(3.0, rel=0.1)  # enough evidence: the data wins
    assert few.confidence < many.confidence


def test_groups_below_min_samples_keep_the_prior() -> None:
    events = group_events(3, 3.0, seed=2)
    result = calibrate(events, DEFAULT, new_version="c", min_samples=5)
    group = learned(result, "tests", "low")
    assert (group.samples, group.applied) == (3, False)
    assert any("tests/low" in note and "min_samples" in note for note in result.report.notes)
    assert result.candidate.corrections == ()
    for event in group_events(5, 1.0, seed=20):  # phases it has not seen (no phase memory)
        assert TokenModel(result.candidate).predict(event.phase) == MODEL.predict(event.phase)


def test_groups_below_min_confidence_keep_the_prior() -> None:
    events = group_events(8, 2.0, seed=3, sigma=0.8)
    result = calibrate(events, DEFAULT, new_version="c", min_samples=5, min_confidence=0.95)
    assert not learned(result, "tests", "low").applied
    assert any("tests/low" in note and "min_confidence" in note for note in result.report.notes)


def test_outliers_do_not_drag_the_factor() -> None:
    events = group_events(100, 1.5, seed=4, sigma=0.15)
    wild = [replace(e, actual_output_tokens=e.actual_output_tokens * 30) for e in events[:12]]
    result = calibrate(events[12:] + wild, DEFAULT, new_version="c")
    # Chasing the wild 12 % with buffers costs more than it buys: the guard refuses the re-learned
    # candidate and only the margins are re-learned. Its factor still ignored the outliers.
    assert result.declined is not None and not result.declined.report.verdict.promote
    assert learned(result.declined, "tests", "low").factor == pytest.approx(1.5, rel=0.1)
    assert learned(result, "tests", "low").factor == 1.0


def test_learned_buffers_follow_the_residual_spread() -> None:
    tight = calibrate(group_events(120, 1.0, seed=5, sigma=0.05), DEFAULT, new_version="c")
    loose = calibrate(group_events(120, 1.0, seed=5, sigma=0.5), DEFAULT, new_version="c")
    phase = group_events(1, 1.0, seed=99)[0].phase
    tight_buffer = TokenModel(tight.candidate).predict(phase).buffer_multiplier
    loose_buffer = TokenModel(loose.candidate).predict(phase).buffer_multiplier
    assert 1.0 < tight_buffer < 1.4 < loose_buffer


def test_evaluate_re_predicts_every_event() -> None:
    events = synthetic_events(120, seed=6)
    outcomes = predict_outcomes(MODEL, events)
    assert len(outcomes) == len(events)
    for event, scored in zip(events, outcomes, strict=True):
        prediction = MODEL.predict(event.phase)
        assert scored.predicted_output_tokens == prediction.predicted_output_tokens
        assert scored.selected_budget == prediction.selected_budget
        assert scored.actual_output_tokens == event.actual_output_tokens
    assert evaluate(MODEL, events) == accuracy(outcomes)
    doubled = TokenModel(
        replace(
            DEFAULT,
            corrections=(),
            base_tokens={k: {c: 2 * v for c, v in t.items()} for k, t in DEFAULT.base_tokens.items()},
        )
    )
    assert evaluate(doubled, events) != evaluate(MODEL, events)


def test_report_is_held_out_and_describes_the_candidate() -> None:
    events = synthetic_events(400, seed=7)
    result = calibrate(events, DEFAULT, new_version="cal-20260101-x")
    report = result.report
    assert result.candidate.version == "cal-20260101-x"
    assert result.candidate.parent_version == report.base_version == "default-1"
    assert report.folds == 5
    assert report.training_events == sum(1 for e in events if e.clean)
    distinct = len({phase_fingerprint(e.phase) for e in events})
    assert report.before.events == report.after.events == distinct < len(events)  # each phase once
    assert report.after.median_smape < report.before.median_smape
    assert any("predicted by a model calibrated without it" in note for note in report.notes)
    assert any("ran out of tokens" in note for note in report.notes)
    assert ModelParameters.from_json(result.candidate.to_json()) == result.candidate
    categories = {g.category for g in report.groups}
    assert "*" in categories
    assert {"implementation", "tests", "docs"} <= categories


def test_folds_adapt_to_the_number_of_distinct_phases() -> None:
    one_phase = group_events(1, 1.0, seed=8) * 6
    report = calibrate(one_phase, DEFAULT, new_version="c", min_samples=1).report
    assert report.folds == 0
    assert any("the phases the candidate learned from" in note for note in report.notes)
    assert report.verdict is not None and not report.verdict.promote  # nothing to judge it on
    assert calibrate(group_events(10, 1.0, seed=8), DEFAULT, new_version="c").report.folds == 3
    assert calibrate(group_events(30, 1.0, seed=8), DEFAULT, new_version="c").report.folds == 10


def test_recalibrating_a_calibrated_model_composes() -> None:
    events = group_events(80, 2.0, seed=9)
    first = calibrate(events, DEFAULT, new_version="cal-1").candidate
    second = calibrate(events, first, new_version="cal-2")
    assert second.candidate.parent_version == "cal-1"
    assert learned(second, "tests", "low").factor == pytest.approx(1.0, abs=0.1)  # relative to cal-1
    probe = group_events(1, 1.0, seed=10)[0].phase
    first_tokens = TokenModel(first).predict(probe).predicted_output_tokens
    assert TokenModel(second.candidate).predict(probe).predicted_output_tokens == pytest.approx(
        first_tokens, rel=0.1
    )


def test_bad_arguments_are_refused() -> None:
    events = group_events(5, 1.0, seed=11)
    with pytest.raises(ValueError, match="new_version"):
        calibrate(events, DEFAULT, new_version=" ")
    with pytest.raises(ValueError, match="min_samples"):
        calibrate(events, DEFAULT, new_version="c", min_samples=0)
    with pytest.raises(ValueError, match="min_confidence"):
        calibrate(events, DEFAULT, new_version="c", min_confidence=1.5)


def test_quality_bar_on_held_out_synthetic_telemetry() -> None:
    """Calibrate on 70 % of the phases, judge on the other 30 %: all three targets at once."""
    events = synthetic_events(1500, seed=21, noise_sigma=0.15, phase_sigma=0.2)
    train, test = split_by_phase(events, 0.3, seed=1)
    candidate = calibrate(train, DEFAULT, new_version="c").candidate
    after = evaluate(TokenModel(candidate), test)
    before = evaluate(MODEL, test)
    assert after.median_smape < 30.0
    assert after.median_smape < before.median_smape
    assert after.budget_miss_rate <= DEFAULT_MAX_MISS_RATE
    assert after.waste_p90 <= 3.0


def test_exact_repeats_use_their_own_history() -> None:
    events = synthetic_events(900, seed=12, retry_rate=0.5)
    rng = random.Random(0)
    shuffled = events[:]
    rng.shuffle(shuffled)
    train, test = shuffled[:600], shuffled[600:]
    candidate = calibrate(train, DEFAULT, new_version="c").candidate
    remembered = {m.fingerprint for m in candidate.phase_memory}
    repeats = [e for e in test if phase_fingerprint(e.phase) in remembered]
    assert len(repeats) > 50
    with_memory = evaluate(TokenModel(candidate), repeats)
    without = evaluate(TokenModel(replace(candidate, phase_memory=())), repeats)
    assert with_memory.median_smape < without.median_smape
    assert candidate.memory_within_sigma == pytest.approx(0.2, abs=0.05)  # the generator's attempt noise


def test_split_by_phase_keeps_attempts_together() -> None:
    events = synthetic_events(300, seed=13, retry_rate=0.6)
    train, test = split_by_phase(events, 0.3, seed=2)
    assert len(train) + len(test) == len(events)
    assert not {phase_fingerprint(e.phase) for e in train} & {phase_fingerprint(e.phase) for e in test}


def test_synthetic_events_are_realistic_and_deterministic() -> None:
    events = synthetic_events(400, seed=14)
    assert events == synthetic_events(400, seed=14)
    assert len(events) == 400
    assert any(e.truncated for e in events)
    assert any(not e.success and not e.truncated for e in events)
    assert len({phase_fingerprint(e.phase) for e in events}) < len(events)  # retries
    assert {MODEL.predict(e.phase).category for e in events} >= {"implementation", "docs", "doc_synthesis"}
    assert all(e.actual_output_tokens > 0 for e in events)


def test_legacy_sample_sanity_for_the_default_model() -> None:
    """18 real events: duplicates (retries), failures, truncations, category IMPLEMENT_FEATURE."""
    events = load_legacy()
    assert len(events) == 18
    assert len({phase_fingerprint(e.phase) for e in events}) < len(events)
    outcomes = predict_outcomes(MODEL, events)
    categories = {MODEL.predict(e.phase).category for e in events}
    assert "IMPLEMENT_FEATURE" not in categories
    assert {"implementation", "doc_synthesis", "doc_sot_update", "docs"} <= categories
    for event, scored in zip(events, outcomes, strict=True):
        if event.truncated:  # every legacy truncation would have had room under the new budget
            assert scored.selected_budget > event.actual_output_tokens
    metrics = accuracy(outcomes)
    legacy_smapes = []
    for line in LEGACY_SAMPLE.read_text().splitlines():
        row = json.loads(line)
        if row["success"] and not row["truncated"]:
            legacy_smapes.append(smape(row["predicted_output_tokens"], row["actual_output_tokens"]))
    assert metrics.clean_events == 7
    assert metrics.median_smape < 50.0
    assert metrics.median_smape < statistics.median(legacy_smapes)  # better than the original estimator
    assert metrics.budget_miss_rate <= 0.1


def test_legacy_sample_calibrates_without_surprises() -> None:
    events = load_legacy()
    result = calibrate(events, DEFAULT, new_version="cal-legacy", min_samples=2)
    assert result.report.training_events == 7
    assert result.report.folds >= 2
    assert any("8 ran out of tokens" in note for note in result.report.notes)
    assert ModelParameters.from_json(result.candidate.to_json()) == result.candidate
    after = evaluate(TokenModel(result.candidate), events)
    assert after.budget_miss_rate == 0.0  # history of these very phases is remembered


def sized_events(
    n: int, exponent: float, *, seed: int, sigma: float = 0.15, truncate_above: int = 0
) -> list[TrainingEvent]:
    """Clean events whose truth grows with the deliverable count as count ** exponent (1-16 files)."""
    rng = random.Random(seed)
    events = []
    for i in range(n):
        files = rng.choice((1, 2, 3, 4, 6, 8, 12, 16))
        phase = PhaseInput(
            description=f"tests phase {seed}-{i}",
            category_hint="tests",
            complexity=("low", "medium")[i % 2],
            deliverables=tuple(f"tests/pkg/test_{seed}_{i}_{j}.py" for j in range(files)),
        )
        truth = MODEL.predict(phase).predicted_output_tokens * (files / 4) ** exponent
        actual = max(1, round(truth * rng.lognormvariate(0.0, sigma)))
        if truncate_above and actual > truncate_above:
            events.append(TrainingEvent(phase, truncate_above, success=False, truncated=True))
        else:
            events.append(TrainingEvent(phase, actual, success=True, truncated=False))
    return events


def test_split_by_time_keeps_the_order() -> None:
    events = synthetic_events(100, seed=30, shape="legacy")
    earlier, later = split_by_time(events, 0.3)
    assert earlier + later == events
    assert len(later) == 30
    with pytest.raises(ValueError, match="holdout_fraction"):
        split_by_time(events, 1.0)


def test_time_split_calibrates_on_the_past_and_judges_the_rest() -> None:
    events = synthetic_events(600, seed=31, shape="legacy")
    split = time_split_evaluation(events, DEFAULT, fraction=0.7)
    assert split is not None
    earlier, later = events[:420], events[420:]
    assert (split.calibration_events, split.held_out_events) == (420, 180)
    seen = {phase_fingerprint(e.phase) for e in earlier}
    assert split.repeats == sum(1 for e in later if phase_fingerprint(e.phase) in seen) > 0
    assert split.before == evaluate(MODEL, later)
    candidate = calibrate(earlier, DEFAULT, new_version="c", time_split_fraction=None).candidate
    assert split.after == evaluate(TokenModel(candidate), later)  # the future never taught the candidate
    assert split.after_repeats.events == split.repeats
    assert split.after_new.events == 180 - split.repeats
    assert time_split_evaluation(events[:3], DEFAULT) is None  # too little on either side
    with pytest.raises(ValueError, match="fraction"):
        time_split_evaluation(events, DEFAULT, fraction=0.0)


def test_the_report_carries_both_held_out_views() -> None:
    events = synthetic_events(300, seed=32, shape="legacy")
    report = calibrate(events, DEFAULT, new_version="c").report
    assert report.time_split is not None
    assert report.time_split.held_out_events == 90
    assert any(note.startswith("time split") and "P90 waste" in note for note in report.notes)
    assert calibrate(events, DEFAULT, new_version="c", time_split_fraction=None).report.time_split is None
    with pytest.raises(ValueError, match="time_split_fraction"):
        calibrate(events, DEFAULT, new_version="c", time_split_fraction=1.5)


def test_the_frontier_is_reported_with_the_served_point_and_buffers_follow_the_spread() -> None:
    noisy = calibrate(
        group_events(240, 1.0, seed=33, sigma=0.6), DEFAULT, new_version="c", time_split_fraction=None
    )
    tight = calibrate(
        group_events(240, 1.0, seed=33, sigma=0.08), DEFAULT, new_version="c", time_split_fraction=None
    )
    for result in (noisy, tight):
        report = result.report
        assert len(report.baseline_frontier) == len(report.frontier) > 5
        served = [p for p in report.frontier if p.chosen]
        assert len(served) == 1 and served[0].buffer == 1.0
        assert served[0].miss_rate == report.after.budget_miss_rate
        assert served[0].waste_p90 == pytest.approx(report.after.waste_p90)
        misses = [p.miss_rate for p in report.frontier]
        wastes = [p.waste_p90 for p in report.frontier]
        assert misses == sorted(misses, reverse=True) and wastes == sorted(
            wastes
        )  # more buffer, fewer misses
        current = next(p for p in report.baseline_frontier if p.chosen)
        assert current.miss_rate == report.before.budget_miss_rate
    assert tight.report.after.budget_miss_rate <= DEFAULT_MAX_MISS_RATE
    assert tight.report.after.waste_p90 < 3.0
    phase = group_events(1, 1.0, seed=99)[0].phase
    tight_buffer = TokenModel(tight.candidate).predict(phase).buffer_multiplier
    assert tight_buffer < 1.6 < TokenModel(noisy.candidate).predict(phase).buffer_multiplier


def test_size_elasticity_is_learned_within_groups_with_truncations_as_bounds() -> None:
    steep = calibrate(sized_events(400, -0.3, seed=34), DEFAULT, new_version="c", time_split_fraction=None)
    assert steep.candidate.count_exponent == pytest.approx(-0.3, abs=0.08)
    assert any("per file than the model assumed" in note for note in steep.report.notes)
    flat = calibrate(sized_events(400, 0.0, seed=35), DEFAULT, new_version="c", time_split_fraction=None)
    assert abs(flat.candidate.count_exponent) < 0.05
    # The largest phases truncate at 6000: read as lower bounds they must not fake a negative slope
    # (dropping them would: the clean survivors of a large phase are its smallest attempts).
    capped = sized_events(400, 0.0, seed=35, truncate_above=6000)
    bounded = calibrate(capped, DEFAULT, new_version="c", time_split_fraction=None)
    clean_only = calibrate([e for e in capped if e.clean], DEFAULT, new_version="c", time_split_fraction=None)
    assert abs(bounded.candidate.count_exponent) < 0.03
    assert clean_only.candidate.count_exponent < -0.06


def test_retries_learn_their_offset_and_their_own_budget_policy() -> None:
    rng = random.Random(36)
    events = []
    for i in range(150):
        phase = PhaseInput(
            description=f"feature {i}",
            category_hint="implementation",
            complexity="medium",
            deliverables=(f"src/pkg/m{i}.py", f"tests/test_m{i}.py"),
        )
        truth = MODEL.predict(phase).predicted_output_tokens * rng.lognormvariate(0.0, 0.4)
        for attempt in range(3):  # cumulative deliverables: retries write about half as much
            share = 1.0 if attempt == 0 else 0.5
            actual = round(truth * share * rng.lognormvariate(0.0, 0.1))
            events.append(TrainingEvent(phase, actual, success=True, truncated=False))
    result = calibrate(events, DEFAULT, new_version="c", time_split_fraction=None)
    assert 0.45 < result.candidate.memory_repeat_factor < 0.8
    assert result.candidate.memory_buffer_z > 0
    assert result.candidate.memory_margin in (0.0, 1.0, 1.15)
    assert any(note.startswith("retries judged on their own") for note in result.report.notes)
