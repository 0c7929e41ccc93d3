"""Phase features: category detection, complexity, deliverable kinds, context quality, fingerprints."""

from __future__ import annotations

from dataclasses import replace

import pytest
from autopack_estimator.features import (
    CATEGORIES,
    PhaseInput,
    context_quality,
    deliverable_count,
    detect_category,
    doc_features,
    is_known_category,
    normalize_category,
    normalize_complexity,
    parse_deliverable,
    phase_fingerprint,
)
from autopack_estimator.model import ModelParameters, TokenModel

LEGACY_DOCS = (
    "docs/token_estimator/OVERVIEW.md",
    "docs/token_estimator/USAGE_GUIDE.md",
    "docs/token_estimator/API_REFERENCE.md",
    "docs/token_estimator/EXAMPLES.md",
    "docs/token_estimator/FAQ.md",
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("", "medium"), ("  ", "medium"), ("low", "low"), (" High ", "high"), ("MAINTENANCE", "maintenance")],
)
def test_normalize_complexity_accepts_the_four_levels_and_defaults_to_medium(
    value: str, expected: str
) -> None:
    assert normalize_complexity(value) == expected


def test_unknown_complexity_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'extreme'"):
        normalize_complexity("extreme")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("IMPLEMENT_FEATURE", "implementation"),
        ("documentation", "docs"),
        ("Documentation", "docs"),
        ("testing", "tests"),
        ("refactor", "refactoring"),
        ("Doc-Synthesis", "doc_synthesis"),
        ("doc sot update", "doc_sot_update"),
        ("backend", "implementation"),
        ("integration", "integration"),
    ],
)
def test_normalize_category_maps_legacy_names_to_canonical(value: str, expected: str) -> None:
    assert normalize_category(value) == expected
    assert expected in CATEGORIES


def test_unknown_category_is_cleaned_not_invented() -> None:
    assert normalize_category(" Space Mission ") == "space_mission"
    assert not is_known_category("space mission")
    assert is_known_category("IMPLEMENT_FEATURE")


def test_api_reference_and_examples_deliverables_make_doc_synthesis() -> None:
    """The legacy 5-document phase that truncated at 16,384 four times (seed 004 DOC_SYNTHESIS)."""
    phase = PhaseInput(
        description="Comprehensive documentation with examples and guides",
        category_hint="documentation",
        complexity="low",
        deliverables=LEGACY_DOCS,
    )
    assert detect_category(phase) == "doc_synthesis"
    assert detect_category(PhaseInput(description="", deliverables=LEGACY_DOCS)) == "doc_synthesis"


@pytest.mark.parametrize("hint", ["docs", "documentation", ""])
def test_trigger_words_alone_do_not_make_doc_synthesis(hint: str) -> None:
    """Seed 004 V6: "comprehensive", "example" and "endpoints" misclassified plain doc phases."""
    phase = PhaseInput(
        description="Write comprehensive documentation with an example of the endpoints",
        category_hint=hint,
        deliverables=("docs/guide/OVERVIEW.md", "docs/guide/FAQ.md"),
    )
    assert detect_category(phase) == "docs"
    features = doc_features(phase)
    assert not (features.api_reference or features.examples or features.from_scratch)


def test_simple_example_files_are_plain_docs() -> None:
    """The legacy telemetry-test-phase-1: "example" in file names is not an EXAMPLES.md."""
    phase = PhaseInput(
        description="Create simple example documentation files",
        category_hint="documentation",
        deliverables=(
            "docs/examples/SIMPLE_EXAMPLE.md",
            "docs/examples/ADVANCED_EXAMPLE.md",
            "docs/examples/FAQ.md",
        ),
    )
    assert detect_category(phase) == "docs"


@pytest.mark.parametrize(
    "description",
    [
        "Write the CLI guide from scratch",
        "Produce an API reference for the estimator",
        "Add an api_reference page",
    ],
)
def test_from_scratch_and_api_reference_goals_make_doc_synthesis(description: str) -> None:
    phase = PhaseInput(description=description, category_hint="docs", deliverables=("docs/cli/GUIDE.md",))
    assert detect_category(phase) == "doc_synthesis"


def test_sot_ledgers_make_doc_sot_update() -> None:
    legacy = PhaseInput(
        description="Update documentation to reflect BUILD-132 completion.",
        category_hint="docs",
        complexity="low",
        deliverables=("BUILD_HISTORY.md", "BUILD_LOG.md", "docs/BUILD-132_IMPLEMENTATION_STATUS.md"),
    )
    assert detect_category(legacy) == "doc_sot_update"
    for ledger in (
        "DEBUG_LOG.md",
        "docs/ARCHITECTURE_DECISIONS.md",
        "FUTURE_PLAN.md",
        "LEARNED_RULES.json",
        "PROJECT_INDEX.json",
    ):
        assert (
            detect_category(PhaseInput(description="Record the run", deliverables=(ledger,)))
            == "doc_sot_update"
        )


def test_sot_signal_beats_synthesis_signal() -> None:
    phase = PhaseInput(description="", deliverables=("BUILD_HISTORY.md", "docs/API_REFERENCE.md"))
    assert detect_category(phase) == "doc_sot_update"


def test_docs_only_deliverables_re_categorise_a_non_doc_hint() -> None:
    """A 5-document phase labelled implementation was predicted 4,877 tokens instead of ~12.8k."""
    five_documents = LEGACY_DOCS
    for hint in ("implementation", "IMPLEMENT_FEATURE", "Implementation", "refactoring"):
        phase = PhaseInput(description="Docs with guides", category_hint=hint, deliverables=five_documents)
        assert detect_category(phase) == "doc_synthesis", hint
    ledger = PhaseInput(description="", category_hint="IMPLEMENT_FEATURE", deliverables=("BUILD_HISTORY.md",))
    assert detect_category(ledger) == "doc_sot_update"
    plain = PhaseInput(description="", category_hint="implementation", deliverables=("docs/GUIDE.md",))
    assert detect_category(plain) == "docs"
    for hint in ("documentation", "DOCUMENTATION", "Docs"):
        assert detect_category(replace(plain, category_hint=hint)) == "docs", hint
    prediction = TokenModel(ModelParameters.default()).predict(
        PhaseInput(
            description="Docs with guides", category_hint="implementation", deliverables=five_documents
        )
    )
    assert prediction.predicted_output_tokens > 12000


def test_a_non_doc_hint_is_respected_when_code_is_delivered() -> None:
    code_with_ledger = PhaseInput(
        description="", category_hint="implementation", deliverables=("src/app.py", "BUILD_HISTORY.md")
    )
    assert detect_category(code_with_ledger) == "implementation"
    prose_only = PhaseInput(description="Polish", category_hint="IMPLEMENT_FEATURE", deliverables=("Polish",))
    assert detect_category(prose_only) == "implementation"


def test_docs_hint_is_not_refined_when_code_is_delivered() -> None:
    phase = PhaseInput(
        description="", category_hint="docs", deliverables=("src/api.py", "docs/API_REFERENCE.md")
    )
    assert detect_category(phase) == "docs"


@pytest.mark.parametrize(
    ("description", "deliverables", "expected"),
    [
        ("Cover the parser", ("tests/test_parser.py", "tests/unit/test_lexer.py"), "tests"),
        ("Defaults", ("config/defaults.yaml", "pyproject.toml"), "configuration"),
        ("Refactor the parser to remove duplication", ("src/parser.py",), "refactoring"),
        ("Integrate Stripe webhooks", ("src/billing/stripe.py",), "integration"),
        (
            "Add the exporter with tests",
            ("src/export.py", "tests/test_export.py", "src/fmt.py"),
            "implementation",
        ),
        ("Write the troubleshooting guide", (), "docs"),
        ("Something new", ("src/thing.py",), "implementation"),
    ],
)
def test_without_a_hint_deliverables_then_goal_keywords_decide(
    description: str, deliverables: tuple[str, ...], expected: str
) -> None:
    assert detect_category(PhaseInput(description=description, deliverables=deliverables)) == expected


def test_an_unknown_hint_falls_back_to_detection() -> None:
    phase = PhaseInput(description="", category_hint="space mission", deliverables=("tests/test_x.py",))
    assert detect_category(phase) == "tests"


@pytest.mark.parametrize(
    ("raw", "path", "kind", "directory", "sot"),
    [
        ("src/app/main.py", "src/app/main.py", "code", False, False),
        ("Create src/x.py", "src/x.py", "code", False, False),
        (
            "tests/research/unit/ (100+ unit tests across all modules)",
            "tests/research/unit/",
            "test",
            True,
            False,
        ),
        ("src/components/Button.test.tsx", "src/components/Button.test.tsx", "test", False, False),
        (
            "docs/research/USER_GUIDE.md (user-facing documentation)",
            "docs/research/USER_GUIDE.md",
            "doc",
            False,
            False,
        ),
        ("tests/README.md", "tests/README.md", "doc", False, False),
        ("config/defaults.yaml", "config/defaults.yaml", "config", False, False),
        ("requirements.txt", "requirements.txt", "config", False, False),
        ("alembic/versions/0001_init.py", "alembic/versions/0001_init.py", "config", False, False),
        ("LEARNED_RULES.json", "LEARNED_RULES.json", "doc", False, True),
        ("Improved error messages throughout codebase", "", "other", False, False),
        ("Logging configuration (levels, formatters, handlers)", "", "other", False, False),
    ],
)
def test_deliverables_are_sanitised_and_classified(
    raw: str, path: str, kind: str, directory: bool, sot: bool
) -> None:
    item = parse_deliverable(raw)
    assert (item.path, item.kind, item.is_directory, item.is_sot) == (path, kind, directory, sot)


def test_deliverable_count_ignores_blanks_and_duplicates_but_counts_prose() -> None:
    phase = PhaseInput(
        description="",
        deliverables=(
            "src/a.py",
            " src/a.py ",
            "",
            "tests/test_a.py",
            "Progress indicators for long operations",
        ),
    )
    assert deliverable_count(phase) == 3


def test_context_quality_from_read_only_context_and_scope() -> None:
    assert context_quality(PhaseInput(description="")) == "none"
    assert context_quality(PhaseInput(description="", read_only_context=("src/a.py",))) == "some"
    assert context_quality(PhaseInput(description="", scope_paths=("src/",))) == "some"
    assert context_quality(
        PhaseInput(description="", read_only_context=tuple(f"f{i}.py" for i in range(5)))
    ) == ("strong")
    assert (
        context_quality(PhaseInput(description="", scope_paths=tuple(f"d{i}/" for i in range(11))))
        == "strong"
    )


def test_fingerprint_identifies_the_same_phase_across_attempts() -> None:
    first = PhaseInput(
        description="Add  the Parser", deliverables=("src/p.py", "tests/test_p.py"), complexity="low"
    )
    again = PhaseInput(
        description="add the parser", deliverables=("tests/test_p.py", "src/p.py"), model="gpt-4o"
    )
    other = PhaseInput(description="add the lexer", deliverables=("src/p.py", "tests/test_p.py"))
    assert phase_fingerprint(first) == phase_fingerprint(again)
    assert phase_fingerprint(first) != phase_fingerprint(other)
