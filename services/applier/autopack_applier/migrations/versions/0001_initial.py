"""Applier tables: workspaces (one per run) and the apply log (accepted and rejected applies).

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None

_big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "applier_workspaces",
        sa.Column("run_id", sa.String(128), primary_key=True),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("source_repo", sa.Text(), nullable=False),
        sa.Column("base_commit", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "applier_apply_log",
        sa.Column("id", _big_id, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(128), sa.ForeignKey("applier_workspaces.run_id"), nullable=False),
        sa.Column("phase_id", sa.String(200), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("savepoint", sa.String(64), nullable=True),
        sa.Column("previous_savepoint", sa.String(64), nullable=True),
        sa.Column("changed_paths", sa.JSON(), nullable=False),
        sa.Column("result", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("result IN ('accepted', 'rejected')", name="ck_applier_apply_log_result"),
    )
    op.create_index("ix_applier_apply_log_run_id", "applier_apply_log", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_applier_apply_log_run_id", table_name="applier_apply_log")
    op.drop_table("applier_apply_log")
    op.drop_table("applier_workspaces")
