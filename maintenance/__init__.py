"""Maintenance: the asset ledger, work orders raised from anomaly events, SLA timers, the
closed loop, preventive maintenance and inspection rounds. Tables in the relational
database (SQLite or PostgreSQL) with their own Alembic history (``alembic_version_maintenance``)."""
