"""Alembic history of the API security tables (own version table ``alembic_version_api``)."""
