"""Mapping between the orchestrator's plain records and the v1 protobuf messages."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from autopack.common.v1 import common_pb2
from autopack.orchestrator.v1 import orchestrator_pb2 as pb
from google.protobuf.timestamp_pb2 import Timestamp

from autopack_orchestrator.drain import DrainOptions
from autopack_orchestrator.events import EventType, FailureKind, Outcome, RunEvent, State
from autopack_orchestrator.plan import PhaseSpec, Plan, TierSpec
from autopack_orchestrator.store import AttemptRecord, PhaseRecord, RunRecord, TierRecord, Usage


def plan_from_proto(message: pb.Plan) -> Plan:
    """Plain plan from the request; validation happens on the result, not here."""
    return Plan(
        run_id=message.run_id,
        name=message.name,
        source_repo=message.source_repo,
        project=message.project,
        tiers=tuple(
            TierSpec(
                tier_id=tier.tier_id,
                name=tier.name,
                phases=tuple(phase_from_proto(phase) for phase in tier.phases),
            )
            for tier in message.tiers
        ),
    )


def phase_from_proto(message: common_pb2.PhaseSpec) -> PhaseSpec:
    return PhaseSpec(
        phase_id=message.phase_id,
        description=message.description,
        category=message.category,
        complexity=message.complexity,
        deliverables=tuple(message.deliverables),
        scope_paths=tuple(message.scope.paths),
        read_only_context=tuple(message.scope.read_only_context),
        validation_command=tuple(message.validation_command),
        validation_timeout_seconds=message.validation_timeout_seconds,
    )


def phase_to_proto(spec: PhaseSpec) -> common_pb2.PhaseSpec:
    return common_pb2.PhaseSpec(
        phase_id=spec.phase_id,
        description=spec.description,
        category=spec.category,
        complexity=spec.complexity,
        deliverables=list(spec.deliverables),
        scope=common_pb2.Scope(paths=list(spec.scope_paths), read_only_context=list(spec.read_only_context)),
        validation_command=list(spec.validation_command),
        validation_timeout_seconds=spec.validation_timeout_seconds,
    )


def state_to_proto(state: State | None) -> pb.State.ValueType:
    return pb.STATE_UNSPECIFIED if state is None else pb.State.Value(f"STATE_{state.value}")


def state_from_proto(value: int) -> State | None:
    """None for STATE_UNSPECIFIED (no filter)."""
    if value == pb.STATE_UNSPECIFIED:
        return None
    return State(pb.State.Name(value).removeprefix("STATE_"))


def outcome_to_proto(outcome: Outcome) -> pb.AttemptOutcome.ValueType:
    return pb.AttemptOutcome.Value(f"ATTEMPT_OUTCOME_{outcome.value}")


def event_type_to_proto(event_type: EventType) -> pb.EventType.ValueType:
    return pb.EventType.Value(f"EVENT_TYPE_{event_type.value}")


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def usage_to_proto(usage: Usage) -> common_pb2.TokenUsage:
    message = common_pb2.TokenUsage(total_tokens=usage.total_tokens)
    if usage.input_tokens is not None:
        message.input_tokens = usage.input_tokens
    if usage.output_tokens is not None:
        message.output_tokens = usage.output_tokens
    return message


def attempt_to_proto(attempt: AttemptRecord) -> pb.Attempt:
    message = pb.Attempt(
        number=attempt.number,
        outcome=outcome_to_proto(attempt.outcome),
        estimate_id=attempt.estimate_id,
        predicted_output_tokens=attempt.predicted_output_tokens,
        selected_budget=attempt.selected_budget,
        actual_max_tokens=attempt.actual_max_tokens,
        usage=usage_to_proto(Usage(attempt.input_tokens, attempt.output_tokens, attempt.total_tokens)),
        provider=attempt.provider,
        model=attempt.model,
        savepoint=attempt.savepoint,
        failure_reason=attempt.failure_reason,
        trace_id=attempt.trace_id,
        started_at=timestamp(attempt.started_at),
        finished_at=timestamp(attempt.finished_at),
        fingerprint=attempt.fingerprint,
        counted=attempt.counted,
        failure_kind=pb.FailureKind.Value(
            f"FAILURE_KIND_{FailureKind(attempt.failure_kind or 'UNSPECIFIED').value}"
        ),
        check_verdict=attempt.check_verdict,
        guidance=attempt.guidance,
    )
    if attempt.check_exit_code is not None:
        message.check_exit_code = attempt.check_exit_code
    if attempt.smape is not None:
        message.smape = attempt.smape
    return message


def phase_to_message(phase: PhaseRecord) -> pb.Phase:
    return pb.Phase(
        spec=phase_to_proto(phase.spec),
        state=state_to_proto(phase.state),
        attempts=[attempt_to_proto(attempt) for attempt in phase.attempts],
        tier_id=phase.tier_id,
        original_description=phase.original_description,
        doctor_calls=phase.doctor_calls,
        replans=phase.replans,
        mitigations=[str(item.get("pattern", "")) for item in phase.mitigations],
        failure_reason=phase.failure_reason,
        attempt_floor=phase.attempt_floor,
    )


def tier_to_proto(tier: TierRecord) -> pb.Tier:
    return pb.Tier(
        tier_id=tier.tier_id,
        name=tier.name,
        phases=[phase_to_message(phase) for phase in tier.phases],
        state=state_to_proto(tier.state),
    )


def run_to_proto(run: RunRecord) -> pb.Run:
    return pb.Run(
        run_id=run.run_id,
        name=run.name,
        state=state_to_proto(run.state),
        source_repo=run.source_repo,
        workspace_path=run.workspace_path,
        tiers=[tier_to_proto(tier) for tier in run.tiers],
        created_at=timestamp(run.created_at),
        started_at=timestamp(run.started_at),
        finished_at=timestamp(run.finished_at),
        failure_reason=run.failure_reason,
        usage=usage_to_proto(run.usage),
        cancel_requested=run.cancel_requested,
        doctor_calls=run.doctor_calls,
        project=run.project,
    )


def event_to_proto(event: RunEvent) -> pb.WatchRunResponse:
    message = pb.WatchRunResponse(
        sequence=event.sequence,
        type=event_type_to_proto(event.type),
        run_id=event.run_id,
        phase_id=event.phase_id,
        state=state_to_proto(event.state),
        message=event.message,
        time=timestamp(event.time),
    )
    if event.attempt is not None:
        message.attempt.CopyFrom(attempt_to_proto(AttemptRecord.from_json(event.attempt)))
    return message


def drain_options_from_proto(message: pb.DrainOptions) -> DrainOptions:
    """Plain options; 0/empty fields take seed 002's defaults."""
    defaults = DrainOptions()
    return DrainOptions(
        phase_timeout_seconds=message.phase_timeout_seconds or defaults.phase_timeout_seconds,
        max_total_minutes=message.max_total_minutes,
        max_timeouts_per_run=message.max_timeouts_per_run or defaults.max_timeouts_per_run,
        max_attempts_per_phase=message.max_attempts_per_phase or defaults.max_attempts_per_phase,
        max_fingerprint_repeats=message.max_fingerprint_repeats or defaults.max_fingerprint_repeats,
        batch_size=message.batch_size or defaults.batch_size,
        skip_phases=tuple(message.skip_phases),
        run_ids=tuple(message.run_ids),
        skip_run_prefixes=tuple(message.skip_run_prefixes),
        sample_first=message.sample_first if message.HasField("sample_first") else defaults.sample_first,
        dry_run=message.dry_run,
        parallelism=message.parallelism or defaults.parallelism,
    )


def _drain_item(item: dict[str, Any]) -> pb.DrainItem:
    return pb.DrainItem(
        run_id=item["run_id"],
        phase_id=item["phase_id"],
        state=state_to_proto(State(item["state"])),
        reason=item.get("reason", ""),
        attempts=item.get("attempts", 0),
        total_tokens=item.get("total_tokens", 0),
        fingerprint=item.get("fingerprint", ""),
        duration_ms=item.get("duration_ms", 0),
        timed_out=item.get("timed_out", False),
    )


def drain_session_to_proto(session: dict[str, Any]) -> pb.DrainSession:
    options = dict(session["options"])
    return pb.DrainSession(
        session_id=session["session_id"],
        state=state_to_proto(State(session["state"])),
        options=pb.DrainOptions(
            **{
                key: value
                for key, value in options.items()
                if key in pb.DrainOptions.DESCRIPTOR.fields_by_name
            }
        ),
        planned=[_drain_item(item) for item in session["planned"]],
        results=[_drain_item(item) for item in session["results"]],
        summary=pb.DrainSummary(**session["summary"]),
        started_at=timestamp(session["started_at"]),
        finished_at=timestamp(session["finished_at"]),
    )
