"""``python -m autopack_applier``: migrate the database, then serve ApplierService."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from autopack_common.bootstrap import run_service
from autopack_common.database import create_db_engine, upgrade_schema
from autopack_common.server import ServiceBinding

from autopack_applier.service import binding, build_servicer
from autopack_applier.settings import ApplierSettings
from autopack_applier.store import ApplierStore


def main() -> None:
    settings = ApplierSettings()

    def build() -> tuple[Sequence[ServiceBinding], Sequence[Callable[[], None]]]:
        engine = create_db_engine(settings.resolved_database_url("applier"))
        upgrade_schema(engine, "autopack_applier.migrations", "alembic_version_applier")
        servicer = build_servicer(settings, ApplierStore(engine))
        return [binding(servicer)], [engine.dispose]

    run_service("applier", settings, build)


if __name__ == "__main__":
    main()
