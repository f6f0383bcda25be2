"""Feedback (and, later, audit) storage: SQLAlchemy 2 async on SQLite or PostgreSQL, schema by Alembic."""
