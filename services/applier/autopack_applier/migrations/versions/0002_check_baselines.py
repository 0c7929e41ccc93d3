"""Check baselines: the first test report of each command in a run's workspace.

Revision ID: 0002_check_baselines
Revises: 0001_initial
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_check_baselines"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "applier_check_baselines",
        sa.Column("run_id", sa.String(128), sa.ForeignKey("applier_workspaces.run_id"), nullable=False),
        sa.Column("command_key", sa.String(64), nullable=False),
        sa.Column("command", sa.JSON(), nullable=False),
        sa.Column("commit", sa.String(64), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("outcomes", sa.JSON(), nullable=False),
        sa.Column("collection_errors", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "command_key", name="pk_applier_check_baselines"),
    )


def downgrade() -> None:
    op.drop_table("applier_check_baselines")
