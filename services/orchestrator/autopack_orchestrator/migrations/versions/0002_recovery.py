"""Recovery and drain: attempt fingerprints, phase recovery state, cancel/resume, drain sessions.

Revision ID: 0002_recovery
Revises: 0001_initial
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_recovery"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("attempts") as table:
        table.add_column(sa.Column("fingerprint", sa.Text, nullable=False, server_default=""))
        table.add_column(sa.Column("counted", sa.Boolean, nullable=False, server_default=sa.true()))
        table.add_column(sa.Column("failure_kind", sa.String(16), nullable=False, server_default=""))
        table.add_column(sa.Column("check_verdict", sa.String(32), nullable=False, server_default=""))
        table.add_column(sa.Column("guidance", sa.Text, nullable=False, server_default=""))
    with op.batch_alter_table("phases") as table:
        table.add_column(sa.Column("original_description", sa.Text, nullable=False, server_default=""))
        table.add_column(sa.Column("doctor_calls", sa.Integer, nullable=False, server_default="0"))
        table.add_column(sa.Column("replans", sa.Integer, nullable=False, server_default="0"))
        table.add_column(sa.Column("escalations", sa.Integer, nullable=False, server_default="0"))
        table.add_column(sa.Column("mitigations", sa.JSON, nullable=True))
        table.add_column(sa.Column("check_command", sa.JSON, nullable=True))
        table.add_column(sa.Column("hint", sa.Text, nullable=False, server_default=""))
        table.add_column(sa.Column("attempt_floor", sa.Integer, nullable=False, server_default="0"))
    with op.batch_alter_table("runs") as table:
        table.add_column(sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()))
        table.add_column(sa.Column("doctor_calls", sa.Integer, nullable=False, server_default="0"))
        table.add_column(sa.Column("only_phase", sa.String(128), nullable=True))
        table.add_column(sa.Column("max_attempts", sa.Integer, nullable=True))
        table.add_column(sa.Column("phase_deadline", sa.DateTime(timezone=True), nullable=True))
        table.add_column(sa.Column("recovery_input_tokens", sa.Integer, nullable=True))
        table.add_column(sa.Column("recovery_output_tokens", sa.Integer, nullable=True))
        table.add_column(sa.Column("recovery_total_tokens", sa.Integer, nullable=False, server_default="0"))
    op.create_index("ix_runs_state_lease", "runs", ["state", "lease_expires_at"])
    op.create_table(
        "drain_sessions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("session_id", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("options", sa.JSON, nullable=False),
        sa.Column("planned", sa.JSON, nullable=False),
        sa.Column("results", sa.JSON, nullable=False),
        sa.Column("summary", sa.JSON, nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("session_id", name="uq_drain_sessions_session_id"),
    )


def downgrade() -> None:
    op.drop_table("drain_sessions")
    op.drop_index("ix_runs_state_lease", table_name="runs")
    with op.batch_alter_table("runs") as table:
        for name in (
            "cancel_requested",
            "doctor_calls",
            "only_phase",
            "max_attempts",
            "phase_deadline",
            "recovery_input_tokens",
            "recovery_output_tokens",
            "recovery_total_tokens",
        ):
            table.drop_column(name)
    with op.batch_alter_table("phases") as table:
        for name in (
            "original_description",
            "doctor_calls",
            "replans",
            "escalations",
            "mitigations",
            "check_command",
            "hint",
            "attempt_floor",
        ):
            table.drop_column(name)
    with op.batch_alter_table("attempts") as table:
        for name in ("fingerprint", "counted", "failure_kind", "check_verdict", "guidance"):
            table.drop_column(name)
