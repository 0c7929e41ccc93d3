"""Drain sessions under a lease (a dead replica's session is taken over) and runs know their session.

Revision ID: 0003_drain_leases
Revises: 0002_recovery
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_drain_leases"
down_revision: str | None = "0002_recovery"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("drain_sessions") as table:
        table.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("runs") as table:
        table.add_column(sa.Column("drain_session", sa.String(128), nullable=True))
        table.add_column(sa.Column("drain_phase", sa.String(128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as table:
        table.drop_column("drain_phase")
        table.drop_column("drain_session")
    with op.batch_alter_table("drain_sessions") as table:
        table.drop_column("lease_expires_at")
