"""Initial schema: blobs, manifests, repository links, tags, referrers.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "blobs",
        sa.Column("digest", sa.String(200), primary_key=True),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("media_type", sa.String(255), nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("last_access", sa.Float, nullable=False),
        sa.Column("hits", sa.Integer, nullable=False),
    )
    op.create_table(
        "manifests",
        sa.Column("digest", sa.String(200), primary_key=True),
        sa.Column("media_type", sa.String(255), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("last_access", sa.Float, nullable=False),
        sa.Column("hits", sa.Integer, nullable=False),
    )
    op.create_table(
        "repository_links",
        sa.Column("upstream", sa.String(255), primary_key=True),
        sa.Column("repository", sa.String(255), primary_key=True),
        sa.Column("digest", sa.String(200), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("linked_at", sa.Float, nullable=False),
    )
    op.create_index("ix_repository_links_digest", "repository_links", ["digest"])
    op.create_table(
        "tags",
        sa.Column("upstream", sa.String(255), primary_key=True),
        sa.Column("repository", sa.String(255), primary_key=True),
        sa.Column("tag", sa.String(128), primary_key=True),
        sa.Column("accept", sa.String(32), primary_key=True),
        sa.Column("digest", sa.String(200), nullable=False),
        sa.Column("media_type", sa.String(255), nullable=False),
        sa.Column("checked_at", sa.Float, nullable=False),
    )
    op.create_table(
        "referrers",
        sa.Column("upstream", sa.String(255), primary_key=True),
        sa.Column("repository", sa.String(255), primary_key=True),
        sa.Column("subject", sa.String(200), primary_key=True),
        sa.Column("artifact_type", sa.String(255), primary_key=True),
        sa.Column("digest", sa.String(200), nullable=False),
        sa.Column("checked_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in ("referrers", "tags", "repository_links", "manifests", "blobs"):
        op.drop_table(table)
