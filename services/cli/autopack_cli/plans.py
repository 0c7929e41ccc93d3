"""Plan files (YAML) -> the orchestrator's Plan message, with errors that name the YAML path.

The orchestrator validates plans again (every client gets the same rules); this
catches typos such as unknown keys before anything is sent.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml
from autopack.common.v1 import common_pb2
from autopack.orchestrator.v1 import orchestrator_pb2
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class PlanError(ValueError):
    """A plan file that cannot be used; the message says where and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScopeFile(_Strict):
    paths: list[str] = Field(default_factory=list)
    read_only_context: list[str] = Field(default_factory=list)


class ValidationFile(_Strict):
    command: str | list[str]
    timeout_seconds: int = Field(default=0, ge=0, le=3600)

    def argv(self) -> list[str]:
        return shlex.split(self.command) if isinstance(self.command, str) else list(self.command)


class PhaseFile(_Strict):
    phase_id: str = Field(min_length=1)
    description: str = Field(min_length=1)
    category: str = ""
    complexity: str = ""
    deliverables: list[str] = Field(default_factory=list)
    scope: ScopeFile = Field(default_factory=ScopeFile)
    validation: ValidationFile | None = None

    @field_validator("complexity")
    @classmethod
    def _known_complexity(cls, value: str) -> str:
        if value and value not in ("low", "medium", "high", "maintenance"):
            raise ValueError("must be one of low, medium, high, maintenance")
        return value


class TierFile(_Strict):
    tier_id: str = Field(min_length=1)
    name: str = ""
    phases: list[PhaseFile] = Field(min_length=1)


class PlanFile(_Strict):
    run_id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]{1,128}$")
    name: str = ""
    source_repo: str = Field(min_length=1)
    tiers: list[TierFile] = Field(min_length=1)
    # Memory's project key across runs; empty = derived by the orchestrator from source_repo.
    project: str = Field(default="", max_length=256)


def load_plan(path: Path, run_id: str | None = None) -> orchestrator_pb2.Plan:
    """Read a plan file; ``source_repo`` is resolved relative to the file."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise PlanError(f"{path}: cannot read plan: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise PlanError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise PlanError(f"{path}: a plan must be a mapping with run_id, source_repo and tiers")
    try:
        plan = PlanFile.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in issue['loc'])}: {issue['msg']}" for issue in error.errors()
        )
        raise PlanError(f"{path}: {problems}") from error
    source = Path(plan.source_repo)
    if not source.is_absolute():
        source = (path.parent / source).resolve()
    if not source.is_dir():
        raise PlanError(f"{path}: source_repo: {source} is not a directory")
    return orchestrator_pb2.Plan(
        run_id=run_id or plan.run_id,
        name=plan.name or plan.run_id,
        source_repo=str(source),
        project=plan.project,
        tiers=[
            orchestrator_pb2.TierSpec(
                tier_id=tier.tier_id,
                name=tier.name or tier.tier_id,
                phases=[_phase_message(phase) for phase in tier.phases],
            )
            for tier in plan.tiers
        ],
    )


def _phase_message(phase: PhaseFile) -> common_pb2.PhaseSpec:
    return common_pb2.PhaseSpec(
        phase_id=phase.phase_id,
        description=phase.description.strip(),
        category=phase.category,
        complexity=phase.complexity,
        deliverables=phase.deliverables,
        scope=common_pb2.Scope(paths=phase.scope.paths, read_only_context=phase.scope.read_only_context),
        validation_command=phase.validation.argv() if phase.validation else [],
        validation_timeout_seconds=phase.validation.timeout_seconds if phase.validation else 0,
    )
