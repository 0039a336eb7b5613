"""Alembic migrations of the mirror's metadata database (installed as mirror.migrations)."""
