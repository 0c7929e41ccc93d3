"""Fixtures of the orchestrator tests: a migrated store and sample plans."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from autopack_common.database import create_db_engine, upgrade_schema
from autopack_orchestrator.plan import PhaseSpec, Plan, TierSpec
from autopack_orchestrator.store import RunStore


def sample_plan(run_id: str = "run-1", phases: int = 2, source_repo: str = "/repo") -> Plan:
    """A plan of ``phases`` phases over two tiers (the first tier gets one phase)."""
    specs = [
        PhaseSpec(
            phase_id=f"p{i + 1}",
            description=f"Write module number {i + 1}",
            deliverables=(f"src/mod{i + 1}.py",),
            scope_paths=("src/",),
        )
        for i in range(phases)
    ]
    tiers = [TierSpec(tier_id="t1", name="first", phases=tuple(specs[:1]))]
    if phases > 1:
        tiers.append(TierSpec(tier_id="t2", name="second", phases=tuple(specs[1:])))
    return Plan(run_id=run_id, name=f"plan {run_id}", source_repo=source_repo, tiers=tuple(tiers))


@pytest.fixture
def store(database_url: str) -> Iterator[RunStore]:
    engine = create_db_engine(database_url)
    upgrade_schema(engine, "autopack_orchestrator.migrations", "alembic_version_orchestrator")
    yield RunStore(engine)
    engine.dispose()
