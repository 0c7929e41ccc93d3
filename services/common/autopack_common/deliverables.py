"""Deliverable entries as plans and models write them, cleaned into repository paths.

One rule for every service that reads deliverables (the applier checks and scopes them; a
builder or orchestrator that lists them should see the same paths). Entries arrive as
``"pkg/x.py (new)"``, ``` `./a.py` ```, ``"- tests/test_x.py: unit tests"``, bucketed lists
(``"code: a.py, b.py"``) or prose (``"Logging configuration"``); the result is canonical
POSIX paths (a trailing "/" for a directory), without duplicates, plus what was dropped and why.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_BULLET = re.compile(r"^\s*(?:[-*+•]|\d+[.)])\s+")
_ANNOTATION = re.compile(
    r"\s*[(\[](?:new|created?|modified|updated?|optional|edit(?:ed)?|delete[d]?)[^)\]]*[)\]]\s*$", re.I
)
_TRAILING_PROSE = re.compile(r"(?:\s+[-\u2013\u2014]|\s*:)\s+.*$")
_BUCKET = re.compile(r"^\s*[\w /-]{1,40}:\s+(?=\S)")
_QUOTES = "\"'`\u201c\u201d\u2018\u2019"
# Files that are commonly named without an extension at the repository root.
EXTENSIONLESS_FILES = frozenset(
    {
        "Makefile",
        "Dockerfile",
        "LICENSE",
        "README",
        "Procfile",
        "Gemfile",
        "Rakefile",
        "Jenkinsfile",
        "Vagrantfile",
        "CODEOWNERS",
        "NOTICE",
        "CHANGELOG",
        "Containerfile",
        "Justfile",
    }
)


@dataclass(frozen=True)
class SanitizedDeliverables:
    """Clean paths in order, and (entry, reason) for what was dropped."""

    paths: tuple[str, ...]
    dropped: tuple[tuple[str, str], ...]


def sanitize_deliverables(entries: Iterable[str]) -> SanitizedDeliverables:
    """Clean deliverable entries into repository-relative paths (see the module docstring)."""
    paths: list[str] = []
    dropped: list[tuple[str, str]] = []
    for entry in entries:
        for candidate in _split(entry):
            cleaned, problem = _clean(candidate)
            if problem:
                dropped.append((candidate.strip() or entry, problem))
            elif cleaned not in paths:
                paths.append(cleaned)
    return SanitizedDeliverables(tuple(paths), tuple(dropped))


def _split(entry: str) -> list[str]:
    """A bucketed list ("code: a.py, b.py") or a comma-separated entry becomes several."""
    text = _BULLET.sub("", entry.strip())
    bucket = _BUCKET.match(text)
    if bucket and ("," in text[bucket.end() :] or "/" not in bucket.group(0)):
        text = text[bucket.end() :]
    parts = [part for part in re.split(r"\s*[,;]\s*", text) if part.strip()]
    return parts or [entry]


def _clean(raw: str) -> tuple[str, str | None]:
    text = _BULLET.sub("", raw.strip()).strip().strip(_QUOTES).strip()
    text = _ANNOTATION.sub("", text).strip().strip(_QUOTES).strip()
    text = _TRAILING_PROSE.sub("", text).strip().strip(_QUOTES).strip()
    if not text:
        return "", "empty"
    text = text.replace("\\", "/")
    text = re.sub(r"/{2,}", "/", text)
    while text.startswith("./"):
        text = text[2:]
    if not text or text == ".":
        return "", "names the repository root, not a deliverable"
    if text.startswith("/") or re.match(r"^[A-Za-z]:/", text):
        return "", "is an absolute path"
    if ".." in text.split("/"):
        return "", "leaves the repository ('..')"
    if any(char.isspace() for char in text):
        return "", "is prose, not a path"
    last = text.rstrip("/").rsplit("/", 1)[-1]
    if "/" not in text and "." not in last and last not in EXTENSIONLESS_FILES:
        return "", "is neither a path with a directory nor a file name with an extension"
    return text, None
