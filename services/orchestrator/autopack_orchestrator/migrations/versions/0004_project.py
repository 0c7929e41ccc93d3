"""Runs: the plan's explicit project key for memory (empty = derived from the source repository).

Revision ID: 0004_project
Revises: 0003_drain_leases
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_project"
down_revision: str | None = "0003_drain_leases"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as table:
        table.add_column(sa.Column("project", sa.Text, nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("runs") as table:
        table.drop_column("project")
