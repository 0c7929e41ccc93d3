"""Plan validation: every bad field is refused with its full path named."""

from __future__ import annotations

import dataclasses

import pytest
from autopack_common.errors import InvalidArgument
from autopack_orchestrator.plan import PhaseSpec, Plan, TierSpec, validate_plan


def make_plan(**changes: object) -> Plan:
    phases = (
        PhaseSpec(
            phase_id="p1", description="Add the module", deliverables=("src/mod.py",), scope_paths=("src/",)
        ),
        PhaseSpec(
            phase_id="p2",
            description="Test it",
            complexity="High",
            deliverables=("tests/test_mod.py",),
            scope_paths=("tests/",),
            read_only_context=("src/mod.py",),
            validation_command=("python", "-m", "pytest", "-q"),
        ),
    )
    plan = Plan(
        run_id="run-1",
        name="demo",
        source_repo="/repo",
        tiers=(TierSpec(tier_id="t1", name="T", phases=phases),),
    )
    return dataclasses.replace(plan, **changes)


def with_phase(index: int, **changes: object) -> Plan:
    plan = make_plan()
    phases = list(plan.tiers[0].phases)
    phases[index] = dataclasses.replace(phases[index], **changes)
    return dataclasses.replace(plan, tiers=(dataclasses.replace(plan.tiers[0], phases=tuple(phases)),))


def assert_invalid(plan: Plan, field: str) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as raised:
        validate_plan(plan)
    assert raised.value.field == field
    assert str(raised.value).startswith(f"{field}: ")
    return raised.value


def test_valid_plan_is_returned_with_normalised_complexity() -> None:
    plan = validate_plan(make_plan())
    assert plan.run_id == "run-1"
    assert [phase.complexity for _, phase in plan.phases()] == ["", "high"]


@pytest.mark.parametrize("run_id", ["", "has space", "slash/id", "x" * 129, "ü"])
def test_bad_run_id(run_id: str) -> None:
    assert_invalid(make_plan(run_id=run_id), "plan.run_id")


def test_run_id_alphabet_accepts_dots_dashes_underscores() -> None:
    assert validate_plan(make_plan(run_id="A.b_c-9" + "x" * 121)).run_id.startswith("A.b_c-9")


def test_name_and_source_repo_required() -> None:
    assert_invalid(make_plan(name="  "), "plan.name")
    assert_invalid(make_plan(source_repo=""), "plan.source_repo")


def test_at_least_one_phase() -> None:
    assert_invalid(make_plan(tiers=()), "plan.tiers")
    assert_invalid(make_plan(tiers=(TierSpec(tier_id="t1"),)), "plan.tiers")


def test_tier_ids_required_and_unique() -> None:
    plan = make_plan()
    second = TierSpec(tier_id="t1", phases=(PhaseSpec(phase_id="p9", description="x"),))
    assert_invalid(dataclasses.replace(plan, tiers=(*plan.tiers, second)), "plan.tiers[1].tier_id")
    nameless = dataclasses.replace(plan.tiers[0], tier_id="")
    assert_invalid(dataclasses.replace(plan, tiers=(nameless,)), "plan.tiers[0].tier_id")


def test_phase_ids_unique_across_tiers() -> None:
    plan = make_plan()
    second = TierSpec(
        tier_id="t2", phases=(PhaseSpec(phase_id="x", description="x"), plan.tiers[0].phases[0])
    )
    error = assert_invalid(
        dataclasses.replace(plan, tiers=(*plan.tiers, second)), "plan.tiers[1].phases[1].phase_id"
    )
    assert "duplicate" in str(error)


def test_phase_id_required_and_well_formed() -> None:
    assert_invalid(with_phase(1, phase_id=""), "plan.tiers[0].phases[1].phase_id")
    assert_invalid(with_phase(1, phase_id="a b"), "plan.tiers[0].phases[1].phase_id")


def test_description_required() -> None:
    assert_invalid(with_phase(0, description=" \n"), "plan.tiers[0].phases[0].description")


def test_complexity_must_be_known() -> None:
    error = assert_invalid(with_phase(1, complexity="huge"), "plan.tiers[0].phases[1].complexity")
    assert "maintenance" in str(error)
    assert (
        validate_plan(with_phase(1, complexity="maintenance")).tiers[0].phases[1].complexity == "maintenance"
    )


@pytest.mark.parametrize(
    ("field", "attribute"),
    [
        ("deliverables", "deliverables"),
        ("scope.paths", "scope_paths"),
        ("scope.read_only_context", "read_only_context"),
    ],
)
@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.py", "src/../../x", "", "C:/x.py", "src\\x.py"])
def test_paths_must_be_relative_and_inside(field: str, attribute: str, path: str) -> None:
    assert_invalid(with_phase(1, **{attribute: ("ok.py", path)}), f"plan.tiers[0].phases[1].{field}[1]")


def test_validation_command_arguments_non_empty() -> None:
    assert_invalid(
        with_phase(1, validation_command=("python", "")), "plan.tiers[0].phases[1].validation_command[1]"
    )


def test_negative_validation_timeout() -> None:
    assert_invalid(
        with_phase(0, validation_timeout_seconds=-1), "plan.tiers[0].phases[0].validation_timeout_seconds"
    )


def test_write_scope_adds_deliverables_outside_scope() -> None:
    phase = PhaseSpec(
        phase_id="p", description="d", deliverables=("src/a.py", "README.md"), scope_paths=("src/",)
    )
    assert phase.write_scope() == ("src/", "README.md")


def test_write_scope_sanitises_deliverables_and_is_empty_without_a_scope() -> None:
    annotated = ("src/a.py", "docs/guide.md (new)")
    phase = PhaseSpec(phase_id="p", description="d", deliverables=annotated, scope_paths=("src/",))
    assert phase.write_scope() == ("src/", "docs/guide.md")
    # No scope: the applier derives it from ApplyRequest.deliverables (their parent directories).
    assert PhaseSpec(phase_id="p", description="d", deliverables=annotated).write_scope() == ()


def test_phase_spec_json_round_trip() -> None:
    phase = make_plan().tiers[0].phases[1]
    assert PhaseSpec.from_json(phase.to_json()) == phase
