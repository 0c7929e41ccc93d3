"""When line edits of one operation conflict: one rule for the builder and the applier.

Line numbers of all edits of one operation refer to the original file (common.v1 LineEdit).
Each edit covers a span of original lines: REPLACE and DELETE cover start..end (inclusive),
an insertion covers nothing and sits before its line (end = start - 1). Two ranges conflict
when they share a line; an insertion conflicts with a range it would fall inside, but may sit
at a range's first line. The builder refuses a conflicting answer while parsing it, and the
applier refuses it again before writing, so both must judge alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class LineSpan:
    """Original lines ``start``..``end`` (1-indexed, inclusive) that edit ``index`` replaces.

    ``end == start - 1`` is an insertion before line ``start``.
    """

    index: int
    start: int
    end: int

    @property
    def inserts(self) -> bool:
        return self.end < self.start


def span_order(span: LineSpan) -> tuple[int, bool, int]:
    """Line order; an insertion comes before a range that starts at the same line."""
    return (span.start, not span.inserts, span.index)


def first_conflict(spans: Iterable[LineSpan]) -> tuple[LineSpan, LineSpan] | None:
    """The first two spans in line order that conflict, earlier edit first; None when none do."""
    reach: LineSpan | None = None  # the range reaching furthest down among those seen so far
    for span in sorted(spans, key=span_order):
        if reach is not None and span.start <= reach.end:
            first, second = sorted((reach, span), key=lambda item: item.index)
            return first, second
        if not span.inserts and (reach is None or span.end > reach.end):
            reach = span
    return None
