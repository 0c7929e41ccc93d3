"""The one rule for conflicting line edits, shared by the builder and the applier."""

import pytest
from autopack_common.line_edits import LineSpan, first_conflict


def _insert(index: int, line: int) -> LineSpan:
    return LineSpan(index, line, line - 1)


@pytest.mark.parametrize(
    ("spans", "conflict"),
    [
        ([LineSpan(0, 1, 3), LineSpan(1, 3, 4)], (0, 1)),  # ranges sharing line 3
        ([LineSpan(0, 2, 4), _insert(1, 3)], (0, 1)),  # an insert inside a range
        ([_insert(0, 3), LineSpan(1, 1, 5)], (0, 1)),  # reported earlier edit first
        ([LineSpan(0, 1, 10), LineSpan(1, 4, 5), LineSpan(2, 7, 8)], (0, 1)),  # nested ranges
    ],
)
def test_conflicting_spans_are_found_earlier_edit_first(
    spans: list[LineSpan], conflict: tuple[int, int]
) -> None:
    found = first_conflict(spans)
    assert found is not None
    assert (found[0].index, found[1].index) == conflict


@pytest.mark.parametrize(
    "spans",
    [
        [LineSpan(0, 1, 2), LineSpan(1, 3, 4)],  # adjacent ranges
        [_insert(0, 3), LineSpan(1, 3, 5)],  # an insert at a range's first line
        [LineSpan(0, 3, 5), _insert(1, 6)],  # an insert right after a range
        [_insert(0, 2), _insert(1, 2)],  # two inserts at one line
        [],
    ],
)
def test_spans_that_touch_without_sharing_a_line_do_not_conflict(spans: list[LineSpan]) -> None:
    assert first_conflict(spans) is None
