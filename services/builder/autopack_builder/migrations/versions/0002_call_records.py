"""llm_calls: what the model saw and said, cache/reasoning tokens, cost, failed requests.

Adds the role (builder, doctor, auditor), output format, prompt hash and sizes, the raw answer
(zlib-compressed, pruned after the retention period), parse outcome and salvaged operations,
cache read/write and reasoning tokens, cost from the price table, and the error of a request
that failed (a 529 is a request too: it counts toward "at most 4 requests before fail-over").

Revision ID: builder_0002
Revises: builder_0001
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "builder_0002"
down_revision = "builder_0001"
branch_labels = None
depends_on = None


def _columns() -> list[sa.Column]:
    """Fresh Column objects (a Column belongs to one table once added)."""
    return [
        sa.Column("role", sa.String(), nullable=False, server_default="builder"),
        sa.Column("output_format", sa.String(), nullable=True),
        sa.Column("prompt_sha256", sa.String(), nullable=True),
        sa.Column("prompt_chars", sa.Integer(), nullable=True),
        sa.Column("answer_chars", sa.Integer(), nullable=True),
        sa.Column("raw_answer", sa.LargeBinary(), nullable=True),
        sa.Column("parse_outcome", sa.String(), nullable=True),
        sa.Column("salvaged_operations", sa.Integer(), nullable=True),
        sa.Column("cache_read_input_tokens", sa.Integer(), nullable=True),
        sa.Column("cache_creation_input_tokens", sa.Integer(), nullable=True),
        sa.Column("reasoning_output_tokens", sa.Integer(), nullable=True),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("note", sa.String(), nullable=True),
    ]


def upgrade() -> None:
    with op.batch_alter_table("llm_calls") as batch:
        for column in _columns():
            batch.add_column(column)
    op.create_index("ix_llm_calls_created_at", "llm_calls", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_llm_calls_created_at", table_name="llm_calls")
    with op.batch_alter_table("llm_calls") as batch:
        for column in reversed(_columns()):
            batch.drop_column(column.name)
