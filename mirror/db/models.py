"""SQLAlchemy 2 declarative models of the mirror's metadata."""

from __future__ import annotations

from sqlalchemy import Float, Index, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """Declarative base of every table."""


class BlobRow(Base):
    """A verified blob file in the store (layers, configs, and manifest bytes)."""

    __tablename__ = "blobs"

    digest: Mapped[str] = mapped_column(String(200), primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    media_type: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[float] = mapped_column(Float)
    last_access: Mapped[float] = mapped_column(Float)
    hits: Mapped[int] = mapped_column(Integer, default=0)


class ManifestRow(Base):
    """A cached manifest (its bytes are a blob of the same digest)."""

    __tablename__ = "manifests"

    digest: Mapped[str] = mapped_column(String(200), primary_key=True)
    media_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    last_access: Mapped[float] = mapped_column(Float)
    hits: Mapped[int] = mapped_column(Integer, default=0)


class RepositoryLink(Base):
    """Content seen in a repository of an upstream: what may be served under that name."""

    __tablename__ = "repository_links"

    upstream: Mapped[str] = mapped_column(String(255), primary_key=True)
    repository: Mapped[str] = mapped_column(String(255), primary_key=True)
    digest: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # "blob" or "manifest"
    linked_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_repository_links_digest", "digest"),)


class TagRow(Base):
    """Where a tag pointed, per upstream and per class of client Accept header."""

    __tablename__ = "tags"

    upstream: Mapped[str] = mapped_column(String(255), primary_key=True)
    repository: Mapped[str] = mapped_column(String(255), primary_key=True)
    tag: Mapped[str] = mapped_column(String(128), primary_key=True)
    accept: Mapped[str] = mapped_column(String(32), primary_key=True)
    digest: Mapped[str] = mapped_column(String(200))
    media_type: Mapped[str] = mapped_column(String(255))
    checked_at: Mapped[float] = mapped_column(Float)


class ReferrersRow(Base):
    """The last referrers index relayed for a subject (its bytes are a blob)."""

    __tablename__ = "referrers"

    upstream: Mapped[str] = mapped_column(String(255), primary_key=True)
    repository: Mapped[str] = mapped_column(String(255), primary_key=True)
    subject: Mapped[str] = mapped_column(String(200), primary_key=True)
    artifact_type: Mapped[str] = mapped_column(String(255), primary_key=True)
    digest: Mapped[str] = mapped_column(String(200))
    checked_at: Mapped[float] = mapped_column(Float)


class ManifestPlatform(Base):
    """The platform of a cached image manifest (from an index entry or its config)."""

    __tablename__ = "manifest_platforms"

    digest: Mapped[str] = mapped_column(String(200), primary_key=True)
    os: Mapped[str] = mapped_column(String(64))
    architecture: Mapped[str] = mapped_column(String(64))
    variant: Mapped[str] = mapped_column(String(64), default="")
    os_version: Mapped[str] = mapped_column(String(128), default="")
    features: Mapped[str] = mapped_column(String(512), default="")  # comma-separated
    source: Mapped[str] = mapped_column(String(16))  # "index" or "config"


class SynthesizedList(Base):
    """A list created with `mirror list create` (config [[lists]] are not stored here)."""

    __tablename__ = "synthesized_lists"

    upstream: Mapped[str] = mapped_column(String(255), primary_key=True)
    repository: Mapped[str] = mapped_column(String(255), primary_key=True)
    tag: Mapped[str] = mapped_column(String(128), primary_key=True)
    sources: Mapped[str] = mapped_column(String(8192))  # JSON: [{"ref", "platform"}]
    created_at: Mapped[float] = mapped_column(Float)


class Pin(Base):
    """Content that must never be evicted (prefetch --pin, sync pin = true)."""

    __tablename__ = "pins"

    digest: Mapped[str] = mapped_column(String(200), primary_key=True)
    reason: Mapped[str] = mapped_column(String(512))
    pinned_at: Mapped[float] = mapped_column(Float)
