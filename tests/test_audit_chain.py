"""The audit log's hash chain on a SQLite file and a real PostgreSQL: concurrent appends keep one chain,
tampering through SQL is found by AuditLog.verify, GET /api/v1/audit/verify and `twinedge audit-verify`."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Connection, delete, select, update

from gateway.cli import main
from gateway.storage.audit import Actor, AuditLog
from gateway.storage.db import Database
from gateway.storage.tables import audit_chain_head, audit_log
from tests.edge_support import Edge

pytest_plugins = ["tests.fixtures.edge"]

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
ACTOR = Actor("op.smith", ("operator",), "10.0.0.1")


async def _append(audit: AuditLog, count: int) -> None:
    for index in range(count):
        await audit.append(ACTOR.entry("command.write", "accepted", target={"asset": "conveyor-01", "i": index},
                                       requested={"value": index + 0.25, "unit": "MTS"},
                                       ts=T0 + timedelta(milliseconds=index)))


async def _ids(db: Database) -> list[int]:
    return await db.run(lambda conn: list(conn.execute(select(audit_log.c.id).order_by(audit_log.c.id)).scalars()))


async def test_each_row_chains_to_the_one_before(database: Database) -> None:
    audit = AuditLog(database)
    assert (await audit.verify()).intact  # empty
    await _append(audit, 3)
    rows = await database.run(lambda conn: conn.execute(select(audit_log).order_by(audit_log.c.id)).all())
    assert rows[0].prev_hash == "0" * 64
    assert [r.prev_hash for r in rows[1:]] == [r.hash for r in rows[:-1]]
    head = await database.run(lambda conn: conn.execute(select(audit_chain_head)).one())
    assert (head.last_id, head.hash) == (rows[-1].id, rows[-1].hash)
    report = await audit.verify()
    assert (report.intact, report.rows, report.first_broken_id) == (True, 3, None)


async def test_concurrent_writers_keep_one_chain(db_url: tuple[str, str | None]) -> None:
    """Many appends at once through two Database instances: two gateways sharing one database. On
    PostgreSQL the pools run them on several threads; on SQLite each instance has its own writer
    thread and connection, as two processes would, and the read-then-write of the chain head must
    wait for the other's write lock rather than fail with "database is locked"."""
    databases = [Database(db_url[0], schema=db_url[1]), Database(db_url[0], schema=db_url[1])]
    await databases[0].start()
    try:
        logs = [AuditLog(db) for db in databases]
        await asyncio.gather(*(_append(logs[i % len(logs)], 10) for i in range(8)))
        report = await logs[-1].verify()
        assert (report.intact, report.rows) == (True, 80), report
    finally:
        for db in databases:
            await db.close()


@pytest.mark.parametrize(("tamper", "broken", "reason"), [
    ("edit", 1, "modified"), ("delete", 2, "removed or reordered"), ("truncate", 3, "removed from the end"),
    ("rehash", 1, "modified"),
])
async def test_tampering_through_sql_is_found(database: Database, tamper: str, broken: int, reason: str) -> None:
    audit = AuditLog(database)
    await _append(audit, 4)
    ids = await _ids(database)

    def change(conn: Connection) -> None:
        if tamper == "edit":  # a rejected command made to look accepted
            conn.execute(update(audit_log).where(audit_log.c.id == ids[1]).values(result="rejected"))
        elif tamper == "rehash":  # changing the hash too is not enough: the next row names the old one
            conn.execute(update(audit_log).where(audit_log.c.id == ids[1]).values(actor="someone", hash="f" * 64))
        elif tamper == "delete":
            conn.execute(delete(audit_log).where(audit_log.c.id == ids[1]))
        else:
            conn.execute(delete(audit_log).where(audit_log.c.id == ids[3]))

    await database.run(change)
    report = await audit.verify()
    assert not report.intact
    assert report.first_broken_id == ids[broken]
    assert reason in (report.reason or "")


async def test_verify_route_is_for_admins_over_every_site(edge: Edge) -> None:
    response = await edge.client.get("/api/v1/audit/verify", headers=edge.auth("admin"))
    assert response.status_code == 200
    assert response.json()["intact"] is True
    assert response.json()["rows"] >= 3  # the logins and user creations of the fixture
    assert (await edge.client.get("/api/v1/audit/verify", headers=edge.auth("operator"))).status_code == 403
    scoped = {"username": "mine.admin", "password": "mine-admin-pass-1", "role": "admin", "sites": ["mine"]}
    assert (await edge.client.post("/api/v1/users", headers=edge.auth("admin"), json=scoped)).status_code == 201
    login = await edge.client.post("/api/v1/auth/token", data={"username": scoped["username"],
                                                               "password": scoped["password"]})
    response = await edge.client.get("/api/v1/audit/verify",
                                     headers={"Authorization": f"Bearer {login.json()['access_token']}"})
    assert response.status_code == 403
    assert "every site" in response.json()["detail"]

    first = (await _ids(edge.services.db))[0]
    await edge.services.db.run(lambda conn: conn.execute(update(audit_log).where(audit_log.c.id == first)
                                                         .values(actor="nobody")))
    report = (await edge.client.get("/api/v1/audit/verify", headers=edge.auth("admin"))).json()
    assert report["intact"] is False
    assert report["first_broken_id"] == first
    assert report["rows"] == 0


async def test_cli_audit_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(f"gateway:\n  data_dir: {tmp_path / 'data'}\n  catalogue: null\n", encoding="utf-8")
    assert main(["audit-verify", "--config", str(config)]) == 2  # no database yet: nothing is created
    assert "no database" in capsys.readouterr().err
    db = Database(f"sqlite:///{tmp_path / 'data' / 'twinedge.db'}")
    await db.start()
    await _append(AuditLog(db), 2)
    assert await asyncio.to_thread(main, ["audit-verify", "--config", str(config)]) == 0
    assert "intact: 2 rows" in capsys.readouterr().out
    await db.run(lambda conn: conn.execute(update(audit_log).where(audit_log.c.id == 2).values(detail="x")))
    await db.close()
    assert await asyncio.to_thread(main, ["audit-verify", "--config", str(config)]) == 1
    assert "BROKEN at row 2" in capsys.readouterr().out

