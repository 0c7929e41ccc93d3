"""Runs, tiers, phases, attempts and run events.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _time(name: str, nullable: bool) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(128), nullable=False),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("source_repo", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("workspace_path", sa.Text, nullable=False),
        sa.Column("failure_reason", sa.Text, nullable=False),
        _time("created_at", False),
        _time("started_at", True),
        _time("finished_at", True),
        sa.Column("event_sequence", sa.BigInteger, nullable=False),
        sa.Column("lease_owner", sa.String(128), nullable=True),
        _time("lease_expires_at", True),
        sa.UniqueConstraint("run_id", name="uq_runs_run_id"),
    )
    op.create_index("ix_runs_state", "runs", ["state"])
    op.create_table(
        "tiers",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(128), sa.ForeignKey("runs.run_id", ondelete="CASCADE"), nullable=False),
        sa.Column("tier_id", sa.String(128), nullable=False),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.UniqueConstraint("run_id", "tier_id", name="uq_tiers_run_tier"),
    )
    op.create_table(
        "phases",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(128), sa.ForeignKey("runs.run_id", ondelete="CASCADE"), nullable=False),
        sa.Column("tier_id", sa.String(128), nullable=False),
        sa.Column("phase_id", sa.String(128), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("failure_reason", sa.Text, nullable=False),
        _time("started_at", True),
        _time("finished_at", True),
        sa.UniqueConstraint("run_id", "phase_id", name="uq_phases_run_phase"),
    )
    op.create_index("ix_phases_run_position", "phases", ["run_id", "position"])
    op.create_table(
        "attempts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(128), sa.ForeignKey("runs.run_id", ondelete="CASCADE"), nullable=False),
        sa.Column("phase_id", sa.String(128), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("estimate_id", sa.String(128), nullable=False),
        sa.Column("predicted_output_tokens", sa.Integer, nullable=False),
        sa.Column("selected_budget", sa.Integer, nullable=False),
        sa.Column("actual_max_tokens", sa.Integer, nullable=False),
        sa.Column("input_tokens", sa.Integer, nullable=True),
        sa.Column("output_tokens", sa.Integer, nullable=True),
        sa.Column("total_tokens", sa.Integer, nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("savepoint", sa.String(64), nullable=False),
        sa.Column("base_savepoint", sa.String(64), nullable=False),
        sa.Column("check_exit_code", sa.Integer, nullable=True),
        sa.Column("failure_reason", sa.Text, nullable=False),
        sa.Column("trace_id", sa.String(32), nullable=False),
        _time("started_at", False),
        _time("finished_at", True),
        sa.Column("smape", sa.Float, nullable=True),
        sa.UniqueConstraint("run_id", "phase_id", "number", name="uq_attempts_run_phase_number"),
    )
    op.create_table(
        "run_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(128), sa.ForeignKey("runs.run_id", ondelete="CASCADE"), nullable=False),
        sa.Column("sequence", sa.BigInteger, nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("phase_id", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=True),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("attempt", sa.JSON, nullable=True),
        _time("time", False),
        sa.UniqueConstraint("run_id", "sequence", name="uq_run_events_run_sequence"),
    )


def downgrade() -> None:
    for table in ("run_events", "attempts", "phases", "tiers", "runs"):
        op.drop_table(table)
