"""Benchmarks: ``make bench`` (``python -m bench``) runs every ``bench/*_bench.py`` module.

Each module exposes ``run(quick: bool) -> list[Section]``; timing lives here, never in tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Section:
    """One results table: a title, column names, rows and free-text notes."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
