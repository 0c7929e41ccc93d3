"""gRPC servicer of the estimator: validate, convert, call the model and the store. Thin on purpose.

Errors are raised as ``autopack_common.errors`` exceptions naming the field; the server maps
them to status codes. Nothing is written before a request has been fully validated.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
from autopack.estimator.v1 import estimator_pb2, estimator_pb2_grpc
from autopack_common.database import create_db_engine, upgrade_schema, utcnow
from autopack_common.errors import FailedPrecondition, InvalidArgument, NotFound
from autopack_common.server import ServiceBinding
from autopack_common.truncation import is_truncated
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import trace
from sqlalchemy import Engine

from autopack_estimator.calibration import TrainingEvent, calibrate, evaluate
from autopack_estimator.features import PhaseInput, normalize_category, normalize_complexity
from autopack_estimator.metrics import Outcome, accuracy, accuracy_by, deliverable_bucket, smape, waste_ratio
from autopack_estimator.model import Prediction, TokenModel
from autopack_estimator.registry import ModelRegistry, UnknownModelVersion
from autopack_estimator.store import (
    MODEL_CANDIDATE,
    MODEL_PROMOTED,
    MODEL_REJECTED,
    MODEL_RETIRED,
    SOURCE_IMPORT,
    SOURCE_OUTCOME,
    EscalationRecord,
    EstimateRecord,
    EstimateWriter,
    EventFilter,
    ModelVersionRecord,
    Store,
    TelemetryRecord,
    new_id,
)

log = logging.getLogger(__name__)

MIN_OUTPUT_TOKENS = 50
"""Validity guard: fewer output tokens means an empty or failed answer, not a measurement."""

DEFAULT_MIN_SAMPLES = 5
DEFAULT_MIN_CONFIDENCE = 0.7
IMPORT_BATCH_SIZE = 500
_REPLY_CACHE_SIZE = 4096  # replies of memoised predictions (see EstimatorServicer._reply_parts)

_ESCALATION_REASONS = {
    estimator_pb2.ESCALATION_REASON_TRUNCATED: "truncated",
    estimator_pb2.ESCALATION_REASON_HIGH_UTILIZATION: "high_utilization",
    estimator_pb2.ESCALATION_REASON_INCOMPLETE_DELIVERABLES: "incomplete_deliverables",
}
_MODEL_STATUS = {
    MODEL_CANDIDATE: estimator_pb2.MODEL_STATUS_CANDIDATE,
    MODEL_PROMOTED: estimator_pb2.MODEL_STATUS_PROMOTED,
    MODEL_RETIRED: estimator_pb2.MODEL_STATUS_RETIRED,
    MODEL_REJECTED: estimator_pb2.MODEL_STATUS_REJECTED,
}
_METRIC_FIELDS = tuple(field.name for field in estimator_pb2.AccuracyMetrics.DESCRIPTOR.fields)


class EstimatorServicer(estimator_pb2_grpc.EstimatorServiceServicer):
    """The EstimatorService RPCs over a store and the promoted-model registry."""

    def __init__(self, store: Store, registry: ModelRegistry, estimate_flush_seconds: float = 0.0) -> None:
        self._store = store
        self._registry = registry
        self._estimates = EstimateWriter(store, estimate_flush_seconds)
        self._replies: dict[
            int, tuple[Prediction, str, list[dict[str, Any]], estimator_pb2.EstimateResponse]
        ] = {}

    @property
    def store(self) -> Store:
        return self._store

    def flush(self) -> None:
        """Persist queued estimates now."""
        self._estimates.flush()

    def close(self) -> None:
        """Flush queued estimates and stop the writer (called on graceful shutdown)."""
        self._estimates.close()

    # -- Estimate ------------------------------------------------------------------------------

    def Estimate(
        self, request: estimator_pb2.EstimateRequest, context: grpc.ServicerContext
    ) -> estimator_pb2.EstimateResponse:
        phase_id = _required(request.phase_id, "phase_id")
        description = _required(request.description, "description")
        complexity = _complexity(request.complexity)
        deliverables = _paths(request.deliverables, "deliverables")
        scope_paths = _paths(request.scope_paths, "scope_paths")
        read_only_context = _paths(request.read_only_context, "read_only_context")
        model_name = request.model.strip()
        version, model = self._registry.current()
        prediction = model.predict(
            PhaseInput(
                description=description,
                category_hint=request.category.strip(),
                complexity=complexity,
                deliverables=deliverables,
                scope_paths=scope_paths,
                read_only_context=read_only_context,
                model=model_name,
            )
        )
        breakdown, template = self._reply_parts(prediction, version)
        estimate_id = new_id("est")
        self._estimates.add(
            EstimateRecord(
                estimate_id=estimate_id,
                run_id=request.run_id.strip(),
                phase_id=phase_id,
                description=description,
                category=template.category,
                complexity=template.complexity,
                deliverables=deliverables,
                scope_paths=scope_paths,
                read_only_context=read_only_context,
                model=model_name,
                deliverable_count=template.deliverable_count,
                predicted_output_tokens=template.predicted_output_tokens,
                selected_budget=template.selected_budget,
                actual_max_tokens=template.actual_max_tokens,
                confidence=template.confidence,
                buffer_multiplier=template.buffer_multiplier,
                breakdown=breakdown,
                model_version=version,
                created_at=utcnow(),
            )
        )
        span = trace.get_current_span()
        if span.is_recording():  # with tracing off, skip building the attributes at all
            span.set_attributes(
                {
                    "autopack.tokens.predicted": template.predicted_output_tokens,
                    "autopack.tokens.selected_budget": template.selected_budget,
                    "autopack.tokens.actual_max": template.actual_max_tokens,
                    "autopack.estimator.category": template.category,
                    "autopack.estimator.model_version": version,
                }
            )
        response = estimator_pb2.EstimateResponse()
        response.CopyFrom(template)
        response.estimate_id = estimate_id
        return response

    def _reply_parts(
        self, prediction: Prediction, version: str
    ) -> tuple[list[dict[str, Any]], estimator_pb2.EstimateResponse]:
        """The stored breakdown and the reply without its estimate_id, built once per prediction.

        The model hands back the same memoised prediction for every phase of one shape, so the
        reply is copied from a template rather than rebuilt term by term; the entry holds the
        prediction itself, so an id is never reused while its entry lives.
        """
        entry = self._replies.get(id(prediction))
        if entry is None or entry[0] is not prediction or entry[1] != version:
            breakdown = [
                {"name": term.name, "tokens": int(term.tokens), "detail": term.detail}
                for term in prediction.breakdown
            ]
            template = estimator_pb2.EstimateResponse(
                predicted_output_tokens=int(prediction.predicted_output_tokens),
                selected_budget=int(prediction.selected_budget),
                actual_max_tokens=int(prediction.actual_max_tokens),
                category=prediction.category,
                complexity=prediction.complexity,
                confidence=float(prediction.confidence),
                buffer_multiplier=float(prediction.buffer_multiplier),
                deliverable_count=int(prediction.deliverable_count),
                model_version=version,
                breakdown=breakdown,
            )
            entry = (prediction, version, breakdown, template)
            if len(self._replies) >= _REPLY_CACHE_SIZE:
                self._replies.clear()
            self._replies[id(prediction)] = entry
        return entry[2], entry[3]

    # -- RecordOutcome -------------------------------------------------------------------------

    def RecordOutcome(
        self, request: estimator_pb2.RecordOutcomeRequest, context: grpc.ServicerContext
    ) -> estimator_pb2.RecordOutcomeResponse:
        estimate_id = _required(request.estimate_id, "estimate_id")
        for name in ("actual_output_tokens", "actual_max_tokens", "input_tokens"):
            _non_negative(getattr(request, name), name)
        estimate = self._estimate(estimate_id)
        if request.actual_output_tokens < MIN_OUTPUT_TOKENS:
            return estimator_pb2.RecordOutcomeResponse(
                status=estimator_pb2.OUTCOME_STATUS_REJECTED,
                rejection_reason=_guard_reason(request.actual_output_tokens),
            )
        stop_reason = request.stop_reason.strip()
        actual_max = request.actual_max_tokens or None
        event = TelemetryRecord(
            run_id=estimate.run_id,
            phase_id=estimate.phase_id,
            category=estimate.category,
            complexity=estimate.complexity,
            deliverable_count=estimate.deliverable_count,
            deliverables=list(estimate.deliverables),
            description=estimate.description,
            predicted_output_tokens=estimate.predicted_output_tokens,
            actual_output_tokens=request.actual_output_tokens,
            selected_budget=estimate.selected_budget,
            actual_max_tokens=actual_max,
            success=request.success,
            truncated=is_truncated(stop_reason, request.truncated),
            stop_reason=stop_reason,
            model=request.model.strip() or estimate.model,
            input_tokens=request.input_tokens or None,
            smape=smape(estimate.predicted_output_tokens, request.actual_output_tokens),
            waste_ratio=waste_ratio(estimate.selected_budget, actual_max, request.actual_output_tokens),
            timestamp=utcnow(),
            estimate_id=estimate.estimate_id,
            model_version=estimate.model_version,
            source=SOURCE_OUTCOME,
        )
        self._store.add_events([event])
        span = trace.get_current_span()
        span.set_attribute("autopack.tokens.output", event.actual_output_tokens)
        span.set_attribute("autopack.tokens.smape", float(event.smape or 0.0))
        return estimator_pb2.RecordOutcomeResponse(
            status=estimator_pb2.OUTCOME_STATUS_RECORDED,
            event_id=event.event_id,
            smape=float(event.smape or 0.0),
            waste_ratio=float(event.waste_ratio or 0.0),
        )

    # -- Escalate ------------------------------------------------------------------------------

    def Escalate(
        self, request: estimator_pb2.EscalateRequest, context: grpc.ServicerContext
    ) -> estimator_pb2.EscalateResponse:
        estimate_id = _required(request.estimate_id, "estimate_id")
        reason = _ESCALATION_REASONS.get(request.reason)
        if reason is None:
            raise InvalidArgument("reason", "must be TRUNCATED, HIGH_UTILIZATION or INCOMPLETE_DELIVERABLES")
        _non_negative(request.tokens_used, "tokens_used")
        estimate = self._estimate(estimate_id)
        version, model = self._registry.current()
        plan = model.escalate(
            estimate.selected_budget, estimate.model, reason, request.tokens_used, request.was_truncated
        )
        record = EscalationRecord(
            escalation_id=new_id("esc"),
            estimate_id=estimate.estimate_id,
            reason=reason,
            tokens_used=request.tokens_used,
            was_truncated=request.was_truncated,
            base_budget=estimate.selected_budget,
            retry_budget=int(plan.retry_budget),
            actual_max_tokens=int(plan.actual_max_tokens),
            detail=plan.detail,
            model_version=version,
            created_at=utcnow(),
        )
        self._store.add_escalation(record)
        span = trace.get_current_span()
        span.set_attribute("autopack.estimator.escalation_reason", reason)
        span.set_attribute("autopack.tokens.retry_budget", record.retry_budget)
        return estimator_pb2.EscalateResponse(
            escalation_id=record.escalation_id,
            retry_budget=record.retry_budget,
            actual_max_tokens=record.actual_max_tokens,
            base_budget=record.base_budget,
            detail=record.detail,
        )

    # -- GetAccuracy ---------------------------------------------------------------------------

    def GetAccuracy(
        self, request: estimator_pb2.GetAccuracyRequest, context: grpc.ServicerContext
    ) -> estimator_pb2.GetAccuracyResponse:
        outcomes = [_outcome(event) for event in self._store.iter_events(_event_filter(request.filter))]
        return estimator_pb2.GetAccuracyResponse(
            overall=metrics_message(accuracy(outcomes)),
            by_category=_groups(accuracy_by(outcomes, lambda o: o.category or "unknown")),
            by_complexity=_groups(accuracy_by(outcomes, lambda o: o.complexity or "unknown")),
            by_deliverable_bucket=_groups(
                accuracy_by(outcomes, lambda o: deliverable_bucket(o.deliverable_count))
            ),
        )

    # -- Calibrate / models --------------------------------------------------------------------

    def Calibrate(
        self, request: estimator_pb2.CalibrateRequest, context: grpc.ServicerContext
    ) -> estimator_pb2.CalibrateResponse:
        if request.min_samples < 0:
            raise InvalidArgument("min_samples", "must not be negative")
        if not 0.0 <= request.min_confidence <= 1.0:
            raise InvalidArgument("min_confidence", "must be between 0 and 1")
        min_samples = request.min_samples or DEFAULT_MIN_SAMPLES
        min_confidence = request.min_confidence or DEFAULT_MIN_CONFIDENCE
        since = _since(request.since) if request.HasField("since") else None
        events = [training_event(event) for event in self._store.iter_events(EventFilter(since=since))]
        if not events:
            raise FailedPrecondition("no telemetry to calibrate from" + (" since then" if since else ""))
        base_version, base_model = self._registry.current()
        new_version = f"cal-{utcnow():%Y%m%d}-{new_id('x')[-6:]}"
        result = calibrate(
            events,
            base_model.params,
            min_samples=min_samples,
            min_confidence=min_confidence,
            new_version=new_version,
        )
        report = report_message(result.report, base_version)
        if request.dry_run:
            return estimator_pb2.CalibrateResponse(report=report)
        self._store.add_model_version(
            ModelVersionRecord(
                version=result.candidate.version,
                params_json=result.candidate.to_json(),
                status=MODEL_CANDIDATE if report.promote else MODEL_REJECTED,
                created_at=utcnow(),
                parent_version=base_version,
                summary=report_summary(report),
                report_json=json_format.MessageToJson(report, indent=None),
            )
        )
        log.info(
            "stored %s model %s (from %s): %s",
            "candidate" if report.promote else "rejected",
            result.candidate.version,
            base_version,
            report.recommendation,
        )
        return estimator_pb2.CalibrateResponse(candidate_version=result.candidate.version, report=report)

    def PromoteModel(
        self, request: estimator_pb2.PromoteModelRequest, context: grpc.ServicerContext
    ) -> estimator_pb2.PromoteModelResponse:
        version = _required(request.version, "version")
        stored = self._store.get_model(version)
        if stored is not None and stored.status == MODEL_REJECTED:
            reasons = rejection_reasons(stored)
            if not request.force:
                raise FailedPrecondition(
                    f"version: {version} was rejected by the promotion guard -- "
                    + "; ".join(reasons)
                    + " -- promote it with force=true to serve it anyway"
                )
            log.warning("promoting rejected model %s by force: %s", version, "; ".join(reasons))
        try:
            self._registry.model_for(version)  # refuse versions this replica could not serve
        except UnknownModelVersion:
            raise NotFound(f"version: no model version {version!r}") from None
        except ValueError as error:
            raise FailedPrecondition(
                f"version: stored parameters of {version!r} are invalid: {error}"
            ) from None
        promoted = self._store.promote(version)
        if promoted is None:
            raise NotFound(f"version: no model version {version!r}")
        record, previous = promoted
        self._registry.refresh()
        log.info("promoted model %s (was %s)", version, previous)
        return estimator_pb2.PromoteModelResponse(
            model=model_message(record), previous_version=previous or ""
        )

    def ListModels(
        self, request: estimator_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> estimator_pb2.ListModelsResponse:
        records = self._store.list_models()
        promoted = next((r.version for r in records if r.status == MODEL_PROMOTED), "")
        return estimator_pb2.ListModelsResponse(
            models=[model_message(record) for record in records], promoted_version=promoted
        )

    # -- Import / export -----------------------------------------------------------------------

    def ImportTelemetry(
        self, request_iterator: Iterator[estimator_pb2.TelemetryEvent], context: grpc.ServicerContext
    ) -> estimator_pb2.ImportTelemetryResponse:
        imported = 0
        rejections: list[estimator_pb2.ImportRejection] = []
        batch: list[TelemetryRecord] = []
        for index, event in enumerate(request_iterator, start=1):
            try:
                batch.append(imported_record(event))
            except InvalidArgument as error:
                rejections.append(estimator_pb2.ImportRejection(index=index, reason=error.message))
                continue
            if len(batch) >= IMPORT_BATCH_SIZE:
                self._store.add_events(batch)
                imported += len(batch)
                batch = []
        self._store.add_events(batch)
        imported += len(batch)
        log.info("imported %d telemetry events, rejected %d", imported, len(rejections))
        return estimator_pb2.ImportTelemetryResponse(
            imported=imported, rejected=len(rejections), rejections=rejections
        )

    def ExportTelemetry(
        self, request: estimator_pb2.ExportTelemetryRequest, context: grpc.ServicerContext
    ) -> Iterator[estimator_pb2.TelemetryEvent]:
        event_filter = _event_filter(request.filter)
        for record in self._store.iter_events(event_filter):
            yield event_message(record)

    def ReplayTelemetry(
        self, request_iterator: Iterator[estimator_pb2.ReplayTelemetryRequest], context: grpc.ServicerContext
    ) -> estimator_pb2.ReplayTelemetryResponse:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("item") != "options":
            raise InvalidArgument("options", "the first message of a replay must carry the options")
        baseline_version = first.options.baseline_version.strip() or self._registry.current()[0]
        candidate_version = first.options.candidate_version.strip() or self._store.newest_candidate()
        if not candidate_version:
            raise FailedPrecondition(
                "candidate_version: no candidate model stored; run Calibrate or name one"
            )
        baseline = self._model("baseline_version", baseline_version)
        candidate = self._model("candidate_version", candidate_version)
        records: list[TelemetryRecord] = []
        rejections: list[estimator_pb2.ImportRejection] = []
        for index, message in enumerate(request_iterator, start=1):
            try:
                if message.WhichOneof("item") != "event":
                    raise InvalidArgument("options", "only the first message may carry options")
                records.append(imported_record(message.event))
            except InvalidArgument as error:
                rejections.append(estimator_pb2.ImportRejection(index=index, reason=error.message))
        return estimator_pb2.ReplayTelemetryResponse(
            baseline=evaluation_message(baseline_version, baseline, records),
            candidate=evaluation_message(candidate_version, candidate, records),
            recorded=metrics_message(accuracy([_outcome(record) for record in records])),
            events=len(records),
            rejected=len(rejections),
            rejections=rejections,
        )

    # -- helpers -------------------------------------------------------------------------------

    def _estimate(self, estimate_id: str) -> EstimateRecord:
        estimate = self._estimates.get(estimate_id)
        if estimate is None and self._estimates.flush_interval > 0:
            # Made on another replica moments ago? Its batch commits within one flush interval.
            time.sleep(3 * self._estimates.flush_interval + 0.05)
            estimate = self._estimates.get(estimate_id)
        if estimate is None:
            # The contract: an id the caller got wrong is bad input naming the field.
            raise InvalidArgument("estimate_id", f"no estimate {estimate_id!r}")
        return estimate

    def _model(self, field: str, version: str) -> TokenModel:
        try:
            return self._registry.model_for(version)
        except UnknownModelVersion:
            raise NotFound(f"{field}: no model version {version!r}") from None


# -- validation ------------------------------------------------------------------------------


def _required(value: str, field: str) -> str:
    value = value.strip()
    if not value:
        raise InvalidArgument(field, "is required")
    return value


def _non_negative(value: int, field: str) -> None:
    if value < 0:
        raise InvalidArgument(field, f"must not be negative (got {value})")


def _complexity(value: str) -> str:
    try:
        return normalize_complexity(value)
    except ValueError as error:
        raise InvalidArgument("complexity", str(error)) from None


def _paths(values: Sequence[str], field: str) -> tuple[str, ...]:
    paths = tuple([value.strip() for value in values])
    if not all(paths):
        raise InvalidArgument(field, f"entry {paths.index('') + 1} is empty")
    return paths


def _guard_reason(tokens: int) -> str:
    return (
        f"actual_output_tokens: {tokens} is below the validity guard of {MIN_OUTPUT_TOKENS} output tokens "
        "(an empty or failed answer says nothing about the size of the phase)"
    )


def _since(timestamp: Timestamp) -> datetime:
    return timestamp.ToDatetime(tzinfo=UTC)


def _event_filter(message: estimator_pb2.TelemetryFilter) -> EventFilter:
    return EventFilter(
        category=message.category.strip(),
        complexity=message.complexity.strip(),
        model=message.model.strip(),
        run_id=message.run_id.strip(),
        since=_since(message.since) if message.HasField("since") else None,
    )


def imported_record(event: estimator_pb2.TelemetryEvent) -> TelemetryRecord:
    """Validate one imported event (same guard as RecordOutcome) and make it a record.

    Legacy category names are stored canonical ("IMPLEMENT_FEATURE" -> "implementation",
    "documentation" -> "docs") so filters and breakdowns group history with new telemetry.
    """
    phase_id = _required(event.phase_id, "phase_id")
    for name in ("deliverable_count", "predicted_output_tokens", "actual_output_tokens", "selected_budget"):
        _non_negative(getattr(event, name), name)
    actual_max = event.actual_max_tokens if event.HasField("actual_max_tokens") else None
    if actual_max is not None:
        _non_negative(actual_max, "actual_max_tokens")
    if event.actual_output_tokens < MIN_OUTPUT_TOKENS:
        raise InvalidArgument(
            "actual_output_tokens", _guard_reason(event.actual_output_tokens).split(": ", 1)[1]
        )
    if event.HasField("smape") and not 0.0 <= event.smape <= 200.0:
        raise InvalidArgument("smape", f"must be between 0 and 200 (got {event.smape})")
    if event.HasField("waste_ratio") and event.waste_ratio < 0:
        raise InvalidArgument("waste_ratio", f"must not be negative (got {event.waste_ratio})")
    deliverables = [path.strip() for path in event.deliverables]
    return TelemetryRecord(
        run_id=event.run_id.strip(),
        phase_id=phase_id,
        category=normalize_category(event.category),
        complexity=event.complexity.strip().lower(),
        deliverable_count=event.deliverable_count or len(deliverables),
        deliverables=deliverables,
        description=event.description if event.HasField("description") else None,
        predicted_output_tokens=event.predicted_output_tokens,
        actual_output_tokens=event.actual_output_tokens,
        selected_budget=event.selected_budget,
        actual_max_tokens=actual_max,
        success=event.success,
        truncated=is_truncated(event.stop_reason, event.truncated),
        stop_reason=event.stop_reason.strip(),
        model=event.model.strip(),
        smape=event.smape
        if event.HasField("smape")
        else smape(event.predicted_output_tokens, event.actual_output_tokens),
        waste_ratio=event.waste_ratio
        if event.HasField("waste_ratio")
        else waste_ratio(event.selected_budget, actual_max, event.actual_output_tokens),
        timestamp=event.timestamp.ToDatetime(tzinfo=UTC) if event.HasField("timestamp") else utcnow(),
        source=SOURCE_IMPORT,
    )


# -- conversions -----------------------------------------------------------------------------


def _outcome(event: TelemetryRecord) -> Outcome:
    return Outcome(
        category=event.category,
        complexity=event.complexity,
        deliverable_count=event.deliverable_count,
        predicted_output_tokens=event.predicted_output_tokens,
        actual_output_tokens=event.actual_output_tokens,
        selected_budget=event.selected_budget,
        actual_max_tokens=event.actual_max_tokens,
        success=event.success,
        truncated=event.truncated,
    )


def training_event(event: TelemetryRecord) -> TrainingEvent:
    """What calibration learns from: the phase features (re-predicted by the current model) and actuals."""
    return TrainingEvent(
        phase=PhaseInput(
            description=event.description or "",
            category_hint=event.category,
            complexity=_lenient_complexity(event.complexity),
            deliverables=tuple(event.deliverables),
            model=event.model,
        ),
        actual_output_tokens=event.actual_output_tokens,
        success=event.success,
        truncated=event.truncated,
    )


def _lenient_complexity(value: str) -> str:
    """Imported history may carry spellings we do not accept on new requests: fall back to medium."""
    try:
        return normalize_complexity(value)
    except ValueError:
        return normalize_complexity("")


def event_message(record: TelemetryRecord) -> estimator_pb2.TelemetryEvent:
    event = estimator_pb2.TelemetryEvent(
        run_id=record.run_id,
        phase_id=record.phase_id,
        category=record.category,
        complexity=record.complexity,
        deliverable_count=record.deliverable_count,
        deliverables=record.deliverables,
        predicted_output_tokens=record.predicted_output_tokens,
        actual_output_tokens=record.actual_output_tokens,
        selected_budget=record.selected_budget,
        success=record.success,
        truncated=record.truncated,
        stop_reason=record.stop_reason,
        model=record.model,
    )
    if record.actual_max_tokens is not None:
        event.actual_max_tokens = record.actual_max_tokens
    if record.smape is not None:
        event.smape = record.smape
    if record.waste_ratio is not None:
        event.waste_ratio = record.waste_ratio
    if record.description is not None:
        event.description = record.description
    event.timestamp.FromDatetime(record.timestamp)
    return event


def metrics_message(metrics: Any) -> estimator_pb2.AccuracyMetrics:
    """Domain AccuracyMetrics -> message (same field names; None -> 0)."""
    values = {name: getattr(metrics, name, None) for name in _METRIC_FIELDS}
    return estimator_pb2.AccuracyMetrics(
        **{name: value for name, value in values.items() if value is not None}
    )


def _groups(by_key: Any) -> list[estimator_pb2.GroupAccuracy]:
    items: Iterable[tuple[str, Any]] = by_key.items() if isinstance(by_key, dict) else by_key
    return [
        estimator_pb2.GroupAccuracy(key=str(key), metrics=metrics_message(metrics))
        for key, metrics in sorted(items, key=lambda item: str(item[0]))
    ]


def _frontier(points: Iterable[Any]) -> list[estimator_pb2.FrontierPoint]:
    return [
        estimator_pb2.FrontierPoint(
            buffer=float(p.buffer),
            miss_rate=float(p.miss_rate),
            waste_p50=float(p.waste_p50),
            waste_p90=float(p.waste_p90),
            lost_share=float(p.lost_share),
            chosen=bool(p.chosen),
        )
        for p in points
    ]


def report_message(report: Any, base_version: str) -> estimator_pb2.CalibrationReport:
    verdict = report.verdict
    return estimator_pb2.CalibrationReport(
        before=metrics_message(report.before),
        after=metrics_message(report.after),
        groups=[
            estimator_pb2.GroupCalibration(
                category=group.category,
                complexity=group.complexity,
                samples=int(group.samples),
                factor=float(group.factor),
                confidence=float(group.confidence),
                applied=bool(group.applied),
                smape_before=float(group.smape_before),
                smape_after=float(group.smape_after),
                buffer=float(group.buffer),
                buffer_cap=float(group.buffer_cap),
            )
            for group in report.groups
        ],
        training_events=int(report.training_events),
        folds=int(report.folds),
        base_version=report.base_version or base_version,
        notes=list(report.notes),
        frontier=_frontier(report.frontier),
        baseline_frontier=_frontier(report.baseline_frontier),
        promote=verdict is None or verdict.promote,
        rejection_reasons=list(verdict.reasons) if verdict is not None else [],
        recommendation=verdict.sentence if verdict is not None else "",
    )


def report_summary(report: estimator_pb2.CalibrationReport) -> str:
    applied = sum(1 for group in report.groups if group.applied)
    return (
        f"{applied}/{len(report.groups)} groups corrected from {report.training_events} clean events; "
        f"held-out median SMAPE {report.before.median_smape:.1f}% -> {report.after.median_smape:.1f}%, "
        f"budget misses {100 * report.before.budget_miss_rate:.1f}% -> {100 * report.after.budget_miss_rate:.1f}%, "
        f"P90 waste {report.before.waste_p90:.2f}x -> {report.after.waste_p90:.2f}x"
        + ("" if report.promote else " (rejected)")
    )


def rejection_reasons(record: ModelVersionRecord) -> list[str]:
    """The promotion guard's reasons, kept in the stored calibration report (empty without one)."""
    if not record.report_json:
        return []
    report = json_format.Parse(
        record.report_json, estimator_pb2.CalibrationReport(), ignore_unknown_fields=True
    )
    return list(report.rejection_reasons)


def model_message(record: ModelVersionRecord) -> estimator_pb2.ModelVersion:
    message = estimator_pb2.ModelVersion(
        version=record.version,
        status=_MODEL_STATUS.get(record.status, estimator_pb2.MODEL_STATUS_UNSPECIFIED),
        parent_version=record.parent_version,
        summary=record.summary,
        status_reasons=rejection_reasons(record) if record.status == MODEL_REJECTED else [],
    )
    message.created_at.FromDatetime(record.created_at)
    if record.promoted_at is not None:
        message.promoted_at.FromDatetime(record.promoted_at)
    return message


def evaluation_message(
    version: str, model: TokenModel, records: Sequence[TelemetryRecord]
) -> estimator_pb2.ModelEvaluation:
    """Accuracy of ``model`` re-predicting each event from its features, overall and per category."""
    by_category: dict[str, list[TrainingEvent]] = {}
    events = []
    for record in records:
        event = training_event(record)
        events.append(event)
        by_category.setdefault(normalize_category(record.category) or "unknown", []).append(event)
    return estimator_pb2.ModelEvaluation(
        version=version,
        overall=metrics_message(evaluate(model, events)),
        by_category=_groups({key: evaluate(model, group) for key, group in by_category.items()}),
    )


# -- wiring ----------------------------------------------------------------------------------

SERVICE_NAME = estimator_pb2.DESCRIPTOR.services_by_name["EstimatorService"].full_name


def open_servicer(
    database_url: str, model_refresh_seconds: float = 3.0, estimate_flush_seconds: float = 0.0
) -> tuple[EstimatorServicer, Engine]:
    """Engine, schema upgrade (locked, replica-safe), default model and the servicer over them.

    Call ``servicer.close()`` then ``engine.dispose()`` when done.
    """
    engine = create_db_engine(database_url)
    upgrade_schema(engine, "autopack_estimator.migrations", "alembic_version_estimator")
    store = Store(engine)
    registry = ModelRegistry(store, model_refresh_seconds)
    return EstimatorServicer(store, registry, estimate_flush_seconds), engine


def service_binding(servicer: EstimatorServicer) -> ServiceBinding:
    """How ``create_server`` registers the estimator."""
    return ServiceBinding(SERVICE_NAME, estimator_pb2_grpc.add_EstimatorServiceServicer_to_server, servicer)
