"""Schema migrations (Alembic) on a SQLite file and a real PostgreSQL: the models and the revisions agree,
a database made before migrations is stamped and upgraded with its rows kept, starts are idempotent."""

from __future__ import annotations

from datetime import UTC, datetime

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, text

from gateway.storage.audit import Actor, AuditEntry, AuditLog
from gateway.storage.db import Database
from gateway.storage.migrate import BASELINE, alembic_config, current_revision, head_revision
from gateway.storage.tables import metadata
from gateway.storage.users import UserStore

pytest_plugins = ["tests.fixtures.edge"]

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def _diff(conn: Connection) -> list[object]:
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


async def test_models_and_migrations_agree(database: Database) -> None:
    assert await database.run(_diff) == []
    assert await database.run(current_revision) == head_revision()


async def test_start_is_idempotent(database: Database) -> None:
    await AuditLog(database).append(_login())
    await database.start()
    assert await database.run(current_revision) == head_revision()
    assert len(await AuditLog(database).entries()) == 1


def _login() -> AuditEntry:
    return Actor("op", ("operator",)).entry("auth.login", "ok", ts=T0)


def _build_pre_migration_database(conn: Connection) -> None:
    """What a gateway from before migrations left: the baseline tables (create_all), no alembic_version,
    and some rows, audit rows without hashes among them."""
    command.upgrade(alembic_config(conn), BASELINE)
    conn.execute(text("DROP TABLE alembic_version"))
    conn.execute(text("INSERT INTO users (username, password_hash, role, disabled, created_at) "
                      "VALUES ('admin', 'h', 'admin', false, :ts)"), {"ts": T0})
    for index in range(3):
        conn.execute(text(
            "INSERT INTO audit_log (ts, actor, roles, ip, action, target, requested, result, detail, "
            "correlation_id, channel) VALUES (:ts, 'admin', '[\"admin\"]', '127.0.0.1', 'user.create', "
            ":target, :requested, 'ok', NULL, NULL, 'rest')"),
            {"ts": T0, "target": f'{{"user": "u{index}"}}', "requested": f'{{"role": "viewer", "n": {index}.5}}'})


async def test_a_database_from_before_migrations_is_stamped_and_upgraded(db_url: tuple[str, str | None]) -> None:
    old = Database(db_url[0], schema=db_url[1])
    await old.run(_build_pre_migration_database)
    assert await old.run(current_revision) is None
    await old.close()

    db = Database(db_url[0], schema=db_url[1])
    await db.start()
    try:
        assert await db.run(current_revision) == head_revision()
        assert await db.run(_diff) == []
        admin = await UserStore(db).get("admin")
        assert admin is not None
        assert admin.sites == ()
        assert admin.password_hash == "h"
        audit = AuditLog(db)
        assert [e.target for e in await audit.entries()] == [{"user": "u2"}, {"user": "u1"}, {"user": "u0"}]
        report = await audit.verify()
        assert (report.intact, report.rows) == (True, 3)
        await audit.append(_login())  # the chain goes on from the rows chained by the migration
        assert (await audit.verify()).rows == 4
    finally:
        await db.close()


async def test_downgrade_to_the_baseline_and_back(database: Database) -> None:
    def downgrade(conn: Connection) -> list[str]:
        command.downgrade(alembic_config(conn), BASELINE)
        return sorted(inspect(conn).get_table_names())

    tables = await database.run(downgrade)
    assert "revoked_tokens" not in tables
    assert "audit_chain_head" not in tables
    await database.start()
    assert await database.run(_diff) == []
