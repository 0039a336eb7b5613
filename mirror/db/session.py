"""Async engine and sessions; SQLite in WAL mode; Alembic migrations at start-up."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.ext.asyncio import AsyncSession as AsyncSession

log = logging.getLogger("mirror.db")


def create_engine(url: str) -> AsyncEngine:
    """An async engine; for SQLite, WAL journaling and a busy timeout on every connection."""
    engine = create_async_engine(url, pool_pre_ping=not url.startswith("sqlite"))
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            # WAL: readers never block the writer; NORMAL sync is crash-safe for a
            # process kill (only a power loss can drop the last commits).
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=10000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    return engine


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)


def migrations_dir() -> Path:
    """The Alembic script directory, shipped as the ``mirror.migrations`` package."""
    module = importlib.import_module("mirror.migrations")
    assert module.__file__ is not None
    return Path(module.__file__).parent


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at our migrations and database."""
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


async def upgrade(engine: AsyncEngine) -> None:
    """Create or upgrade the schema to the newest migration."""

    def run(connection: Connection) -> None:
        cfg = alembic_config(str(engine.url))
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")

    async with engine.begin() as conn:
        await conn.run_sync(run)
    log.info("event=db_upgraded url=%s", engine.url.render_as_string(hide_password=True))
