"""Alembic's environment: runs on the connection shared.db hands it, never reads alembic.ini.

Logging is left to the process (shared/logs.py): no fileConfig here.
"""

from __future__ import annotations

from alembic import context

from shared.db import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through shared.db.upgrade or `provisioner db upgrade`")

context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite cannot ALTER most things in place; batch mode copies the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
