"""The doctor (role ``doctor``): diagnose a failing phase, and re-plan its description.

Diagnose asks the doctor chain's cheap model first and keeps its answer when its confidence
reaches ``min_confidence`` (0.7, seed 004 "Confidence Escalation"); otherwise the next, stronger
model is asked and its answer kept. A malformed answer counts as no confidence: the stronger
model is asked; when the last model's answer is malformed too, the RPC fails with the typed
reason ``INVALID_DIAGNOSIS`` and every call's usage - never a crash, never a guessed action.

Replan asks for a revised description that keeps the deliverables, the scope and the run's
intention; an answer without a usable, changed description fails as ``INVALID_REPLAN``.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Literal

from autopack_common.errors import DomainError, FailedPrecondition

from autopack_builder.calls import CallLog, CallRunner, CallsFailed
from autopack_builder.models import ChatResult, LlmCallRecord

log = logging.getLogger(__name__)

DoctorActionName = Literal["retry_with_hint", "replan", "skip_phase", "mark_fatal", "rollback_run"]
DOCTOR_ACTIONS: tuple[DoctorActionName, ...] = (
    "retry_with_hint",
    "replan",
    "skip_phase",
    "mark_fatal",
    "rollback_run",
)
# The monolith's name for retry_with_hint (seed 004) is accepted too.
_ACTION_ALIASES = {"retry_with_fix": "retry_with_hint"}
_OBJECT_START = re.compile(r"\{")
_DECODER = json.JSONDecoder(strict=False)
MAX_DETAIL_CHARS = 3000
MAX_HINT_CHARS = 2000
MAX_DESCRIPTION_GROWTH = 4  # a revision may be at most this many times longer than the original (+500)


class DoctorAnswerError(ValueError):
    """A doctor answer that cannot be used; ``reason`` is a stable code."""

    def __init__(self, reason: str, problem: str) -> None:
        super().__init__(problem)
        self.reason = reason
        self.problem = problem


@dataclass(frozen=True)
class FailedAttemptInfo:
    """One earlier failed attempt as the orchestrator recorded it."""

    attempt: int
    outcome: str
    fingerprint: str = ""
    detail: str = ""


@dataclass(frozen=True)
class DoctorTask:
    """A validated Diagnose or Replan request."""

    run_id: str
    phase_id: str
    description: str
    failures: tuple[FailedAttemptInfo, ...]
    category: str = ""
    complexity: str = ""
    deliverables: tuple[str, ...] = ()
    scope_paths: tuple[str, ...] = ()
    validation_command: tuple[str, ...] = ()
    intention_context: str = ""
    mitigations_applied: tuple[str, ...] = ()
    max_tokens: int = 0


@dataclass(frozen=True)
class Diagnosis:
    action: DoctorActionName
    confidence: float
    diagnosis: str
    hint: str


@dataclass(frozen=True)
class DiagnosisResult:
    diagnosis: Diagnosis
    model: str
    calls: tuple[LlmCallRecord, ...]


@dataclass(frozen=True)
class Replan:
    revised_description: str
    rationale: str


@dataclass(frozen=True)
class ReplanResult:
    replan: Replan
    model: str
    calls: tuple[LlmCallRecord, ...]


DIAGNOSE_SYSTEM_PROMPT = """\
You are the Doctor of Autopack, an autonomous software engineering system. A phase of a plan \
failed; diagnose why and recommend ONE recovery action.

Actions:
- "retry_with_hint": the approach is right; the next attempt needs a concrete instruction (hint).
- "replan": the phase description itself leads the builder astray; it must be rewritten.
- "skip_phase": the phase is not needed for the run's goal; the run can continue without it.
- "mark_fatal": the phase cannot succeed (impossible requirement, missing prerequisite).
- "rollback_run": the workspace is damaged; roll the run back and stop.

Reply with exactly one JSON object and nothing else:
{"action": "<one of the actions>", "confidence": <number from 0 to 1>, \
"diagnosis": "<the cause, one or two sentences>", "hint": "<instruction for the next attempt, \
or empty>"}
"""

REPLAN_SYSTEM_PROMPT = """\
You are the planner of Autopack, an autonomous software engineering system. A phase failed \
repeatedly in similar ways: its description leads the builder astray. Rewrite the description \
so the next attempt succeeds. Keep the same deliverables, the same scope and the run's \
intention; change how the work is described (order, constraints, pitfalls to avoid), not what \
it must achieve.

Reply with exactly one JSON object and nothing else:
{"revised_description": "<the complete new phase description>", \
"rationale": "<why this wording avoids the failures, one or two sentences>"}
"""


def _clip(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def _phase_lines(task: DoctorTask) -> list[str]:
    lines = [f"# Phase {task.phase_id}", "", "## Description", task.description.strip()]
    if task.intention_context.strip():
        lines += ["", "## Project intention (the run's goal; stay within it)", task.intention_context.strip()]
    if task.category or task.complexity:
        lines += ["", f"Category: {task.category or 'unknown'}; complexity: {task.complexity or 'medium'}"]
    if task.deliverables:
        lines += ["", "## Deliverables", *(f"- {path}" for path in task.deliverables)]
    if task.scope_paths:
        lines += ["", "## Scope (paths the phase may write)", *(f"- {path}" for path in task.scope_paths)]
    if task.validation_command:
        lines += ["", "## Validation command", " ".join(task.validation_command)]
    lines += ["", "## Failed attempts (oldest first)"]
    for failure in task.failures:
        lines += ["", f"### Attempt {failure.attempt}: {failure.outcome}"]
        if failure.fingerprint:
            lines.append(f"Fingerprint: {failure.fingerprint}")
        if failure.detail.strip():
            lines += ["```", _clip(failure.detail, MAX_DETAIL_CHARS), "```"]
    return lines


def diagnose_prompt(task: DoctorTask) -> str:
    lines = _phase_lines(task)
    if task.mitigations_applied:
        lines += ["", "## Mitigations already applied (do not recommend them again)"]
        lines += [f"- {item}" for item in task.mitigations_applied]
    lines += ["", "Reply with the JSON object only."]
    return "\n".join(lines) + "\n"


def replan_prompt(task: DoctorTask) -> str:
    return "\n".join([*_phase_lines(task), "", "Reply with the JSON object only."]) + "\n"


def _json_object(text: str) -> dict[str, object]:
    """The first JSON object in an answer (fences and prose around it are ignored)."""
    if not text.strip():
        raise DoctorAnswerError("empty", "the answer is empty")
    for match in _OBJECT_START.finditer(text):
        try:
            value, _end = _DECODER.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    raise DoctorAnswerError("no_json", "the answer contains no complete JSON object")


def parse_diagnosis(text: str) -> Diagnosis:
    """A validated diagnosis; DoctorAnswerError says what was wrong."""
    data = _json_object(text)
    action = data.get("action")
    if not isinstance(action, str):
        raise DoctorAnswerError(
            "invalid_action", f"action {action!r}: must be one of {', '.join(DOCTOR_ACTIONS)}"
        )
    action = _ACTION_ALIASES.get(action.strip().lower(), action.strip().lower())
    if action not in DOCTOR_ACTIONS:
        raise DoctorAnswerError(
            "invalid_action", f"action {action!r}: must be one of {', '.join(DOCTOR_ACTIONS)}"
        )
    confidence = data.get("confidence")
    if isinstance(confidence, bool) or not isinstance(confidence, int | float) or not 0 <= confidence <= 1:
        raise DoctorAnswerError(
            "invalid_confidence", f"confidence {confidence!r}: must be a number in [0, 1]"
        )
    diagnosis = data.get("diagnosis")
    if not isinstance(diagnosis, str) or not diagnosis.strip():
        raise DoctorAnswerError("invalid_diagnosis", "diagnosis: must be a non-empty string")
    hint = data.get("hint", "")
    if hint is None:
        hint = ""
    if not isinstance(hint, str):
        raise DoctorAnswerError("invalid_hint", "hint: must be a string")
    if action in ("retry_with_hint", "replan") and not hint.strip():
        raise DoctorAnswerError("invalid_hint", f"hint: required for action {action}")
    return Diagnosis(
        action=action,  # type: ignore[arg-type]
        confidence=float(confidence),
        diagnosis=diagnosis.strip(),
        hint=hint.strip()[:MAX_HINT_CHARS],
    )


def parse_replan(text: str, original: str) -> Replan:
    """A validated revision: present, changed, and not an essay longer than the phase warrants."""
    data = _json_object(text)
    revised = data.get("revised_description")
    if not isinstance(revised, str) or not revised.strip():
        raise DoctorAnswerError("invalid_description", "revised_description: must be a non-empty string")
    revised = revised.strip()
    if revised == original.strip():
        raise DoctorAnswerError("unchanged", "revised_description: identical to the current description")
    if len(revised) > MAX_DESCRIPTION_GROWTH * len(original) + 500:
        raise DoctorAnswerError(
            "invalid_description",
            f"revised_description: {len(revised)} characters, more than {MAX_DESCRIPTION_GROWTH}x the original",
        )
    rationale = data.get("rationale", "")
    if not isinstance(rationale, str):
        raise DoctorAnswerError("invalid_rationale", "rationale: must be a string")
    return Replan(revised_description=revised, rationale=rationale.strip())


class Doctor:
    """Diagnose and Replan over the doctor role's chain."""

    def __init__(self, runner: CallRunner) -> None:
        self._runner = runner

    def _budget(self, task: DoctorTask) -> int:
        return task.max_tokens or self._runner.routing.role("doctor").max_tokens

    def _failover(self) -> list[str]:
        return list(self._runner.routing.role("doctor").failover)

    def diagnose(self, task: DoctorTask) -> DiagnosisResult:
        """Cheap model first; the next model of the chain when confidence < min_confidence or malformed."""
        routing = self._runner.routing
        chain = routing.chain("doctor", task.category, task.complexity)
        threshold = routing.role("doctor").min_confidence
        call_log = CallLog(
            run_id=task.run_id, phase_id=task.phase_id, attempt=len(task.failures), role="doctor"
        )
        user = diagnose_prompt(task)
        kept: tuple[Diagnosis, str] | None = None
        last_error: DoctorAnswerError | None = None
        for position, model in enumerate(chain):
            result, record = self._ask(
                call_log, [model, *self._failover()], DIAGNOSE_SYSTEM_PROMPT, user, self._budget(task)
            )
            try:
                diagnosis = parse_diagnosis(result.text)
            except DoctorAnswerError as error:
                self._runner.set_outcome(call_log, record, f"invalid:{error.reason}", None)
                last_error = error
                log.warning("doctor: %s gave an unusable diagnosis (%s)", result.model, error.problem)
                continue
            self._runner.set_outcome(call_log, record, "ok", None)
            kept = (diagnosis, result.model)  # a stronger model's valid answer replaces a weaker one's
            if diagnosis.confidence >= threshold:
                break
            if position < len(chain) - 1:
                log.info(
                    "doctor: %s confidence %.2f < %.2f; asking %s",
                    result.model,
                    diagnosis.confidence,
                    threshold,
                    chain[position + 1],
                )
        if kept is None:
            problem = last_error.problem if last_error else "no answer"
            raise CallsFailed(
                FailedPrecondition(f"phase {task.phase_id}: the doctor's answer is unusable: {problem}"),
                call_log.records,
                "INVALID_DIAGNOSIS",
            )
        return DiagnosisResult(diagnosis=kept[0], model=kept[1], calls=tuple(call_log.records))

    def replan(self, task: DoctorTask) -> ReplanResult:
        """A revised description from the doctor chain's strongest model (one request, plus fail-over)."""
        chain = self._runner.routing.chain("doctor", task.category, task.complexity)
        call_log = CallLog(
            run_id=task.run_id, phase_id=task.phase_id, attempt=len(task.failures), role="doctor"
        )
        result, record = self._ask(
            call_log,
            [chain[-1], *self._failover()],
            REPLAN_SYSTEM_PROMPT,
            replan_prompt(task),
            self._budget(task),
        )
        try:
            replan = parse_replan(result.text, task.description)
        except DoctorAnswerError as error:
            self._runner.set_outcome(call_log, record, f"invalid:{error.reason}", None)
            raise CallsFailed(
                FailedPrecondition(f"phase {task.phase_id}: the re-plan answer is unusable: {error.problem}"),
                call_log.records,
                "INVALID_REPLAN",
            ) from None
        self._runner.set_outcome(call_log, record, "ok", None)
        return ReplanResult(replan=replan, model=result.model, calls=tuple(call_log.records))

    def _ask(
        self, call_log: CallLog, models: list[str], system: str, user: str, max_tokens: int
    ) -> tuple[ChatResult, LlmCallRecord]:
        try:
            return self._runner.chat(call_log, models=models, max_tokens=max_tokens, system=system, user=user)
        except CallsFailed:
            raise
        except DomainError as error:
            if call_log.records:
                raise CallsFailed(error, call_log.records, "PROVIDER_ERROR") from error
            raise
