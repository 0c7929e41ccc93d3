"""Governance: approval requests, savepoint retention and workspace removal.

Revision ID: 0003_governance
Revises: 0002_check_baselines
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_governance"
down_revision = "0002_check_baselines"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "applier_approval_requests",
        sa.Column("request_id", sa.String(32), primary_key=True),
        sa.Column("run_id", sa.String(128), sa.ForeignKey("applier_workspaces.run_id"), nullable=False),
        sa.Column("phase_id", sa.String(200), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("risk_level", sa.String(16), nullable=False),
        sa.Column("paths", sa.JSON(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("decided_by", sa.String(200), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("consumed_by", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'approved', 'denied', 'consumed')", name="ck_applier_approval_status"
        ),
    )
    op.create_index("ix_applier_approval_requests_run_id", "applier_approval_requests", ["run_id"])
    op.create_index("ix_applier_approval_requests_fingerprint", "applier_approval_requests", ["fingerprint"])
    with op.batch_alter_table("applier_apply_log") as batch:
        batch.add_column(sa.Column("pruned_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("applier_workspaces") as batch:
        batch.add_column(sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("applier_workspaces") as batch:
        batch.drop_column("removed_at")
    with op.batch_alter_table("applier_apply_log") as batch:
        batch.drop_column("pruned_at")
    op.drop_index("ix_applier_approval_requests_fingerprint", table_name="applier_approval_requests")
    op.drop_index("ix_applier_approval_requests_run_id", table_name="applier_approval_requests")
    op.drop_table("applier_approval_requests")
