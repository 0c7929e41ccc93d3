"""Estimator tables: estimates, telemetry events, escalation events, model versions.

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
        "estimator_estimates",
        sa.Column("estimate_id", sa.String(64), primary_key=True),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("phase_id", sa.String(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("category", sa.String(), nullable=False),
        sa.Column("complexity", sa.String(), nullable=False),
        sa.Column("deliverables", sa.JSON(), nullable=False),
        sa.Column("scope_paths", sa.JSON(), nullable=False),
        sa.Column("read_only_context", sa.JSON(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("deliverable_count", sa.Integer(), nullable=False),
        sa.Column("predicted_output_tokens", sa.Integer(), nullable=False),
        sa.Column("selected_budget", sa.Integer(), nullable=False),
        sa.Column("actual_max_tokens", sa.Integer(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("buffer_multiplier", sa.Float(), nullable=False),
        sa.Column("breakdown", sa.JSON(), nullable=False),
        sa.Column("model_version", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_estimator_estimates_run_phase", "estimator_estimates", ["run_id", "phase_id"])

    op.create_table(
        "estimator_telemetry_events",
        sa.Column("id", _big_id, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(64), nullable=False, unique=True),
        sa.Column(
            "estimate_id",
            sa.String(64),
            sa.ForeignKey("estimator_estimates.estimate_id"),
            nullable=True,
        ),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("phase_id", sa.String(), nullable=False),
        sa.Column("category", sa.String(), nullable=False),
        sa.Column("complexity", sa.String(), nullable=False),
        sa.Column("deliverable_count", sa.Integer(), nullable=False),
        sa.Column("deliverables", sa.JSON(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("predicted_output_tokens", sa.Integer(), nullable=False),
        sa.Column("actual_output_tokens", sa.Integer(), nullable=False),
        sa.Column("selected_budget", sa.Integer(), nullable=False),
        sa.Column("actual_max_tokens", sa.Integer(), nullable=True),
        sa.Column("success", sa.Boolean(), nullable=False),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.Column("stop_reason", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=True),
        sa.Column("smape", sa.Float(), nullable=True),
        sa.Column("waste_ratio", sa.Float(), nullable=True),
        sa.Column("model_version", sa.String(), nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_estimator_telemetry_events_estimate_id", "estimator_telemetry_events", ["estimate_id"]
    )
    op.create_index(
        "ix_estimator_telemetry_events_timestamp_id", "estimator_telemetry_events", ["timestamp", "id"]
    )

    op.create_table(
        "estimator_escalation_events",
        sa.Column("escalation_id", sa.String(64), primary_key=True),
        sa.Column(
            "estimate_id",
            sa.String(64),
            sa.ForeignKey("estimator_estimates.estimate_id"),
            nullable=False,
        ),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("tokens_used", sa.Integer(), nullable=False),
        sa.Column("was_truncated", sa.Boolean(), nullable=False),
        sa.Column("base_budget", sa.Integer(), nullable=False),
        sa.Column("retry_budget", sa.Integer(), nullable=False),
        sa.Column("actual_max_tokens", sa.Integer(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("model_version", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_estimator_escalation_events_estimate_id", "estimator_escalation_events", ["estimate_id"]
    )

    op.create_table(
        "estimator_model_versions",
        sa.Column("version", sa.String(100), primary_key=True),
        sa.Column("params_json", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("parent_version", sa.String(100), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("report_json", sa.Text(), nullable=True),
    )
    op.create_index(
        "ux_estimator_model_versions_one_promoted",
        "estimator_model_versions",
        ["status"],
        unique=True,
        postgresql_where=sa.text("status = 'promoted'"),
        sqlite_where=sa.text("status = 'promoted'"),
    )


def downgrade() -> None:
    op.drop_table("estimator_model_versions")
    op.drop_table("estimator_escalation_events")
    op.drop_table("estimator_telemetry_events")
    op.drop_table("estimator_estimates")
