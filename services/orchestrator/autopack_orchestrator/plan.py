"""Plans as plain data, and the validation that guards CreateRun.

A plan is checked completely before anything is stored, so a bad plan changes
nothing and the caller learns exactly which field to fix
(``plan.tiers[0].phases[1].phase_id``).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from autopack_common.deliverables import sanitize_deliverables
from autopack_common.errors import InvalidArgument

IDENTIFIER = re.compile(r"[A-Za-z0-9._-]{1,128}")
COMPLEXITIES = ("low", "medium", "high", "maintenance")
MAX_NAME_LENGTH = 512
MAX_DESCRIPTION_LENGTH = 20_000
MAX_PROJECT_LENGTH = 256


@dataclass(frozen=True)
class PhaseSpec:
    """One unit of planned work (mirrors autopack.common.v1.PhaseSpec)."""

    phase_id: str
    description: str
    category: str = ""
    complexity: str = ""
    deliverables: tuple[str, ...] = ()
    scope_paths: tuple[str, ...] = ()
    read_only_context: tuple[str, ...] = ()
    validation_command: tuple[str, ...] = ()
    validation_timeout_seconds: int = 0

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form, as stored in the phases table."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PhaseSpec:
        return cls(
            phase_id=data["phase_id"],
            description=data["description"],
            category=data.get("category", ""),
            complexity=data.get("complexity", ""),
            deliverables=tuple(data.get("deliverables", ())),
            scope_paths=tuple(data.get("scope_paths", ())),
            read_only_context=tuple(data.get("read_only_context", ())),
            validation_command=tuple(data.get("validation_command", ())),
            validation_timeout_seconds=int(data.get("validation_timeout_seconds", 0)),
        )

    def write_scope(self) -> tuple[str, ...]:
        """Paths the phase may write: its scope plus its (sanitised) deliverables.

        A deliverable is by definition something the phase must write, so it is always in
        scope. A phase without a scope sends none: the applier then derives the write scope
        from the deliverables' parent directories (``ApplyRequest.deliverables``), which lets
        a helper file beside a deliverable through.
        """
        if not self.scope_paths:
            return ()
        paths = list(self.scope_paths)
        for deliverable in sanitize_deliverables(self.deliverables).paths:
            if not any(_covers(path, deliverable) for path in paths):
                paths.append(deliverable)
        return tuple(paths)


@dataclass(frozen=True)
class TierSpec:
    """A group of phases executed in order."""

    tier_id: str
    name: str = ""
    phases: tuple[PhaseSpec, ...] = ()


@dataclass(frozen=True)
class Plan:
    """What to build: the content of a plan file."""

    run_id: str
    name: str
    source_repo: str
    tiers: tuple[TierSpec, ...] = field(default_factory=tuple)
    # Memory's project key; empty = derived from source_repo (see project.py).
    project: str = ""

    def phases(self) -> list[tuple[TierSpec, PhaseSpec]]:
        """Every phase with its tier, in execution order."""
        return [(tier, phase) for tier in self.tiers for phase in tier.phases]


def _covers(scope_path: str, path: str) -> bool:
    return path == scope_path or (scope_path.endswith("/") and path.startswith(scope_path))


def validate_run_id(run_id: str, field_name: str = "run_id") -> str:
    """A run id is used in paths, span attributes and memory ids, so its alphabet is narrow."""
    if not run_id:
        raise InvalidArgument(field_name, "is required")
    if not IDENTIFIER.fullmatch(run_id):
        raise InvalidArgument(field_name, 'must be 1-128 letters, digits, ".", "_" or "-"')
    return run_id


def validate_plan(plan: Plan) -> Plan:
    """Check every field of ``plan``; return it with complexities normalised to lower case.

    Raises InvalidArgument naming the first bad field.
    """
    validate_run_id(plan.run_id, "plan.run_id")
    _require_text(plan.name, "plan.name", MAX_NAME_LENGTH)
    _require_text(plan.source_repo, "plan.source_repo", 4096)
    if len(plan.project) > MAX_PROJECT_LENGTH or not plan.project.isprintable():
        raise InvalidArgument("plan.project", f"must be at most {MAX_PROJECT_LENGTH} printable characters")
    if not any(tier.phases for tier in plan.tiers):
        raise InvalidArgument("plan.tiers", "at least one phase is required")
    tier_ids: set[str] = set()
    phase_ids: set[str] = set()
    tiers: list[TierSpec] = []
    for t, tier in enumerate(plan.tiers):
        prefix = f"plan.tiers[{t}]"
        _require_identifier(tier.tier_id, f"{prefix}.tier_id")
        if tier.tier_id in tier_ids:
            raise InvalidArgument(f"{prefix}.tier_id", f"duplicate tier_id {tier.tier_id!r}")
        tier_ids.add(tier.tier_id)
        if len(tier.name) > MAX_NAME_LENGTH:
            raise InvalidArgument(f"{prefix}.name", f"must be at most {MAX_NAME_LENGTH} characters")
        phases: list[PhaseSpec] = []
        for p, phase in enumerate(tier.phases):
            phase_prefix = f"{prefix}.phases[{p}]"
            phases.append(_validate_phase(phase, phase_prefix))
            if phase.phase_id in phase_ids:
                raise InvalidArgument(f"{phase_prefix}.phase_id", f"duplicate phase_id {phase.phase_id!r}")
            phase_ids.add(phase.phase_id)
        tiers.append(TierSpec(tier_id=tier.tier_id, name=tier.name, phases=tuple(phases)))
    return Plan(
        run_id=plan.run_id,
        name=plan.name,
        source_repo=plan.source_repo,
        tiers=tuple(tiers),
        project=plan.project.strip(),
    )


def _validate_phase(phase: PhaseSpec, prefix: str) -> PhaseSpec:
    _require_identifier(phase.phase_id, f"{prefix}.phase_id")
    _require_text(phase.description, f"{prefix}.description", MAX_DESCRIPTION_LENGTH)
    complexity = phase.complexity.strip().lower()
    if complexity and complexity not in COMPLEXITIES:
        raise InvalidArgument(
            f"{prefix}.complexity",
            f"must be one of {', '.join(COMPLEXITIES)} or empty, got {phase.complexity!r}",
        )
    for name, paths in (
        ("deliverables", phase.deliverables),
        ("scope.paths", phase.scope_paths),
        ("scope.read_only_context", phase.read_only_context),
    ):
        for i, path in enumerate(paths):
            _validate_relative_path(path, f"{prefix}.{name}[{i}]")
    for i, argument in enumerate(phase.validation_command):
        if not argument.strip():
            raise InvalidArgument(f"{prefix}.validation_command[{i}]", "must not be empty")
    if phase.validation_timeout_seconds < 0:
        raise InvalidArgument(f"{prefix}.validation_timeout_seconds", "must not be negative")
    return PhaseSpec(
        phase_id=phase.phase_id,
        description=phase.description,
        category=phase.category.strip(),
        complexity=complexity,
        deliverables=tuple(phase.deliverables),
        scope_paths=tuple(phase.scope_paths),
        read_only_context=tuple(phase.read_only_context),
        validation_command=tuple(phase.validation_command),
        validation_timeout_seconds=phase.validation_timeout_seconds,
    )


def _require_text(value: str, field_name: str, max_length: int) -> None:
    if not value.strip():
        raise InvalidArgument(field_name, "is required")
    if len(value) > max_length:
        raise InvalidArgument(field_name, f"must be at most {max_length} characters")


def _require_identifier(value: str, field_name: str) -> None:
    if not value:
        raise InvalidArgument(field_name, "is required")
    if not IDENTIFIER.fullmatch(value):
        raise InvalidArgument(field_name, 'must be 1-128 letters, digits, ".", "_" or "-"')


def _validate_relative_path(path: str, field_name: str) -> None:
    """Repository-relative, forward slashes, never escaping the workspace."""
    if not path.strip():
        raise InvalidArgument(field_name, "must not be empty")
    if "\\" in path:
        raise InvalidArgument(field_name, f"use forward slashes, got {path!r}")
    if path.startswith("/") or re.match(r"[A-Za-z]:", path):
        raise InvalidArgument(field_name, f"must be relative to the repository, got {path!r}")
    if ".." in path.split("/"):
        raise InvalidArgument(field_name, f'must not contain "..", got {path!r}')
    if "\x00" in path:
        raise InvalidArgument(field_name, "must not contain NUL")
