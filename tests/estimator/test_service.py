"""EstimatorService over a real channel: behaviour, bad input, model lifecycle, replicas."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from autopack.estimator.v1 import estimator_pb2
from autopack_estimator.features import normalize_category
from autopack_estimator.telemetry_io import event_to_record, read_ndjson
from opentelemetry.sdk.trace import TracerProvider

TIMEOUT = 30


def estimate_request(**overrides: object) -> estimator_pb2.EstimateRequest:
    values: dict[str, object] = {
        "run_id": "run-1",
        "phase_id": "p1-add-module",
        "description": "Add a retry helper with exponential backoff",
        "complexity": "medium",
        "deliverables": ["src/app/retry.py", "tests/test_retry.py"],
        "scope_paths": ["src/app/", "tests/"],
        "model": "claude-sonnet-4-5",
    }
    values.update(overrides)
    return estimator_pb2.EstimateRequest(**values)  # type: ignore[arg-type]


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value  # type: ignore[return-value]


# -- Estimate --------------------------------------------------------------------------------------


def test_estimate_returns_prediction_budget_breakdown_and_stores_it(estimator) -> None:  # type: ignore[no-untyped-def]
    response = estimator.stub.Estimate(estimate_request(), timeout=TIMEOUT)
    assert response.estimate_id.startswith("est_")
    assert response.model_version == "default-1"
    assert response.category == "implementation"
    assert response.complexity == "medium"
    assert response.deliverable_count == 2
    assert 0 < response.predicted_output_tokens <= response.selected_budget
    assert response.actual_max_tokens == min(response.selected_budget, 64000)
    assert 0 < response.confidence <= 1 and response.buffer_multiplier >= 1
    assert sum(item.tokens for item in response.breakdown) == response.selected_budget
    estimator.servicer.flush()
    stored = estimator.store.get_estimate(response.estimate_id)
    assert stored is not None
    assert (stored.phase_id, stored.description, stored.deliverables) == (
        "p1-add-module",
        "Add a retry helper with exponential backoff",
        ["src/app/retry.py", "tests/test_retry.py"],
    )
    assert stored.selected_budget == response.selected_budget
    # A category hint is normalised; an empty complexity means medium.
    docs = estimator.stub.Estimate(
        estimate_request(category="documentation", complexity="", deliverables=["docs/GUIDE.md"]),
        timeout=TIMEOUT,
    )
    assert (docs.category, docs.complexity) == ("docs", "medium")


def test_estimate_puts_the_token_story_on_the_current_span(estimator) -> None:  # type: ignore[no-untyped-def]
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("server") as span:
        response = estimator.servicer.Estimate(estimate_request(), None)
    attributes = dict(span.attributes or {})
    assert attributes["autopack.tokens.predicted"] == response.predicted_output_tokens
    assert attributes["autopack.tokens.selected_budget"] == response.selected_budget
    assert attributes["autopack.estimator.category"] == "implementation"
    assert attributes["autopack.estimator.model_version"] == "default-1"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"phase_id": ""}, "phase_id"),
        ({"description": "   "}, "description"),
        ({"complexity": "extreme"}, "complexity"),
        ({"deliverables": ["src/a.py", " "]}, "deliverables"),
        ({"scope_paths": [""]}, "scope_paths"),
    ],
)
def test_bad_estimate_requests_name_the_field_and_store_nothing(estimator, overrides, field) -> None:  # type: ignore[no-untyped-def]
    error = rpc_error(lambda: estimator.stub.Estimate(estimate_request(**overrides), timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(f"{field}:")
    estimator.servicer.flush()
    assert estimator.store.count_estimates() == 0


def test_estimates_written_behind_are_durable_after_close(start_estimator, sqlite_url: str) -> None:  # type: ignore[no-untyped-def]
    estimator = start_estimator(sqlite_url, flush_seconds=30.0)  # nothing flushes on its own
    ids = [estimator.stub.Estimate(estimate_request(), timeout=TIMEOUT).estimate_id for _ in range(5)]
    assert estimator.store.count_estimates() == 0
    estimator.server.stop(1)
    estimator.servicer.close()
    assert [estimator.store.get_estimate(i) is not None for i in ids] == [True] * 5


def test_an_outcome_may_reach_another_replica_right_after_the_estimate(
    start_estimator, database_url: str
) -> None:  # type: ignore[no-untyped-def]
    first = start_estimator(database_url)
    second = start_estimator(database_url)
    for _ in range(3):
        estimate = first.stub.Estimate(estimate_request(), timeout=TIMEOUT)
        response = second.stub.RecordOutcome(
            estimator_pb2.RecordOutcomeRequest(estimate_id=estimate.estimate_id, actual_output_tokens=900),
            timeout=TIMEOUT,
        )
        assert response.status == estimator_pb2.OUTCOME_STATUS_RECORDED
    assert second.store.count_events() == 3


# -- RecordOutcome ---------------------------------------------------------------------------------


def test_record_outcome_stores_one_event_with_the_estimates_features(estimator) -> None:  # type: ignore[no-untyped-def]
    estimate = estimator.stub.Estimate(estimate_request(), timeout=TIMEOUT)
    actual = estimate.predicted_output_tokens + 500
    response = estimator.stub.RecordOutcome(
        estimator_pb2.RecordOutcomeRequest(
            estimate_id=estimate.estimate_id,
            actual_output_tokens=actual,
            actual_max_tokens=estimate.actual_max_tokens,
            success=True,
            stop_reason="end_turn",
            model="claude-sonnet-4-5",
            input_tokens=12000,
        ),
        timeout=TIMEOUT,
    )
    assert response.status == estimator_pb2.OUTCOME_STATUS_RECORDED
    assert response.event_id.startswith("evt_") and response.rejection_reason == ""
    predicted = estimate.predicted_output_tokens
    assert response.smape == pytest.approx(200 * 500 / (predicted + actual))
    assert response.waste_ratio == pytest.approx(estimate.actual_max_tokens / actual)
    (event,) = estimator.store.list_events()
    assert (event.run_id, event.phase_id, event.category, event.complexity) == (
        "run-1",
        "p1-add-module",
        "implementation",
        "medium",
    )
    assert event.deliverables == ["src/app/retry.py", "tests/test_retry.py"] and event.deliverable_count == 2
    assert (event.predicted_output_tokens, event.selected_budget) == (predicted, estimate.selected_budget)
    assert (event.actual_output_tokens, event.actual_max_tokens, event.input_tokens) == (
        actual,
        estimate.actual_max_tokens,
        12000,
    )
    assert event.estimate_id == estimate.estimate_id and event.model_version == "default-1"
    assert event.description == "Add a retry helper with exponential backoff"


def test_validity_guard_rejects_short_outputs_with_a_reason_and_stores_nothing(estimator) -> None:  # type: ignore[no-untyped-def]
    estimate = estimator.stub.Estimate(estimate_request(), timeout=TIMEOUT)
    response = estimator.stub.RecordOutcome(
        estimator_pb2.RecordOutcomeRequest(estimate_id=estimate.estimate_id, actual_output_tokens=41),
        timeout=TIMEOUT,
    )
    assert response.status == estimator_pb2.OUTCOME_STATUS_REJECTED
    assert "actual_output_tokens" in response.rejection_reason and "50" in response.rejection_reason
    assert response.event_id == ""
    assert estimator.store.count_events() == 0


def test_max_tokens_stop_reason_is_recorded_as_truncated(estimator) -> None:  # type: ignore[no-untyped-def]
    estimate = estimator.stub.Estimate(estimate_request(), timeout=TIMEOUT)
    estimator.stub.RecordOutcome(
        estimator_pb2.RecordOutcomeRequest(
            estimate_id=estimate.estimate_id,
            actual_output_tokens=estimate.actual_max_tokens,
            stop_reason="max_tokens",
        ),
        timeout=TIMEOUT,
    )
    (event,) = estimator.store.list_events()
    assert event.truncated and not event.success
    assert event.actual_max_tokens is None  # 0 = unknown, stored as NULL


@pytest.mark.parametrize(
    ("overrides", "code", "field"),
    [
        ({"actual_output_tokens": -5}, grpc.StatusCode.INVALID_ARGUMENT, "actual_output_tokens"),
        ({"actual_max_tokens": -1}, grpc.StatusCode.INVALID_ARGUMENT, "actual_max_tokens"),
        ({"input_tokens": -1}, grpc.StatusCode.INVALID_ARGUMENT, "input_tokens"),
        ({"estimate_id": ""}, grpc.StatusCode.INVALID_ARGUMENT, "estimate_id"),
        ({"estimate_id": "est_unknown"}, grpc.StatusCode.INVALID_ARGUMENT, "estimate_id"),
    ],
)
def test_bad_outcomes_name_the_field_and_store_nothing(estimator, overrides, code, field) -> None:  # type: ignore[no-untyped-def]
    estimate = estimator.stub.Estimate(estimate_request(), timeout=TIMEOUT)
    values = {"estimate_id": estimate.estimate_id, "actual_output_tokens": 1000, **overrides}
    error = rpc_error(
        lambda: estimator.stub.RecordOutcome(estimator_pb2.RecordOutcomeRequest(**values), timeout=TIMEOUT)
    )
    assert error.code() == code
    assert error.details().startswith(f"{field}:")
    assert estimator.store.count_events() == 0


# -- Escalate --------------------------------------------------------------------------------------


def test_escalate_returns_a_retry_budget_above_what_was_used_and_records_it(estimator) -> None:  # type: ignore[no-untyped-def]
    estimate = estimator.stub.Estimate(estimate_request(), timeout=TIMEOUT)
    used = estimate.selected_budget
    response = estimator.stub.Escalate(
        estimator_pb2.EscalateRequest(
            estimate_id=estimate.estimate_id,
            reason=estimator_pb2.ESCALATION_REASON_TRUNCATED,
            tokens_used=used,
            was_truncated=True,
        ),
        timeout=TIMEOUT,
    )
    assert response.base_budget == estimate.selected_budget
    assert response.retry_budget > used and response.actual_max_tokens <= response.retry_budget
    assert "P10" in response.detail
    (event,) = estimator.store.escalations_for(estimate.estimate_id)
    assert (event.escalation_id, event.reason, event.tokens_used, event.retry_budget) == (
        response.escalation_id,
        "truncated",
        used,
        response.retry_budget,
    )


@pytest.mark.parametrize(
    ("overrides", "code", "field"),
    [
        ({"reason": estimator_pb2.ESCALATION_REASON_UNSPECIFIED}, grpc.StatusCode.INVALID_ARGUMENT, "reason"),
        ({"tokens_used": -1}, grpc.StatusCode.INVALID_ARGUMENT, "tokens_used"),
        ({"estimate_id": ""}, grpc.StatusCode.INVALID_ARGUMENT, "estimate_id"),
        ({"estimate_id": "est_nope"}, grpc.StatusCode.INVALID_ARGUMENT, "estimate_id"),
    ],
)
def test_bad_escalations_name_the_field_and_record_nothing(estimator, overrides, code, field) -> None:  # type: ignore[no-untyped-def]
    estimate = estimator.stub.Estimate(estimate_request(), timeout=TIMEOUT)
    values = {
        "estimate_id": estimate.estimate_id,
        "reason": estimator_pb2.ESCALATION_REASON_HIGH_UTILIZATION,
        "tokens_used": 100,
        **overrides,
    }
    error = rpc_error(
        lambda: estimator.stub.Escalate(estimator_pb2.EscalateRequest(**values), timeout=TIMEOUT)
    )
    assert error.code() == code
    assert error.details().startswith(f"{field}:")
    assert estimator.store.escalations_for(estimate.estimate_id) == []


# -- GetAccuracy -----------------------------------------------------------------------------------


def test_accuracy_uses_clean_events_for_smape_and_all_events_for_risk(estimator, make_event) -> None:  # type: ignore[no-untyped-def]
    events = [
        # clean, exact: SMAPE 0, waste 2.0
        make_event(0, predicted_output_tokens=1000, actual_output_tokens=1000, selected_budget=2000),
        # clean, underestimated and over budget: SMAPE 100, waste 2/3
        make_event(
            1, predicted_output_tokens=1000, actual_output_tokens=3000, selected_budget=2000, category="docs"
        ),
        # truncated at its budget: a lower bound, so a miss of that budget; no SMAPE or waste
        make_event(
            2,
            predicted_output_tokens=1000,
            actual_output_tokens=2000,
            selected_budget=2000,
            truncated=True,
            success=False,
            deliverable_count=9,
        ),
        # failed, not truncated: not clean
        make_event(
            3, predicted_output_tokens=1000, actual_output_tokens=500, selected_budget=2000, success=False
        ),
    ]
    estimator.stub.ImportTelemetry(iter(events), timeout=TIMEOUT)
    response = estimator.stub.GetAccuracy(estimator_pb2.GetAccuracyRequest(), timeout=TIMEOUT)
    overall = response.overall
    assert (overall.events, overall.clean_events) == (4, 2)
    assert overall.mean_smape == pytest.approx(50.0)
    assert overall.median_smape == pytest.approx(50.0)
    assert overall.underestimation_rate == pytest.approx(0.5)
    assert overall.truncation_rate == pytest.approx(0.25)
    assert overall.budget_miss_rate == pytest.approx(0.5)  # over budget, and truncated at it
    assert overall.waste_p50 == pytest.approx((2.0 + 2 / 3) / 2)
    assert [g.key for g in response.by_category] == ["docs", "implementation"]
    assert [g.key for g in response.by_complexity] == ["medium"]
    assert [g.key for g in response.by_deliverable_bucket] == ["2-3", "8-15"]

    docs = estimator.stub.GetAccuracy(
        estimator_pb2.GetAccuracyRequest(filter=estimator_pb2.TelemetryFilter(category="docs")),
        timeout=TIMEOUT,
    )
    assert (docs.overall.events, docs.overall.mean_smape) == (1, pytest.approx(100.0))
    since = estimator_pb2.TelemetryFilter()
    since.since.FromDatetime(datetime(2026, 1, 1, 0, 2, tzinfo=UTC))
    recent = estimator.stub.GetAccuracy(estimator_pb2.GetAccuracyRequest(filter=since), timeout=TIMEOUT)
    assert recent.overall.events == 2


# -- Calibrate / PromoteModel / ListModels ---------------------------------------------------------


def _calibrate(estimator, **fields) -> estimator_pb2.CalibrateResponse:  # type: ignore[no-untyped-def]
    return estimator.stub.Calibrate(estimator_pb2.CalibrateRequest(**fields), timeout=120)


def test_calibrate_stores_a_candidate_but_nothing_changes_until_promoted(estimator, synthetic) -> None:  # type: ignore[no-untyped-def]
    estimator.stub.ImportTelemetry(iter(synthetic(300, 1)), timeout=TIMEOUT)
    dry = _calibrate(estimator, dry_run=True)
    assert dry.candidate_version == ""
    assert [m.version for m in estimator.store.list_models()] == ["default-1"]

    response = _calibrate(estimator)
    report = response.report
    candidate = response.candidate_version
    assert candidate.startswith("cal-")
    assert report.base_version == "default-1" and report.folds >= 2
    distinct = len({(e.description, tuple(e.deliverables)) for e in synthetic(300, 1)})
    assert report.training_events > 200 and report.before.events == report.after.events == distinct < 300
    assert report.promote and report.recommendation.startswith("Promote it:") and not report.rejection_reasons
    assert next(p for p in report.frontier if p.chosen).miss_rate == report.after.budget_miss_rate
    assert report.groups and all(0 <= g.confidence <= 1 and g.factor > 0 for g in report.groups)
    assert any(g.applied for g in report.groups)

    models = estimator.stub.ListModels(estimator_pb2.ListModelsRequest(), timeout=TIMEOUT)
    assert models.promoted_version == "default-1"
    assert [(m.version, m.status) for m in models.models] == [
        (candidate, estimator_pb2.MODEL_STATUS_CANDIDATE),
        ("default-1", estimator_pb2.MODEL_STATUS_PROMOTED),
    ]
    assert models.models[0].parent_version == "default-1" and "groups corrected" in models.models[0].summary
    assert estimator.stub.Estimate(estimate_request(), timeout=TIMEOUT).model_version == "default-1"

    promoted = estimator.stub.PromoteModel(
        estimator_pb2.PromoteModelRequest(version=candidate), timeout=TIMEOUT
    )
    assert promoted.previous_version == "default-1"
    assert promoted.model.status == estimator_pb2.MODEL_STATUS_PROMOTED and promoted.model.HasField(
        "promoted_at"
    )
    served = estimator.stub.Estimate(estimate_request(), timeout=TIMEOUT)
    assert served.model_version == candidate

    rollback = estimator.stub.PromoteModel(
        estimator_pb2.PromoteModelRequest(version="default-1"), timeout=TIMEOUT
    )
    assert rollback.previous_version == candidate
    assert estimator.stub.Estimate(estimate_request(), timeout=TIMEOUT).model_version == "default-1"
    statuses = {
        m.version: m.status for m in estimator.stub.ListModels(estimator_pb2.ListModelsRequest()).models
    }
    assert statuses == {
        candidate: estimator_pb2.MODEL_STATUS_RETIRED,
        "default-1": estimator_pb2.MODEL_STATUS_PROMOTED,
    }


def test_calibration_learns_from_what_the_current_model_predicts_not_the_stored_prediction(
    estimator, synthetic
) -> None:  # type: ignore[no-untyped-def]
    events = synthetic(200, 2)
    skewed = []
    for event in events:
        copy = estimator_pb2.TelemetryEvent()
        copy.CopyFrom(event)
        copy.predicted_output_tokens = 50_000  # nonsense history must not matter
        skewed.append(copy)
    estimator.stub.ImportTelemetry(iter(events), timeout=TIMEOUT)
    first = _calibrate(estimator, dry_run=True).report
    with estimator.store.engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM estimator_telemetry_events")
    estimator.stub.ImportTelemetry(iter(skewed), timeout=TIMEOUT)
    second = _calibrate(estimator, dry_run=True).report
    assert [(g.category, g.complexity, g.factor) for g in first.groups] == [
        (g.category, g.complexity, g.factor) for g in second.groups
    ]
    assert first.before.median_smape == pytest.approx(second.before.median_smape)


@pytest.mark.parametrize(
    ("fields", "field"),
    [({"min_confidence": 1.5}, "min_confidence"), ({"min_samples": -1}, "min_samples")],
)
def test_bad_calibrate_requests_name_the_field(estimator, fields, field) -> None:  # type: ignore[no-untyped-def]
    error = rpc_error(lambda: _calibrate(estimator, **fields))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(f"{field}:")


def test_calibrate_without_telemetry_is_a_failed_precondition(estimator) -> None:  # type: ignore[no-untyped-def]
    error = rpc_error(lambda: _calibrate(estimator))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert [m.version for m in estimator.store.list_models()] == ["default-1"]


def test_promote_needs_a_known_version(estimator) -> None:  # type: ignore[no-untyped-def]
    empty = rpc_error(
        lambda: estimator.stub.PromoteModel(estimator_pb2.PromoteModelRequest(), timeout=TIMEOUT)
    )
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT and empty.details().startswith("version:")
    unknown = rpc_error(
        lambda: estimator.stub.PromoteModel(
            estimator_pb2.PromoteModelRequest(version="cal-x"), timeout=TIMEOUT
        )
    )
    assert unknown.code() == grpc.StatusCode.NOT_FOUND and unknown.details().startswith("version:")
    assert estimator.store.promoted_version() == "default-1"


def test_every_replica_serves_a_promoted_version_within_the_refresh_interval(
    database_url: str, start_estimator, synthetic
) -> None:  # type: ignore[no-untyped-def]
    refresh = 0.5
    first = start_estimator(database_url, refresh)
    second = start_estimator(database_url, refresh)
    first.stub.ImportTelemetry(iter(synthetic(150, 3)), timeout=TIMEOUT)
    candidate = _calibrate(first).candidate_version
    assert second.stub.Estimate(estimate_request(), timeout=TIMEOUT).model_version == "default-1"

    def served_by_second_within(deadline: float, version: str) -> float:
        started = time.monotonic()
        while time.monotonic() - started < deadline:
            if second.stub.Estimate(estimate_request(), timeout=TIMEOUT).model_version == version:
                return time.monotonic() - started
            time.sleep(0.05)
        raise AssertionError(f"second replica still not serving {version}")

    first.stub.PromoteModel(estimator_pb2.PromoteModelRequest(version=candidate), timeout=TIMEOUT)
    assert first.stub.Estimate(estimate_request(), timeout=TIMEOUT).model_version == candidate
    assert served_by_second_within(refresh + 1.0, candidate) <= refresh + 1.0
    first.stub.PromoteModel(estimator_pb2.PromoteModelRequest(version="default-1"), timeout=TIMEOUT)
    assert served_by_second_within(refresh + 1.0, "default-1") <= refresh + 1.0


# -- ImportTelemetry / ExportTelemetry / ReplayTelemetry -------------------------------------------


def test_import_rejects_bad_events_by_position_and_imports_the_rest(estimator, make_event) -> None:  # type: ignore[no-untyped-def]
    events = [
        make_event(0),
        make_event(1, actual_output_tokens=41),
        make_event(2),
        make_event(3, predicted_output_tokens=-1),
        make_event(4, phase_id=""),
        make_event(5, smape=250.0),
        make_event(6),
    ]
    response = estimator.stub.ImportTelemetry(iter(events), timeout=TIMEOUT)
    assert (response.imported, response.rejected) == (3, 4)
    reasons = {r.index: r.reason for r in response.rejections}
    assert sorted(reasons) == [2, 4, 5, 6]
    assert reasons[2].startswith("actual_output_tokens:") and "50" in reasons[2]
    assert reasons[4].startswith("predicted_output_tokens:")
    assert reasons[5].startswith("phase_id:")
    assert reasons[6].startswith("smape:")
    assert [e.phase_id for e in estimator.store.list_events()] == ["phase-0", "phase-2", "phase-6"]


def test_legacy_export_round_trips_through_import_and_export(estimator, legacy_sample: Path) -> None:  # type: ignore[no-untyped-def]
    with legacy_sample.open(encoding="utf-8") as handle:
        events = [parsed.event for parsed in read_ndjson(handle)]
    response = estimator.stub.ImportTelemetry(iter(events), timeout=TIMEOUT)
    assert (response.imported, response.rejected) == (18, 0)
    exported = list(estimator.stub.ExportTelemetry(estimator_pb2.ExportTelemetryRequest(), timeout=TIMEOUT))
    assert len(exported) == 18
    originals = sorted(
        (json.loads(line) for line in legacy_sample.read_text(encoding="utf-8").splitlines()),
        key=lambda record: record["timestamp"],
    )
    for original, event in zip(originals, exported, strict=True):
        record = event_to_record(event)
        for column in original:
            if column == "timestamp":
                assert record[column] == original[column] + "+00:00"
            elif column == "run_id":
                assert record[column] == (original[column] or "")
            elif column == "category":
                assert record[column] == normalize_category(original[column])
            else:
                assert record[column] == original[column], column
        assert record["smape"] is not None and record["waste_ratio"] is not None
    truncated = [e for e in exported if e.truncated]
    assert truncated and all(e.stop_reason == "max_tokens" for e in truncated)

    assert {e.category for e in exported} == {
        "implementation",
        "refactoring",
        "configuration",
        "integration",
        "docs",
    }
    docs_only = estimator_pb2.ExportTelemetryRequest(filter=estimator_pb2.TelemetryFilter(category="docs"))
    docs = list(estimator.stub.ExportTelemetry(docs_only, timeout=TIMEOUT))
    # "documentation" and "docs" in the legacy export are one category now.
    assert {e.category for e in docs} == {"docs"} and len(docs) == 8


def test_replay_compares_the_current_model_with_a_candidate(estimator, synthetic, make_event) -> None:  # type: ignore[no-untyped-def]
    estimator.stub.ImportTelemetry(iter(synthetic(250, 4)), timeout=TIMEOUT)
    candidate = _calibrate(estimator).candidate_version
    replayed = synthetic(80, 5)

    def requests():  # type: ignore[no-untyped-def]
        yield estimator_pb2.ReplayTelemetryRequest(options=estimator_pb2.ReplayOptions())
        for event in replayed:
            yield estimator_pb2.ReplayTelemetryRequest(event=event)
        yield estimator_pb2.ReplayTelemetryRequest(event=make_event(99, actual_output_tokens=10))

    response = estimator.stub.ReplayTelemetry(requests(), timeout=120)
    assert (response.baseline.version, response.candidate.version) == ("default-1", candidate)
    assert (response.events, response.rejected) == (80, 1)
    assert response.rejections[0].index == 81
    assert response.baseline.overall.events == response.candidate.overall.events == 80
    assert response.recorded.events == 80
    assert response.baseline.by_category and response.candidate.by_category
    # Replay stores nothing.
    assert estimator.store.count_events() == 250


def test_replay_needs_options_first_and_a_candidate(estimator, make_event) -> None:  # type: ignore[no-untyped-def]
    no_options = rpc_error(
        lambda: estimator.stub.ReplayTelemetry(
            iter([estimator_pb2.ReplayTelemetryRequest(event=make_event(0))]), timeout=TIMEOUT
        )
    )
    assert no_options.code() == grpc.StatusCode.INVALID_ARGUMENT and no_options.details().startswith(
        "options:"
    )
    no_candidate = rpc_error(
        lambda: estimator.stub.ReplayTelemetry(
            iter([estimator_pb2.ReplayTelemetryRequest(options=estimator_pb2.ReplayOptions())]),
            timeout=TIMEOUT,
        )
    )
    assert no_candidate.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert no_candidate.details().startswith("candidate_version:")
    unknown = rpc_error(
        lambda: estimator.stub.ReplayTelemetry(
            iter(
                [
                    estimator_pb2.ReplayTelemetryRequest(
                        options=estimator_pb2.ReplayOptions(candidate_version="cal-none")
                    )
                ]
            ),
            timeout=TIMEOUT,
        )
    )
    assert unknown.code() == grpc.StatusCode.NOT_FOUND and unknown.details().startswith("candidate_version:")


def test_a_worse_candidate_is_stored_rejected_and_cannot_be_promoted_without_force(
    estimator, worse_candidate_telemetry
) -> None:  # type: ignore[no-untyped-def]
    estimator.stub.ImportTelemetry(iter(worse_candidate_telemetry), timeout=TIMEOUT)
    response = _calibrate(estimator)
    report, version = response.report, response.candidate_version
    assert not report.promote and report.rejection_reasons
    metric = report.rejection_reasons[0].split(":")[0]
    assert metric in ("median SMAPE", "budget misses", "P90 waste")
    assert report.recommendation.startswith(f"Do not promote it: {metric}")
    assert report.frontier and report.baseline_frontier

    models = estimator.stub.ListModels(estimator_pb2.ListModelsRequest(), timeout=TIMEOUT)
    stored = next(m for m in models.models if m.version == version)
    assert stored.status == estimator_pb2.MODEL_STATUS_REJECTED
    assert list(stored.status_reasons) == list(report.rejection_reasons)
    assert "(rejected)" in stored.summary

    with pytest.raises(grpc.RpcError) as refused:
        estimator.stub.PromoteModel(estimator_pb2.PromoteModelRequest(version=version), timeout=TIMEOUT)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert metric in refused.value.details() and "force" in refused.value.details()
    # Nothing changed: the default is still served and the candidate still rejected.
    assert estimator.stub.ListModels(estimator_pb2.ListModelsRequest(), timeout=TIMEOUT).promoted_version == (
        "default-1"
    )
    assert estimator.store.get_model(version).status == "rejected"
    assert estimator.stub.Estimate(estimate_request(), timeout=TIMEOUT).model_version == "default-1"

    forced = estimator.stub.PromoteModel(
        estimator_pb2.PromoteModelRequest(version=version, force=True), timeout=TIMEOUT
    )
    assert (
        forced.model.status == estimator_pb2.MODEL_STATUS_PROMOTED and forced.previous_version == "default-1"
    )
    assert not forced.model.status_reasons
    assert estimator.stub.Estimate(estimate_request(), timeout=TIMEOUT).model_version == version
    # force is only needed for rejected versions: rolling back to the default needs none.
    estimator.stub.PromoteModel(estimator_pb2.PromoteModelRequest(version="default-1"), timeout=TIMEOUT)


def test_the_real_telemetry_protocol_through_the_service_matches_the_domain_cross_validation(
    estimator,
) -> None:  # type: ignore[no-untyped-def]
    """Import 4 folds, Calibrate, PromoteModel, Estimate every phase of the 5th: what the bench computes."""
    from autopack_estimator.calibration import calibrate, distinct_phases
    from autopack_estimator.crossval import folds_by_run
    from autopack_estimator.model import ModelParameters, TokenModel
    from autopack_estimator.service import imported_record, training_event
    from autopack_estimator.synthetic import legacy_run_telemetry

    messages = sorted(legacy_run_telemetry(0), key=lambda m: m.timestamp.ToDatetime())
    folds = folds_by_run([m.run_id for m in messages])
    train = [m for m in messages if folds[m.run_id] != 0]
    held = [m for m in messages if folds[m.run_id] == 0]
    estimator.stub.ImportTelemetry(iter(train), timeout=TIMEOUT)
    response = _calibrate(estimator)
    assert response.report.promote, response.report.rejection_reasons
    estimator.stub.PromoteModel(
        estimator_pb2.PromoteModelRequest(version=response.candidate_version), timeout=TIMEOUT
    )
    domain = TokenModel(
        calibrate(
            [training_event(imported_record(m)) for m in train], ModelParameters.default(), new_version="d"
        ).candidate
    )
    phases = distinct_phases([training_event(imported_record(m)) for m in held])
    assert len(phases) >= 5
    for phase in (event.phase for event in phases):
        reply = estimator.stub.Estimate(
            estimate_request(
                description=phase.description,
                category=phase.category_hint,
                complexity=phase.complexity,
                deliverables=list(phase.deliverables),
                scope_paths=[],
                read_only_context=[],
                model=phase.model,
            ),
            timeout=TIMEOUT,
        )
        expected = domain.predict(phase)
        assert reply.model_version == response.candidate_version
        assert (reply.predicted_output_tokens, reply.selected_budget) == (
            expected.predicted_output_tokens,
            expected.selected_budget,
        )
