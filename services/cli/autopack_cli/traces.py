"""Read the local JSONL span files and arrange a run's spans as trees, one per trace."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

RUN_ID_ATTRIBUTE = "autopack.run_id"


@dataclass
class SpanRecord:
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    service: str
    start: datetime
    end: datetime
    status: str
    attributes: dict[str, Any]
    children: list[SpanRecord] = field(default_factory=list)

    @property
    def duration_ms(self) -> float:
        return (self.end - self.start).total_seconds() * 1000

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SpanRecord:
        return cls(
            trace_id=data["context"]["trace_id"].removeprefix("0x"),
            span_id=data["context"]["span_id"].removeprefix("0x"),
            parent_id=(data.get("parent_id") or "").removeprefix("0x") or None,
            name=data["name"],
            service=data.get("resource", {}).get("attributes", {}).get("service.name", "?"),
            start=datetime.fromisoformat(data["start_time"].replace("Z", "+00:00")),
            end=datetime.fromisoformat(data["end_time"].replace("Z", "+00:00")),
            status=data.get("status", {}).get("status_code", "UNSET"),
            attributes=data.get("attributes", {}),
        )


def read_spans(trace_dir: Path) -> list[SpanRecord]:
    """Every span in the directory's ``*.jsonl`` files; unreadable lines are skipped."""
    spans = []
    for path in sorted(trace_dir.glob("*.jsonl")):
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                try:
                    spans.append(SpanRecord.from_json(json.loads(line)))
                except (ValueError, KeyError, TypeError):
                    continue
    return spans


def run_traces(spans: list[SpanRecord], run_id: str) -> list[SpanRecord]:
    """Root spans of every trace that touched ``run_id``, oldest first, children linked."""
    trace_ids = {span.trace_id for span in spans if span.attributes.get(RUN_ID_ATTRIBUTE) == run_id}
    by_trace: dict[str, list[SpanRecord]] = defaultdict(list)
    for span in spans:
        if span.trace_id in trace_ids:
            by_trace[span.trace_id].append(span)
    roots = []
    for trace_spans in by_trace.values():
        by_id = {span.span_id: span for span in trace_spans}
        for span in sorted(trace_spans, key=lambda item: item.start):
            parent = by_id.get(span.parent_id or "")
            if parent is None:
                roots.append(span)
            else:
                parent.children.append(span)
    return sorted(roots, key=lambda item: item.start)
