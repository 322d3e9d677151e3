"""Storage: the same code on a SQLite file and on a real PostgreSQL (see tests/fixtures/edge.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.exc import IntegrityError

from gateway.alerts.rules import AlertEvent
from gateway.alerts.store import AlertStore
from gateway.storage.audit import Actor, AuditLog
from gateway.storage.db import Database, StorageConfig
from gateway.storage.tables import alerts
from gateway.storage.users import UserExists, UserStore

pytest_plugins = ["tests.fixtures.edge"]

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def test_default_url_is_a_sqlite_file_in_the_data_dir(tmp_path: Path) -> None:
    assert StorageConfig().resolved_url(tmp_path) == f"sqlite:///{tmp_path.as_posix()}/twinedge.db"
    url = "postgresql+psycopg://u@db/x"
    assert StorageConfig(url=url).resolved_url(tmp_path) == url


async def test_sqlite_file_runs_in_wal_mode(tmp_path: Path) -> None:
    db = Database.from_config(StorageConfig(), tmp_path / "data")
    await db.start()
    mode = await db.run(lambda conn: conn.execute(text("PRAGMA journal_mode")).scalar_one())
    await db.close()
    await db.close()  # idempotent
    assert mode == "wal"
    assert (tmp_path / "data" / "twinedge.db").exists()


async def test_users_are_unique_and_timestamps_come_back_aware(database: Database) -> None:
    users = UserStore(database)
    created = await users.create("op", "hash", "operator")
    assert created is not None
    with pytest.raises(UserExists):
        await users.create("op", "other", "viewer")
    stored = await users.get("op")
    assert stored is not None
    assert stored.role == "operator"
    assert stored.password_hash == "hash"
    assert stored.created_at.tzinfo is not None
    assert await users.count() == 1
    assert await users.create("second", "h", "admin", only_if_empty=True) is None


async def test_audit_log_appends_and_pages_newest_first(database: Database) -> None:
    audit = AuditLog(database)
    actor = Actor("op", ("operator",), "10.0.0.1")
    for index in range(5):
        await audit.append(actor.entry("command.write", "accepted", target={"asset": "a", "i": index},
                                       requested=index, ts=T0 + timedelta(seconds=index)))
    await audit.append(actor.entry("auth.login", "denied", ts=T0 + timedelta(seconds=9)))
    page = await audit.entries(limit=3, action_prefix="command.")
    assert [e.requested for e in page] == [4, 3, 2]
    assert page[0].ts == T0 + timedelta(seconds=4)
    assert page[0].roles == ("operator",)
    rest = await audit.entries(limit=10, before_id=page[-1].id, action_prefix="command.")
    assert [e.requested for e in rest] == [1, 0]
    assert page[0].as_json()["ts"] == "2026-11-21T12:00:04.000Z"


async def test_one_open_alert_per_rule_and_asset_is_enforced_by_the_database(database: Database) -> None:
    store = AlertStore(database)
    raised = AlertEvent("raised", "r1", "a1", "t", "warning", 5.0, "high", T0)
    first = await store.apply([raised, raised])  # the second is a duplicate: ignored, not an error
    assert [r.state for r in first] == ["active"]

    def duplicate(conn: object) -> None:
        from sqlalchemy import Connection

        assert isinstance(conn, Connection)
        conn.execute(insert(alerts).values(rule_id="r1", asset="a1", severity="warning", state="active",
                                           message="m", raised_at=T0))

    with pytest.raises(IntegrityError):
        await database.run(duplicate)
    cleared = await store.apply([AlertEvent("cleared", "r1", "a1", "t", "warning", 1.0, "ok", T0)])
    assert cleared[0].state == "cleared"
    again = await store.apply([raised])  # a cleared alert does not block a new one
    assert again[0].id != first[0].id
    count = await database.run(lambda conn: len(conn.execute(select(alerts.c.id)).all()))
    assert count == 2


async def test_naive_datetimes_are_refused(database: Database) -> None:
    store = AlertStore(database)
    with pytest.raises(Exception, match="naive datetime"):
        await store.apply([AlertEvent("raised", "r", "a", None, "info", None, "m", datetime(2026, 1, 1))])
