"""Phase features: what the token model is allowed to look at, extracted deterministically.

Everything here is plain text processing over the phase goal, the deliverable paths and the
scope, so the same phase always yields the same category, deliverable kinds and context quality
(estimates must be reproducible when telemetry is replayed against a new model version).

Vocabulary (from the original TokenEstimator, seed 004 BUILD-129/142):

* categories: ``implementation``, ``refactoring``, ``configuration``, ``integration``, ``tests``,
  ``docs`` (plain writing, the seeds' DOC_WRITE), ``doc_synthesis`` (documentation that needs code
  investigation, API extraction and examples) and ``doc_sot_update`` (updates of the project's
  source-of-truth ledgers such as BUILD_HISTORY.md).
* deliverable kinds: ``code``, ``test``, ``doc``, ``config`` and ``other`` (a prose bullet such as
  "Improved error messages throughout codebase": real work, but no file to size it by).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

COMPLEXITIES = ("low", "medium", "high", "maintenance")

CATEGORIES = (
    "implementation",
    "refactoring",
    "configuration",
    "integration",
    "tests",
    "docs",
    "doc_synthesis",
    "doc_sot_update",
)

#: Categories whose output is prose, not code. BUILD-142: they get no code-sized budget floor.
DOC_CATEGORIES = frozenset({"docs", "doc_synthesis", "doc_sot_update"})

#: Deliverable kinds, in the order breakdowns list them.
DELIVERABLE_KINDS = ("code", "test", "doc", "config", "other")

#: Context quality levels of the DOC_SYNTHESIS / SOT phase models (seed 004: none/some/strong).
CONTEXT_QUALITIES = ("none", "some", "strong")

# Legacy and informal category names seen in telemetry and plans -> canonical category.
_CATEGORY_ALIASES = {
    "implement_feature": "implementation",
    "implement": "implementation",
    "feature": "implementation",
    "new_feature": "implementation",
    "backend": "implementation",
    "frontend": "implementation",
    "database": "implementation",
    "bugfix": "implementation",
    "bug_fix": "implementation",
    "fix": "implementation",
    "code": "implementation",
    "refactor": "refactoring",
    "cleanup": "refactoring",
    "config": "configuration",
    "deployment": "configuration",
    "infra": "configuration",
    "integrate": "integration",
    "testing": "tests",
    "test": "tests",
    "documentation": "docs",
    "doc": "docs",
    "doc_write": "docs",
    "docs_write": "docs",
    "sot": "doc_sot_update",
    "sot_update": "doc_sot_update",
    "doc_sot": "doc_sot_update",
}

# Source-of-truth ledgers (seed 004 "Standardized 6-File SOT Structure", plus the BUILD_LOG.md and
# CHANGELOG.md ledgers the original estimator also treated as SOT). Compared case-insensitively.
SOT_FILENAMES = frozenset(
    {
        "build_history.md",
        "debug_log.md",
        "architecture_decisions.md",
        "future_plan.md",
        "learned_rules.json",
        "project_index.json",
        "build_log.md",
        "changelog.md",
    }
)

_DOC_EXTENSIONS = (".md", ".rst", ".adoc", ".txt")
_CONFIG_EXTENSIONS = (".yml", ".yaml", ".json", ".toml", ".ini", ".cfg", ".conf", ".env", ".properties")
_CONFIG_BASENAMES = frozenset(
    {"dockerfile", "makefile", ".gitignore", ".dockerignore", ".env", "procfile", "setup.cfg"}
)
_TEST_BASENAME = re.compile(
    r"^(test_.*|.*_test\.\w+|.*\.(spec|test)\.[jt]sx?|conftest\.py)$",
)
_LEADING_VERB = re.compile(r"^(create|modify|update|add|new file:|new:|edit|write)\s+", re.IGNORECASE)
_TRAILING_NOTE = re.compile(r"\s*\(.*\)\s*$")
_PATHLIKE = re.compile(r"^[\w.\-/@+~]+$")

# DOC_SYNTHESIS signals. Deliberately narrow (seed 004 V6): "comprehensive", "example" on its own
# and "endpoints" are NOT signals -- they made plain doc phases look like synthesis.
_API_REFERENCE_FILE = re.compile(r"^api([_-]?(reference|ref))?\.(md|rst|adoc)$")
_EXAMPLES_FILE = re.compile(r"^([\w-]*[_-])?examples\.(md|rst|adoc)$")
_API_REFERENCE_TEXT = re.compile(r"\bapi[ _-]reference\b")
_FROM_SCRATCH_TEXT = re.compile(r"\bfrom scratch\b")

# Description keywords for phases whose deliverables do not settle the category.
_KEYWORDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("refactoring", re.compile(r"\b(refactor\w*|restructur\w*|rename\w*|clean ?up|decouple\w*)\b")),
    ("integration", re.compile(r"\b(integrat\w*|webhook\w*|third[- ]party|external api|wire up)\b")),
    ("configuration", re.compile(r"\b(configur\w*|settings|environment variables?|feature flags?)\b")),
    ("tests", re.compile(r"\b(tests?|testing|coverage|test suite)\b")),
    ("docs", re.compile(r"\b(document\w*|docs|readme|guide|tutorial|changelog)\b")),
)


@dataclass(frozen=True)
class PhaseInput:
    """Everything the estimator knows about a phase when it is asked for a budget."""

    description: str
    category_hint: str = ""
    complexity: str = "medium"
    deliverables: tuple[str, ...] = ()
    scope_paths: tuple[str, ...] = ()
    read_only_context: tuple[str, ...] = ()
    model: str = ""


@dataclass(frozen=True)
class Deliverable:
    """One deliverable after sanitation: its path (empty for prose) and what kind of output it is."""

    raw: str
    path: str
    kind: str
    is_directory: bool
    is_sot: bool


@dataclass(frozen=True)
class DocFeatures:
    """Signals of the DOC_SYNTHESIS phase model (seed 004 BUILD-129 Phase 3)."""

    api_reference: bool
    examples: bool
    from_scratch: bool
    context_quality: str

    @property
    def is_synthesis(self) -> bool:
        """Any strong signal means the phase must investigate code before writing."""
        return self.api_reference or self.examples or self.from_scratch


def normalize_complexity(value: str) -> str:
    """Canonical complexity; empty means "medium", anything unknown is refused by name."""
    cleaned = (value or "").strip().lower()
    if not cleaned:
        return "medium"
    if cleaned not in COMPLEXITIES:
        raise ValueError(f"unknown complexity {value!r}; expected one of {', '.join(COMPLEXITIES)}")
    return cleaned


def normalize_category(value: str) -> str:
    """Canonical category for legacy and informal names ("IMPLEMENT_FEATURE" -> "implementation").

    Unknown names are returned cleaned (lower case, ``_`` separators) rather than refused, so
    telemetry from older systems still imports and groups; ``is_known_category`` tells them apart.
    """
    cleaned = re.sub(r"[\s\-]+", "_", (value or "").strip().lower())
    if cleaned in CATEGORIES:
        return cleaned
    return _CATEGORY_ALIASES.get(cleaned, cleaned)


def is_known_category(value: str) -> bool:
    """Whether the (normalised) value is one of the canonical categories."""
    return normalize_category(value) in CATEGORIES


@lru_cache(maxsize=16384)
def parse_deliverable(raw: str) -> Deliverable:
    """Sanitise one deliverable: strip verbs and notes, keep the path, classify its kind.

    Plans mix paths with prose ("tests/research/unit/ (100+ unit tests)", "Logging configuration");
    prose keeps kind ``other`` so it still counts as work without pretending to be a file. Pure and
    cached: category detection, the doc signals and the model each parse a phase's deliverables.
    """
    text = (raw or "").strip().replace("\\", "/")
    text = _LEADING_VERB.sub("", text)
    text = _TRAILING_NOTE.sub("", text).strip()
    first = text.split()[0] if text.split() else ""
    if first.startswith("./"):
        first = first[2:]
    looks_like_path = bool(first) and bool(_PATHLIKE.match(first)) and ("/" in first or "." in first)
    if first.lower() in _CONFIG_BASENAMES:
        looks_like_path = True
    if looks_like_path and " " in text and "/" not in first and not re.search(r"\.\w{1,6}$", first):
        looks_like_path = False
    if not looks_like_path:
        return Deliverable(raw=raw, path="", kind="other", is_directory=False, is_sot=False)
    path = first
    is_directory = path.endswith("/")
    lower = path.lower().rstrip("/")
    basename = lower.rsplit("/", 1)[-1]
    is_sot = not is_directory and basename in SOT_FILENAMES
    return Deliverable(
        raw=raw,
        path=path,
        kind=_kind_of(lower, basename, is_directory, is_sot),
        is_directory=is_directory,
        is_sot=is_sot,
    )


def _kind_of(lower: str, basename: str, is_directory: bool, is_sot: bool) -> str:
    """Kind of a normalised path; order matters (a README under tests/ is still a doc)."""
    segments = lower.split("/")
    in_tests = any(seg in ("tests", "test", "__tests__", "spec") for seg in segments[:-1]) or (
        is_directory and segments[-1] in ("tests", "test", "__tests__")
    )
    if is_sot:
        return "doc"
    if not is_directory and basename.endswith(_DOC_EXTENSIONS) and not basename.startswith("requirements"):
        return "doc"
    if in_tests or (not is_directory and _TEST_BASENAME.match(basename)):
        return "test"
    if not is_directory and (
        basename.endswith(_CONFIG_EXTENSIONS)
        or basename in _CONFIG_BASENAMES
        or basename.startswith("requirements")
    ):
        return "config"
    if segments[0] in ("docs", "doc") or (is_directory and segments[-1] in ("docs", "doc")):
        return "doc"
    if segments[0] in ("config", "configs", "deploy") or "migrations" in segments or "alembic" in segments:
        return "config"
    return "code"


def parse_deliverables(deliverables: Iterable[str]) -> tuple[Deliverable, ...]:
    """Sanitised, de-duplicated deliverables (a path listed twice is one piece of work)."""
    seen: set[str] = set()
    parsed: list[Deliverable] = []
    for raw in deliverables:
        if not (raw or "").strip():
            continue
        item = parse_deliverable(raw)
        key = item.path.lower() if item.path else " ".join(raw.lower().split())
        if key in seen:
            continue
        seen.add(key)
        parsed.append(item)
    return tuple(parsed)


def deliverable_count(phase: PhaseInput) -> int:
    """Number of distinct non-empty deliverables, prose bullets included (as telemetry counts them)."""
    return len(parse_deliverables(phase.deliverables))


def kind_counts(items: Iterable[Deliverable]) -> dict[str, int]:
    """How many deliverables of each kind, every kind present as a key."""
    counts = dict.fromkeys(DELIVERABLE_KINDS, 0)
    for item in items:
        counts[item.kind] += 1
    return counts


def context_quality(phase: PhaseInput) -> str:
    """How much code context the phase is handed (seed 004: none/some/strong).

    Read-only context files are the direct signal; a wide write scope also tells the Builder where
    to look. "strong" = 5+ context files or more than 10 scope paths.
    """
    context = [p for p in phase.read_only_context if p.strip()]
    scope = [p for p in phase.scope_paths if p.strip()]
    if len(context) >= 5 or len(scope) > 10:
        return "strong"
    if context or scope:
        return "some"
    return "none"


def doc_features(phase: PhaseInput) -> DocFeatures:
    """DOC_SYNTHESIS signals: API reference / examples deliverables, "from scratch" in the goal."""
    items = parse_deliverables(phase.deliverables)
    basenames = [i.path.lower().rstrip("/").rsplit("/", 1)[-1] for i in items if i.path]
    text = " ".join((phase.description or "").lower().split())
    return DocFeatures(
        api_reference=any(_API_REFERENCE_FILE.match(b) for b in basenames)
        or bool(_API_REFERENCE_TEXT.search(text)),
        examples=any(_EXAMPLES_FILE.match(b) for b in basenames),
        from_scratch=bool(_FROM_SCRATCH_TEXT.search(text)),
        context_quality=context_quality(phase),
    )


def _doc_family(phase: PhaseInput, items: tuple[Deliverable, ...]) -> str:
    """Refine a documentation phase: SOT ledgers first, then synthesis signals, else plain docs."""
    if any(i.is_sot for i in items):
        return "doc_sot_update"
    if doc_features(phase).is_synthesis:
        return "doc_synthesis"
    return "docs"


def _is_doc_only(items: tuple[Deliverable, ...]) -> bool:
    """True when every file deliverable is documentation (prose bullets do not count either way)."""
    files = [i for i in items if i.path]
    return bool(files) and all(i.kind == "doc" for i in files)


def detect_category(phase: PhaseInput) -> str:
    """The category the model estimates with.

    A recognised hint wins (normalised), except that a plain ``docs`` hint is refined to
    ``doc_sot_update`` / ``doc_synthesis`` when the deliverables carry strong signals and contain
    no code (the seeds' P5 fix: record the estimator's category, not the plan's), and a non-doc
    hint (``implementation``, ``IMPLEMENT_FEATURE``, ...) whose file deliverables are all documents
    is re-categorised into the doc family (a 5-document phase labelled ``implementation`` was
    predicted 4,877 tokens instead of ~12.8k). Without a
    usable hint the deliverable kinds decide, then keywords of the goal; the default is
    ``implementation``, the category with the highest floor and therefore the safest guess.
    """
    items = parse_deliverables(phase.deliverables)
    hint = normalize_category(phase.category_hint) if phase.category_hint.strip() else ""
    code_free = not any(i.kind in ("code", "test") for i in items)
    if hint in CATEGORIES:
        if hint == "docs" and code_free:
            return _doc_family(phase, items)
        if hint not in DOC_CATEGORIES and _is_doc_only(items):
            # Plans label documentation phases "implementation" too: five documents are not code.
            return _doc_family(phase, items)
        return hint

    counts = kind_counts(items)
    files = sum(counts[k] for k in ("code", "test", "doc", "config"))
    if _is_doc_only(items):
        return _doc_family(phase, items)
    if files and counts["test"] == files:
        return "tests"
    if files and counts["config"] == files:
        return "configuration"

    text = " ".join((phase.description or "").lower().split())
    for category, pattern in _KEYWORDS:
        if not pattern.search(text):
            continue
        if category == "tests" and files and counts["test"] * 2 < files:
            continue  # "with tests" in a feature phase does not make it a test phase
        if category == "docs":
            if files:
                continue  # docs words in a code phase: still code
            return _doc_family(phase, items)
        return category
    return "implementation"


def phase_fingerprint(phase: PhaseInput) -> str:
    """Stable identity of "the same phase" across attempts and runs (goal text + deliverables).

    Used to keep retries of one phase in one cross-validation fold, so held-out metrics are not
    flattered by the phase's own earlier attempts.
    """
    text = " ".join((phase.description or "").lower().split())
    paths = sorted(" ".join(d.lower().split()) for d in phase.deliverables if d.strip())
    digest = hashlib.sha256("\x1f".join([text, *paths]).encode("utf-8")).hexdigest()
    return digest[:16]
