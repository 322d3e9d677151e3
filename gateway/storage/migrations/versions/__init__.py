"""Alembic revisions, oldest first by number; 0001 is the schema from before migrations."""
