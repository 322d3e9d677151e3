"""Alembic migration environment of the edge database (see gateway/storage/migrate.py)."""
