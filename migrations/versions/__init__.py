"""Alembic revisions, one file per schema change, frozen once released."""
