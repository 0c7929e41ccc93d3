"""NDJSON records <-> ``TelemetryEvent`` messages.

One JSON object per line whose keys are the TokenEstimationV2 column names plus ``timestamp``
and ``description``, so an export of the original telemetry table seeds a new deployment.
Parsing checks shapes and types only (a bad line names its field); whether an event is worth
keeping (the validity guard) is decided by the service, so every client is held to it.
Naive timestamps (the legacy export wrote the operator's local time without a zone) are
taken as UTC.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from autopack.estimator.v1 import estimator_pb2

COLUMNS = (
    "run_id",
    "phase_id",
    "timestamp",
    "category",
    "complexity",
    "deliverable_count",
    "deliverables",
    "description",
    "predicted_output_tokens",
    "actual_output_tokens",
    "selected_budget",
    "actual_max_tokens",
    "success",
    "truncated",
    "stop_reason",
    "model",
    "smape",
    "waste_ratio",
)
"""Record keys, in the order an export writes them."""

_STRINGS = ("run_id", "phase_id", "category", "complexity", "stop_reason", "model")
_REQUIRED_INTS = ("predicted_output_tokens", "actual_output_tokens", "selected_budget")
_INT32_MAX = 2**31 - 1


class RecordError(ValueError):
    """A record that cannot become a TelemetryEvent; names the offending field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class ParsedLine:
    """One non-blank input line: the event, or why it could not be read."""

    line_number: int
    event: estimator_pb2.TelemetryEvent | None = None
    error: str = ""


def parse_timestamp(value: Any) -> datetime:
    """ISO 8601 text or epoch seconds; a missing zone means UTC."""
    if isinstance(value, bool):
        raise RecordError("timestamp", f"expected an ISO 8601 time, got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise RecordError("timestamp", f"expected a finite epoch, got {value!r}")
        return datetime.fromtimestamp(value, UTC)
    if not isinstance(value, str) or not value.strip():
        raise RecordError("timestamp", f"expected an ISO 8601 time, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError as error:
        raise RecordError("timestamp", f"not an ISO 8601 time: {value!r}") from error
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _int(record: Mapping[str, Any], name: str, *, required: bool) -> int | None:
    value = record.get(name)
    if value is None:
        if required:
            raise RecordError(name, "is required")
        return None
    if isinstance(value, bool):
        raise RecordError(name, f"expected an integer, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise RecordError(name, f"expected an integer, got {value!r}")
    if abs(value) > _INT32_MAX:
        raise RecordError(name, f"{value} is out of range")
    return value


def _float(record: Mapping[str, Any], name: str) -> float | None:
    value = record.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RecordError(name, f"expected a number, got {value!r}")
    return float(value)


def _bool(record: Mapping[str, Any], name: str) -> bool:
    value = record.get(name)
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise RecordError(name, f"expected true or false, got {value!r}")


def _str(record: Mapping[str, Any], name: str) -> str:
    value = record.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RecordError(name, f"expected a string, got {value!r}")
    return value


def record_to_event(record: Mapping[str, Any]) -> estimator_pb2.TelemetryEvent:
    """Build an event from one decoded record; unknown keys (legacy ids, ...) are ignored."""
    if not isinstance(record, Mapping):
        raise RecordError("record", "expected a JSON object")
    event = estimator_pb2.TelemetryEvent()
    for name in _STRINGS:
        setattr(event, name, _str(record, name))
    deliverables = record.get("deliverables")
    if deliverables is None:
        deliverables = []
    if not isinstance(deliverables, list) or not all(isinstance(item, str) for item in deliverables):
        raise RecordError("deliverables", "expected a list of strings")
    event.deliverables.extend(deliverables)
    count = _int(record, "deliverable_count", required=False)
    event.deliverable_count = len(deliverables) if count is None else count
    for name in _REQUIRED_INTS:
        setattr(event, name, _int(record, name, required=True))
    actual_max = _int(record, "actual_max_tokens", required=False)
    if actual_max is not None:
        event.actual_max_tokens = actual_max
    event.success = _bool(record, "success")
    event.truncated = _bool(record, "truncated")
    for name in ("smape", "waste_ratio"):
        value = _float(record, name)
        if value is not None:
            setattr(event, name, value)
    if record.get("timestamp") is not None:
        event.timestamp.FromDatetime(parse_timestamp(record["timestamp"]))
    description = record.get("description")
    if description is not None:
        if not isinstance(description, str):
            raise RecordError("description", f"expected a string, got {description!r}")
        event.description = description
    return event


def event_to_record(event: estimator_pb2.TelemetryEvent) -> dict[str, Any]:
    """The NDJSON record of an event, keys in ``COLUMNS`` order; unknown values are null."""
    timestamp = event.timestamp.ToDatetime(tzinfo=UTC).isoformat() if event.HasField("timestamp") else None
    return {
        "run_id": event.run_id,
        "phase_id": event.phase_id,
        "timestamp": timestamp,
        "category": event.category,
        "complexity": event.complexity,
        "deliverable_count": event.deliverable_count,
        "deliverables": list(event.deliverables),
        "description": event.description if event.HasField("description") else None,
        "predicted_output_tokens": event.predicted_output_tokens,
        "actual_output_tokens": event.actual_output_tokens,
        "selected_budget": event.selected_budget,
        "actual_max_tokens": event.actual_max_tokens if event.HasField("actual_max_tokens") else None,
        "success": event.success,
        "truncated": event.truncated,
        "stop_reason": event.stop_reason,
        "model": event.model,
        "smape": round(event.smape, 4) if event.HasField("smape") else None,
        "waste_ratio": round(event.waste_ratio, 4) if event.HasField("waste_ratio") else None,
    }


def parse_line(text: str) -> estimator_pb2.TelemetryEvent:
    """One NDJSON line to an event, or RecordError."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise RecordError("line", f"not valid JSON ({error.msg} at column {error.colno})") from error
    return record_to_event(record)


def read_ndjson(lines: Iterable[str]) -> Iterator[ParsedLine]:
    """Parse every non-blank line; a bad line is reported by number and the rest still parse."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield ParsedLine(number, event=parse_line(line))
        except RecordError as error:
            yield ParsedLine(number, error=str(error))


def write_ndjson(events: Iterable[estimator_pb2.TelemetryEvent], handle: IO[str]) -> int:
    """Write one line per event; returns how many were written."""
    written = 0
    for event in events:
        handle.write(json.dumps(event_to_record(event), ensure_ascii=False) + "\n")
        written += 1
    return written
