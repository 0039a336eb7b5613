"""Platforms of cached manifests; lists created from the command line.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "manifest_platforms",
        sa.Column("digest", sa.String(200), primary_key=True),
        sa.Column("os", sa.String(64), nullable=False),
        sa.Column("architecture", sa.String(64), nullable=False),
        sa.Column("variant", sa.String(64), nullable=False),
        sa.Column("os_version", sa.String(128), nullable=False),
        sa.Column("features", sa.String(512), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
    )
    op.create_table(
        "synthesized_lists",
        sa.Column("upstream", sa.String(255), primary_key=True),
        sa.Column("repository", sa.String(255), primary_key=True),
        sa.Column("tag", sa.String(128), primary_key=True),
        sa.Column("sources", sa.String(8192), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("synthesized_lists")
    op.drop_table("manifest_platforms")
