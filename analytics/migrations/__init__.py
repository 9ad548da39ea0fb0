"""Alembic history of the analytics tables (own version table ``alembic_version_analytics``)."""
