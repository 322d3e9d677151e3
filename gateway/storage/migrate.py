"""Schema migrations with Alembic: what :meth:`Database.start` runs, and the helpers tools share.

At start the gateway runs ``alembic upgrade head`` against its database:

- a fresh database gets every revision from the baseline on;
- a database made by a gateway from before migrations (tables made by ``create_all``, no
  ``alembic_version``) is stamped as the baseline revision, which is exactly that schema, and then
  upgraded: its rows stay;
- a database already at a revision is upgraded from there (nothing to do when at head).

On PostgreSQL a transaction-scoped advisory lock makes two gateways starting together on one
database migrate one after the other. SQLite ALTERs run in Alembic's batch mode (the revisions use
``batch_alter_table``), which copies a table when SQLite cannot alter it in place.

Developers make a new revision with the alembic CLI (``[tool.alembic]`` in pyproject.toml)::

    alembic -x url=sqlite:///data/twinedge.db revision --autogenerate -m "what changes"
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

SCRIPT_LOCATION = Path(__file__).with_name("migrations")
BASELINE = "0001"
BASELINE_TABLES = frozenset({"users", "alert_rules", "alerts", "alert_history", "commands", "idempotency_keys",
                             "audit_log"})
# pg_advisory_xact_lock key: any constant that other applications sharing the database do not use.
LOCK_KEY = 0x7477_6564_6765  # "twedge"


class SchemaError(Exception):
    """The database holds some of the gateway's tables but not a schema this gateway knows."""


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config of the package's migrations; ``connection`` is the one env.py migrates."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(conn: Connection) -> str | None:
    """The database's revision; None when it has no ``alembic_version`` (fresh or from before migrations)."""
    return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> None:
    """Bring the database to the newest revision, in one transaction where the backend allows it."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
        config = alembic_config(conn)
        if current_revision(conn) is None:
            present = BASELINE_TABLES & set(inspect(conn).get_table_names())
            if present == BASELINE_TABLES:  # made by create_all before migrations existed
                command.stamp(config, BASELINE)
            elif present:
                missing = ", ".join(sorted(BASELINE_TABLES - present))
                raise SchemaError(f"the database has some of the gateway's tables but not {missing}, and no "
                                  "alembic_version: not a schema this gateway can migrate")
        command.upgrade(config, "head")
