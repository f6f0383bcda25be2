"""Alembic environment: runs on the connection the service passes in (see database._upgrade)."""

from alembic import context

from service.storage.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - the service always passes a connection
    raise RuntimeError("run migrations through service.storage.database.Database.migrate()")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
