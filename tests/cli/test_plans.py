from pathlib import Path

import pytest
from autopack_cli.plans import PlanError, load_plan

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_PLAN = REPO / "examples" / "plan.yaml"


def test_example_plan_loads_with_source_resolved_next_to_the_file() -> None:
    plan = load_plan(EXAMPLE_PLAN)
    assert plan.run_id == "example-wordfreq"
    assert plan.source_repo == str(REPO / "examples" / "sample-repo")
    phases = [phase for tier in plan.tiers for phase in tier.phases]
    assert [phase.phase_id for phase in phases] == [
        "p1-wordfreq-module",
        "p2-wordfreq-tests",
        "p3-wordfreq-docs",
    ]
    assert list(phases[0].validation_command) == ["python", "-m", "pytest", "-q"]
    assert list(phases[0].scope.paths) == ["textkit/"]
    assert phases[2].deliverables == ["docs/wordfreq.md", "README.md"]


def test_run_id_override() -> None:
    assert load_plan(EXAMPLE_PLAN, run_id="other").run_id == "other"


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "repo").mkdir(exist_ok=True)
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    return path


VALID = """
run_id: r1
source_repo: repo
tiers:
  - tier_id: t
    phases:
      - phase_id: p
        description: do it
"""


def test_minimal_plan_is_valid(tmp_path: Path) -> None:
    plan = load_plan(_write(tmp_path, VALID))
    assert plan.tiers[0].phases[0].phase_id == "p"
    assert plan.name == "r1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (VALID.replace("description: do it", "descripton: do it"), "tiers.0.phases.0.descripton"),
        (VALID.replace("run_id: r1", "run_id: 'bad id/'"), "run_id"),
        (VALID.replace("source_repo: repo", "source_repo: missing"), "source_repo"),
        (VALID + "        complexity: huge\n", "complexity"),
        (
            VALID.replace(
                "    phases:\n      - phase_id: p\n        description: do it\n", "    phases: []\n"
            ),
            "phases",
        ),
        ("run_id: [unclosed", "not valid YAML"),
        ("- just\n- a list\n", "must be a mapping"),
    ],
)
def test_invalid_plans_are_refused_with_the_field_named(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(PlanError, match=expected.replace(".", r"\.")):
        load_plan(_write(tmp_path, text))


def test_missing_file_is_a_plan_error(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="cannot read plan"):
        load_plan(tmp_path / "nope.yaml")
