"""The legacy-shaped test set and the run-grouped protocol real telemetry was judged by.

The generator must reproduce the traits of the real export (small sets, thin categories, labels
outside the vocabulary, identical retries, small failures, truncations at old ceilings, a heavy
tail), and on it -- and on the shared sample -- a calibrated model, served through the promotion
guard as PromoteModel would, never has a higher P90 waste than the default at equal or lower
misses, and never a buffer above the cap.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from autopack_estimator.calibration import (
    LARGE_EVIDENCE,
    MAX_BUFFER,
    MAX_BUFFER_GROWTH,
    calibrate,
    distinct_phases,
)
from autopack_estimator.crossval import (
    RunCrossValidation,
    RunEvent,
    cross_validate_by_run,
    folds_by_run,
    pooled,
)
from autopack_estimator.features import normalize_category, phase_fingerprint
from autopack_estimator.frontier import FrontierPoint, no_worse_at_equal_misses, served_point, waste_at
from autopack_estimator.model import ModelParameters, TokenModel
from autopack_estimator.service import imported_record, training_event
from autopack_estimator.synthetic import HEAVY_TAIL_FACTOR, OLD_CEILINGS, legacy_run_telemetry
from autopack_estimator.telemetry_io import read_ndjson

DEFAULT = ModelParameters.default()
SEEDS = range(8)
LEGACY_SAMPLE = Path(__file__).resolve().parent / "data" / "legacy_sample.ndjson"


def as_run_events(messages: Sequence) -> list[RunEvent]:  # type: ignore[type-arg]
    """Telemetry messages as the service imports them (validated, oldest first), with their run."""
    records = sorted((imported_record(m) for m in messages), key=lambda r: r.timestamp)
    return [RunEvent(r.run_id or r.phase_id, training_event(r)) for r in records]


@pytest.fixture(scope="module")
def legacy_sets() -> dict[int, list]:  # type: ignore[type-arg]
    return {seed: legacy_run_telemetry(seed) for seed in SEEDS}


@pytest.fixture(scope="module")
def results(legacy_sets) -> dict[int, RunCrossValidation]:  # type: ignore[no-untyped-def]
    return {
        seed: cross_validate_by_run(as_run_events(events), DEFAULT) for seed, events in legacy_sets.items()
    }


@pytest.fixture(scope="module")
def sample_result() -> RunCrossValidation:
    with LEGACY_SAMPLE.open(encoding="utf-8") as handle:
        messages = [line.event for line in read_ndjson(handle) if line.event is not None]
    return cross_validate_by_run(as_run_events(messages), DEFAULT)


def test_the_generator_has_the_real_exports_traits(legacy_sets) -> None:  # type: ignore[no-untyped-def]
    for seed, events in legacy_sets.items():
        runs = as_run_events(events)
        fold_of = folds_by_run([e.run_id for e in runs])
        training_sizes = [sum(1 for e in runs if fold_of[e.run_id] != fold) for fold in range(5)]
        assert all(45 <= size <= 75 for size in training_sizes), (seed, training_sizes)
        labels = {e.category for e in events}
        assert labels - {normalize_category(label) for label in labels}, "labels outside the vocabulary"
        model = TokenModel(DEFAULT)
        phases = {phase_fingerprint(e.event.phase): e.event for e in runs}
        per_category = Counter(model.predict(event.phase).category for event in phases.values())
        assert min(per_category.values()) <= 3  # thin categories
        copies = Counter(e.phase_id for e in events)
        assert max(copies.values()) <= 6
        small_failures = [e for e in events if not e.success and not e.truncated]
        assert all(e.actual_output_tokens >= 100 for e in small_failures)
        truncations = Counter(e.actual_output_tokens for e in events if e.truncated)
        assert all(bound <= max(OLD_CEILINGS) for bound in truncations)
        heavy = [
            e
            for e in runs
            if e.event.clean
            and e.event.actual_output_tokens
            > 0.7 * HEAVY_TAIL_FACTOR * model.predict(e.event.phase).predicted_output_tokens
        ]
        assert heavy and all(model.predict(e.event.phase).category == "docs" for e in heavy)
    every = [e for events in legacy_sets.values() for e in events]
    assert {"IMPLEMENT_FEATURE", "documentation", "DOCUMENTATION"} <= {e.category for e in every}
    assert (
        max(Counter((id(events), e.phase_id) for events in legacy_sets.values() for e in events).values())
        == 6
    )
    assert any(100 <= e.actual_output_tokens <= 900 and not e.success for e in every)
    ceilings = Counter(e.actual_output_tokens for e in every if e.truncated)
    assert all(ceilings[ceiling] >= 3 for ceiling in OLD_CEILINGS)  # several copies at each old ceiling


def test_the_generator_is_deterministic() -> None:
    assert legacy_run_telemetry(3) == legacy_run_telemetry(3)
    assert legacy_run_telemetry(3) != legacy_run_telemetry(4)
    with pytest.raises(ValueError, match="runs"):
        legacy_run_telemetry(0, runs=0)


def test_on_the_legacy_shaped_set_calibration_never_wastes_more_than_the_default_at_equal_misses(
    results,
) -> None:  # type: ignore[no-untyped-def]
    overall = pooled(list(results.values()))
    calibrated = served_point(overall.calibrated_frontier)
    assert calibrated.miss_rate == overall.calibrated.budget_miss_rate
    assert no_worse_at_equal_misses(overall.calibrated_frontier, overall.default_frontier)
    assert calibrated.waste_p90 <= waste_at(overall.default_frontier, calibrated.miss_rate)  # as served too
    for miss_rate in (0.05, 0.1, 0.2):  # the whole frontier, not only the served point
        assert waste_at(overall.calibrated_frontier, miss_rate) <= waste_at(
            overall.default_frontier, miss_rate
        )
    default = served_point(overall.default_frontier)
    assert calibrated.miss_rate < default.miss_rate  # fewer misses ...
    assert overall.calibrated.median_smape <= overall.default.median_smape + 2.0  # ... no worse predictions
    assert sum(r.promoted for r in results.values()) >= 0.6 * 5 * len(results)


@pytest.mark.parametrize("seed", SEEDS)
def test_on_every_legacy_shaped_set_calibration_never_wastes_more_than_the_default(results, seed) -> None:  # type: ignore[no-untyped-def]
    """Per set, not only pooled: each is one small export, judged as the real one was."""
    result = results[seed]
    assert no_worse_at_equal_misses(result.calibrated_frontier, result.default_frontier), (
        served_point(result.default_frontier),
        served_point(result.calibrated_frontier),
    )
    assert result.calibrated.budget_miss_rate <= result.default.budget_miss_rate


def test_when_re_learned_predictions_fail_the_guard_only_the_safety_margins_are_re_learned(
    legacy_sets,
) -> None:  # type: ignore[no-untyped-def]
    """Seed 2 fits the default well: re-learned factors are noise there and the guard refuses them."""
    runs = as_run_events(legacy_sets[2])
    fold_of = folds_by_run([e.run_id for e in runs])
    train = [e.event for e in runs if fold_of[e.run_id] != 2]
    result = calibrate(train, DEFAULT, new_version="margins", time_split_fraction=None)
    assert result.report.notes[0].startswith("re-learned predictions were not kept -- median SMAPE")
    assert result.report.verdict is not None and result.report.verdict.promote, result.report.verdict
    candidate = result.candidate
    assert candidate.count_exponent == DEFAULT.count_exponent
    assert candidate.corrections and {c.factor for c in candidate.corrections} == {1.0}
    assert result.report.after.median_smape == result.report.before.median_smape  # same predictions
    assert result.report.after.budget_miss_rate < result.report.before.budget_miss_rate
    default, margins = TokenModel(DEFAULT), TokenModel(replace(candidate, phase_memory=()))
    held = [e.event for e in runs if fold_of[e.run_id] == 2]
    for event in held:
        before, after = default.predict(event.phase), margins.predict(event.phase)
        assert after.predicted_output_tokens == before.predicted_output_tokens
        assert after.selected_budget >= before.selected_budget


def test_on_the_shared_sample_calibration_never_wastes_more_than_the_default(sample_result) -> None:  # type: ignore[no-untyped-def]
    assert sample_result.phases == 9
    assert no_worse_at_equal_misses(sample_result.calibrated_frontier, sample_result.default_frontier)
    # 9 phases cannot show a candidate is better: the guard keeps the default served.
    assert sample_result.promoted == 0
    assert all(r.verdict.reasons[0].startswith("held-out evaluation") for r in sample_result.reports)


def test_buffers_never_exceed_the_cap(results, sample_result) -> None:  # type: ignore[no-untyped-def]
    for result in [*results.values(), sample_result]:
        for candidate, report in zip(result.candidates, result.reports, strict=True):
            assert all(c.buffer <= MAX_BUFFER for c in candidate.corrections)
            for group in report.groups:
                if group.buffer:
                    assert group.buffer <= group.buffer_cap + 1e-9 <= MAX_BUFFER + 1e-9
                    learned = next(
                        c
                        for c in candidate.corrections
                        if (c.category, c.complexity) == (group.category, group.complexity)
                    )
                    assert learned.buffer == pytest.approx(group.buffer)


def test_the_cap_is_x1_5_what_the_current_model_serves_those_phases(legacy_sets) -> None:  # type: ignore[no-untyped-def]
    events = [e.event for e in as_run_events(legacy_sets[1])]
    result = calibrate(events, DEFAULT, new_version="c", time_split_fraction=None)
    model = TokenModel(DEFAULT)
    phases = distinct_phases(events)
    checked = 0
    for group in result.report.groups:
        if not group.buffer:
            continue
        members = [
            e
            for e in phases
            if (e.clean or e.truncated)
            and group.category in ("*", model.predict(e.phase).category)
            and group.complexity in ("*", model.predict(e.phase).complexity)
        ]
        assert len(members) < LARGE_EVIDENCE
        reference = statistics.median(model.predict(e.phase).buffer_multiplier for e in members)
        assert group.buffer_cap == pytest.approx(min(MAX_BUFFER, MAX_BUFFER_GROWTH * reference), abs=1e-3)
        assert group.buffer <= group.buffer_cap + 1e-9
        checked += 1
    assert checked >= 2


def test_the_served_point_is_what_estimate_would_answer(legacy_sets) -> None:  # type: ignore[no-untyped-def]
    runs = as_run_events(legacy_sets[0])
    result = cross_validate_by_run(runs, DEFAULT, force=True)
    assert result.promoted == 5
    default = served_point(result.default_frontier)
    assert default.miss_rate == result.default.budget_miss_rate
    assert default.waste_p90 == pytest.approx(result.default.waste_p90)
    assert result.default.events == result.phases < result.events  # each phase once
    assert result.default_events.events == result.events
    hindsight = result.hindsight
    assert hindsight is not None and hindsight.miss_rate <= 0.05
    assert [p for p in result.hindsight_frontier if p.chosen] == [
        FrontierPoint(
            hindsight.buffer,
            hindsight.miss_rate,
            hindsight.waste_p50,
            hindsight.waste_p90,
            hindsight.lost_share,
            True,
        )
    ]


def test_folds_group_whole_runs_and_balance_them() -> None:
    runs = ["a"] * 10 + ["b"] * 8 + ["c"] * 5 + ["d"] * 5 + ["e"] * 3 + ["f"] * 2
    folds = folds_by_run(runs, 5)
    assert set(folds) == set("abcdef") and set(folds.values()) == set(range(5))
    assert folds["f"] == folds["e"]  # the two smallest runs share the emptiest fold
    with pytest.raises(ValueError, match="runs"):
        folds_by_run(["a", "b"], 5)
    with pytest.raises(ValueError, match="folds"):
        folds_by_run(runs, 1)


def test_the_sample_fixture_is_the_shared_file() -> None:
    shared = Path("/work/shared/data/telemetry/legacy_sample.ndjson")
    if shared.exists():
        assert shared.read_text(encoding="utf-8") == LEGACY_SAMPLE.read_text(encoding="utf-8")
    assert len([json.loads(line) for line in LEGACY_SAMPLE.read_text(encoding="utf-8").splitlines()]) == 18
