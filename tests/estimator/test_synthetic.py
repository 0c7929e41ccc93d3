"""Synthetic telemetry: both shapes are deterministic, and the legacy shape looks like the legacy export."""

from __future__ import annotations

import itertools
import math
import statistics
from collections import defaultdict

import pytest
from autopack_estimator.calibration import TrainingEvent
from autopack_estimator.features import phase_fingerprint
from autopack_estimator.metrics import is_budget_miss
from autopack_estimator.model import ModelParameters, TokenModel
from autopack_estimator.synthetic import SHAPES, oracle_accuracy, synthetic_events, synthetic_samples

MODEL = TokenModel(ModelParameters.default())


def by_phase(events: list[TrainingEvent]) -> dict[str, list[tuple[int, TrainingEvent]]]:
    attempts: dict[str, list[tuple[int, TrainingEvent]]] = defaultdict(list)
    for index, event in enumerate(events):
        attempts[phase_fingerprint(event.phase)].append((index, event))
    return attempts


@pytest.fixture(scope="module")
def legacy() -> list[TrainingEvent]:
    return synthetic_events(1500, seed=3, shape="legacy")


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_is_deterministic_and_sized(shape: str) -> None:
    events = synthetic_events(300, seed=5, shape=shape)
    assert events == synthetic_events(300, seed=5, shape=shape)
    assert events != synthetic_events(300, seed=6, shape=shape)
    assert len(events) == 300
    assert all(e.actual_output_tokens > 0 for e in events)
    assert synthetic_events(0, shape=shape) == []


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="shape"):
        synthetic_events(10, shape="nope")
    with pytest.raises(ValueError, match="n"):
        synthetic_events(-1)


def test_legacy_shape_retries_phases_interleaved_in_time(legacy: list[TrainingEvent]) -> None:
    attempts = by_phase(legacy)
    retried = [seen for seen in attempts.values() if len(seen) > 1]
    assert len(retried) / len(attempts) > 0.2
    assert len(legacy) / len(attempts) > 1.3  # like the sample: phases come back several times
    interleaved = sum(1 for seen in retried if seen[-1][0] - seen[0][0] >= len(seen) + 3)
    assert interleaved / len(retried) > 0.5  # other phases run in between
    late = sum(1 for seen in retried if seen[-1][0] - seen[0][0] > len(legacy) // 10)
    assert late > 10  # some come back much later (a split by time finds them on both sides)


def test_legacy_shape_truncates_at_an_older_estimators_budgets(legacy: list[TrainingEvent]) -> None:
    truncated = [e for e in legacy if e.truncated]
    assert 0.03 < len(truncated) / len(legacy) < 0.25
    assert all(not e.success for e in truncated)
    assert all(e.actual_output_tokens >= 8192 for e in truncated)  # the old minimum budget
    ours = sum(1 for e in truncated if e.actual_output_tokens == MODEL.predict(e.phase).actual_max_tokens)
    assert ours < len(truncated) / 4  # not our default's budgets: the default can miss on them
    simple = [e for e in synthetic_events(1500, seed=3) if e.truncated]
    assert all(e.actual_output_tokens == MODEL.predict(e.phase).actual_max_tokens for e in simple)


def test_legacy_shape_has_small_failures_and_smaller_retries(legacy: list[TrainingEvent]) -> None:
    failed = [e for e in legacy if not e.success and not e.truncated]
    assert len(failed) / len(legacy) > 0.04
    ratios = []
    shrunk_after_truncation = 0
    for seen in by_phase(legacy).values():
        clean = [e.actual_output_tokens for _, e in seen if e.clean]
        if clean:
            ratios += [
                e.actual_output_tokens / statistics.median(clean)
                for _, e in seen
                if not e.success and not e.truncated
            ]
        for (_, first), (_, second) in itertools.pairwise(seen):
            if first.truncated and second.clean and second.actual_output_tokens < first.actual_output_tokens:
                shrunk_after_truncation += 1
    assert sum(1 for r in ratios if r < 0.4) > len(ratios) / 4  # many failures stop early
    assert shrunk_after_truncation > 5  # cumulative deliverables: the retry writes what is missing


def test_legacy_shape_has_a_heavier_tail_than_the_simple_one() -> None:
    def spread(events: list[TrainingEvent]) -> float:
        logs = sorted(
            e.actual_output_tokens / MODEL.predict(e.phase).predicted_output_tokens for e in events if e.clean
        )
        return logs[int(0.95 * len(logs))] / logs[int(0.05 * len(logs))]

    assert spread(synthetic_events(1500, seed=2, shape="legacy")) > spread(synthetic_events(1500, seed=2))


NOISELESS = {"phase_sigma": 0.0, "noise_sigma": 0.0, "outlier_rate": 0.0, "failure_rate": 0.0}


@pytest.mark.parametrize("shape", SHAPES)
def test_samples_carry_the_events_that_telemetry_records(shape: str) -> None:
    samples = synthetic_samples(400, seed=9, shape=shape)
    assert [sample.event for sample in samples] == synthetic_events(400, seed=9, shape=shape)
    assert all(sample.need_tokens > 0 for sample in samples)


def test_need_is_what_a_phase_of_these_features_writes_without_noise() -> None:
    simple = [s for s in synthetic_samples(600, seed=4, **NOISELESS) if s.event.clean]
    assert simple and all(s.event.actual_output_tokens == max(50, round(s.need_tokens)) for s in simple)
    # legacy: only the heavy-tailed phases (10 %) and partial retries write something else
    legacy = [s for s in synthetic_samples(1500, seed=4, shape="legacy", **NOISELESS) if s.event.clean]
    exact = sum(1 for s in legacy if s.event.actual_output_tokens == max(50, round(s.need_tokens)))
    assert exact / len(legacy) > 0.8


def misses_at(samples: list, buffer: float) -> float:
    over = sum(
        1
        for s in samples
        if is_budget_miss(math.ceil(s.need_tokens * buffer), s.event.actual_output_tokens, s.event.truncated)
    )
    return over / len(samples)


@pytest.mark.parametrize("target", [0.0, 0.02, 0.1])
def test_the_oracle_takes_the_smallest_buffer_that_meets_the_miss_rate(target: float) -> None:
    samples = synthetic_samples(1500, seed=8, shape="legacy")
    result = oracle_accuracy(samples, target)
    assert result.metrics.budget_miss_rate <= target
    assert result.metrics.budget_miss_rate == misses_at(samples, result.buffer)
    assert misses_at(samples, result.buffer * 0.99) > target
    assert result.metrics.events == len(samples)


def test_a_noiseless_oracle_is_exact_and_wastes_nothing() -> None:
    samples = synthetic_samples(600, seed=4, **NOISELESS)
    result = oracle_accuracy(samples, 0.0)
    assert result.buffer == pytest.approx(1.0, abs=1e-3)
    assert result.metrics.median_smape < 0.1
    assert result.metrics.waste_p90 == pytest.approx(1.0, abs=0.01)


def test_a_wider_spread_costs_the_oracle_more_waste_at_the_same_misses() -> None:
    tight = oracle_accuracy(synthetic_samples(1500, seed=8, phase_sigma=0.1, noise_sigma=0.1))
    wide = oracle_accuracy(synthetic_samples(1500, seed=8))
    assert tight.metrics.waste_p90 < 2.0 < 2.5 < wide.metrics.waste_p90


def test_the_oracle_refuses_nothing_to_judge_and_a_bad_miss_rate() -> None:
    with pytest.raises(ValueError, match="no samples"):
        oracle_accuracy([])
    samples = synthetic_samples(10, seed=1)
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="target_miss_rate"):
            oracle_accuracy(samples, bad)
