"""NDJSON <-> TelemetryEvent: legacy exports import, bad lines are reported by number."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from autopack_estimator.telemetry_io import (
    COLUMNS,
    RecordError,
    event_to_record,
    parse_line,
    parse_timestamp,
    read_ndjson,
    record_to_event,
    write_ndjson,
)


def test_legacy_sample_parses_completely(legacy_sample: Path) -> None:
    with legacy_sample.open(encoding="utf-8") as handle:
        parsed = list(read_ndjson(handle))
    assert len(parsed) == 18
    assert [p.error for p in parsed if p.error] == []
    first = parsed[0].event
    assert first is not None
    assert first.phase_id == "lovable-p2.4-conversation-state"
    assert first.actual_output_tokens == 5606
    assert not first.HasField("actual_max_tokens")  # null in the legacy export: unknown, not 0
    assert first.deliverables[0] == "src/autopack/memory/conversation_state.py"
    # Legacy timestamps are naive: they are taken as UTC.
    assert first.timestamp.ToDatetime(tzinfo=UTC) == datetime(2025, 12, 24, 11, 52, 54, tzinfo=UTC)
    null_run = next(
        p.event for p in parsed if p.event is not None and p.event.phase_id == "research-testing-polish"
    )
    assert null_run.run_id == ""


def test_record_round_trip_keeps_every_column() -> None:
    record = {
        "run_id": "r",
        "phase_id": "p",
        "timestamp": "2026-02-03T04:05:06+00:00",
        "category": "tests",
        "complexity": "low",
        "deliverable_count": 1,
        "deliverables": ["tests/test_x.py"],
        "description": "Write tests",
        "predicted_output_tokens": 1000,
        "actual_output_tokens": 1200,
        "selected_budget": 2048,
        "actual_max_tokens": 2048,
        "success": True,
        "truncated": False,
        "stop_reason": "end_turn",
        "model": "claude-sonnet-4-5",
        "smape": 18.1818,
        "waste_ratio": 1.7067,
    }
    out = event_to_record(record_to_event(record))
    assert out == record
    assert tuple(out) == COLUMNS


def test_timestamps_with_zone_are_converted_and_epochs_accepted() -> None:
    assert parse_timestamp("2026-01-01T02:00:00+02:00") == datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_timestamp("2026-01-01T00:00:00Z") == datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_timestamp(0) == datetime(1970, 1, 1, tzinfo=UTC)


def test_missing_optional_values_stay_unset_and_count_defaults_to_deliverables() -> None:
    event = record_to_event(
        {
            "phase_id": "p",
            "predicted_output_tokens": 10,
            "actual_output_tokens": 100,
            "selected_budget": 20,
            "deliverables": ["a.py", "b.py"],
            "legacy_id": 7,
        }
    )
    assert event.deliverable_count == 2
    assert not event.HasField("timestamp")
    assert not event.HasField("smape")
    assert not event.HasField("description")
    record = event_to_record(event)
    assert record["timestamp"] is None and record["actual_max_tokens"] is None


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"phase_id": "p", "actual_output_tokens": 100, "selected_budget": 1}, "predicted_output_tokens"),
        (
            {
                "phase_id": "p",
                "predicted_output_tokens": "many",
                "actual_output_tokens": 1,
                "selected_budget": 1,
            },
            "predicted_output_tokens",
        ),
        (
            {"predicted_output_tokens": 1, "actual_output_tokens": 1, "selected_budget": 1, "success": "yes"},
            "success",
        ),
        (
            {
                "predicted_output_tokens": 1,
                "actual_output_tokens": 1,
                "selected_budget": 1,
                "deliverables": "a.py",
            },
            "deliverables",
        ),
        (
            {
                "predicted_output_tokens": 1,
                "actual_output_tokens": 1,
                "selected_budget": 1,
                "timestamp": "yesterday",
            },
            "timestamp",
        ),
        (
            {"predicted_output_tokens": 1, "actual_output_tokens": 2**40, "selected_budget": 1},
            "actual_output_tokens",
        ),
        (
            {"predicted_output_tokens": 1, "actual_output_tokens": 1, "selected_budget": 1, "phase_id": 5},
            "phase_id",
        ),
    ],
)
def test_bad_records_name_their_field(record: dict[str, object], field: str) -> None:
    with pytest.raises(RecordError) as caught:
        record_to_event(record)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_malformed_lines_are_reported_by_number_and_the_rest_still_parse() -> None:
    good = json.dumps(
        {"phase_id": "p", "predicted_output_tokens": 1, "actual_output_tokens": 60, "selected_budget": 2}
    )
    text = "\n".join([good, "{not json", "", good, "[1, 2]", json.dumps({"phase_id": "q"})]) + "\n"
    parsed = list(read_ndjson(io.StringIO(text)))
    assert [(p.line_number, p.event is not None) for p in parsed] == [
        (1, True),
        (2, False),
        (4, True),
        (5, False),
        (6, False),
    ]
    errors = {p.line_number: p.error for p in parsed if p.error}
    assert errors[2].startswith("line: not valid JSON")
    assert errors[5].startswith("record: expected a JSON object")
    assert errors[6].startswith("predicted_output_tokens: is required")


def test_write_ndjson_writes_one_line_per_event() -> None:
    line = json.dumps(
        {"phase_id": "p", "predicted_output_tokens": 1, "actual_output_tokens": 60, "selected_budget": 2}
    )
    events = [parse_line(line), parse_line(line)]
    buffer = io.StringIO()
    assert write_ndjson(events, buffer) == 2
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 2 and all(json.loads(item)["phase_id"] == "p" for item in lines)
