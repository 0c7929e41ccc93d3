"""Workspace indexes (path -> content hash, contents by hash) and project records across runs.

Revision ID: 0002_workspace_index_and_records
Revises: 0001_embedding_cache
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_workspace_index_and_records"
down_revision: str | None = "0001_embedding_cache"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "workspace_files",
        sa.Column("workspace", sa.String(512), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("content_sha256", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("workspace", "path", name="pk_workspace_files"),
    )
    op.create_table(
        "file_contents",
        sa.Column("content_sha256", sa.String(64), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("content_sha256", name="pk_file_contents"),
    )
    op.create_table(
        "memory_records",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("project", sa.String(512), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("run_id", sa.String(128), nullable=False),
        sa.Column("phase_id", sa.String(128), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("metadata_json", sa.Text(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_memory_records"),
    )
    op.create_index("ix_memory_records_project_kind", "memory_records", ["project", "kind"])
    op.create_index("ix_memory_records_expires_at", "memory_records", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_memory_records_expires_at", table_name="memory_records")
    op.drop_index("ix_memory_records_project_kind", table_name="memory_records")
    op.drop_table("memory_records")
    op.drop_table("file_contents")
    op.drop_table("workspace_files")
