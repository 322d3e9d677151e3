"""The append-only audit log (conventions §6.3, IEC 62443-3-3 SR 2.8 auditable events).

Who did what, when, to which target, with what result, over which channel: logins (failed ones
too), accepted and rejected commands and every command outcome, alert acknowledgements, user and
rule changes. Nothing in the gateway updates or deletes audit rows; each row extends a hash chain
(storage/chain.py), so a row changed or removed in the database is detected by :meth:`AuditLog.verify`.
Appends take a Connection so they commit in the same transaction as the change they record: a
command never changes state without its audit entry, and vice versa.

Appends are serialised by a row lock on ``audit_chain_head`` (SELECT ... FOR UPDATE), held until the
transaction commits: on PostgreSQL that orders writers across threads and processes; SQLite ignores
FOR UPDATE but runs every transaction of a process on one thread and takes its write lock at the
first write. Callers append last in their transaction, so the lock is held briefly and never while
waiting for another row lock (no lock-order deadlock with the rows the change itself updates).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Connection, insert, select, update

from gateway.storage.chain import HEAD_ID, ChainReport, entry_hash, verify_sync
from gateway.storage.db import Database
from gateway.storage.tables import audit_chain_head, audit_log, page

Channel = Literal["rest", "mqtt", "opcua", "modbus", "ws", "system"]


@dataclass(frozen=True)
class Actor:
    """Who asks for a change, through which channel: what every audit entry records about the caller."""

    sub: str
    roles: tuple[str, ...] = ()
    ip: str | None = None
    channel: Channel = "rest"

    def entry(self, action: str, result: str, **fields: Any) -> AuditEntry:
        return AuditEntry(actor=self.sub, roles=self.roles, ip=self.ip, channel=self.channel, action=action,
                          result=result, **fields)


SYSTEM = Actor("gateway", ("system",), None, "system")


@dataclass(frozen=True)
class AuditEntry:
    actor: str
    action: str  # e.g. auth.login, command.write, command.cancel, alert.ack, user.create
    result: str  # e.g. accepted, rejected, completed, failed, ok, denied
    target: dict[str, Any] = field(default_factory=dict)
    roles: Sequence[str] = ()
    requested: Any = None
    detail: str | None = None
    correlation_id: str | None = None
    ip: str | None = None
    channel: Channel = "rest"
    ts: datetime = field(default_factory=lambda: datetime.now(UTC))
    id: int | None = None

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["roles"] = list(self.roles)
        data["ts"] = self.ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return data


class AuditLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    @staticmethod
    def append_sync(conn: Connection, entry: AuditEntry) -> None:
        head = conn.execute(select(audit_chain_head.c.hash).where(audit_chain_head.c.id == HEAD_ID)
                            .with_for_update()).scalar_one_or_none()
        if head is None:
            raise RuntimeError("the audit chain head is missing: the audit log was tampered with")
        fields = {
            "ts": entry.ts, "actor": entry.actor, "roles": list(entry.roles), "ip": entry.ip,
            "action": entry.action, "target": entry.target, "requested": entry.requested, "result": entry.result,
            "detail": entry.detail, "correlation_id": entry.correlation_id, "channel": entry.channel,
        }
        digest = entry_hash(head, fields)
        new_id = conn.execute(insert(audit_log).values(**fields, prev_hash=head, hash=digest)).inserted_primary_key
        assert new_id is not None
        conn.execute(update(audit_chain_head).where(audit_chain_head.c.id == HEAD_ID)
                     .values(hash=digest, last_id=int(new_id[0])))

    async def append(self, entry: AuditEntry) -> None:
        await self.db.run(lambda conn: self.append_sync(conn, entry))

    async def entries(
        self, *, limit: int = 100, before_id: int | None = None, action_prefix: str | None = None
    ) -> list[AuditEntry]:
        """Newest first; page with ``before_id`` (the smallest id of the previous page)."""

        def query(conn: Connection) -> list[AuditEntry]:
            stmt = page(audit_log, limit=limit, before_id=before_id)
            if action_prefix:
                stmt = stmt.where(audit_log.c.action.startswith(action_prefix, autoescape=True))
            return [
                AuditEntry(
                    id=row.id, ts=row.ts, actor=row.actor, roles=tuple(row.roles), ip=row.ip,
                    action=row.action, target=row.target, requested=row.requested, result=row.result,
                    detail=row.detail, correlation_id=row.correlation_id, channel=row.channel,
                )
                for row in conn.execute(stmt)
            ]

        return await self.db.run(query)

    async def verify(self) -> ChainReport:
        """Recompute the hash chain: intact, or the first row found broken and why."""
        return await self.db.run(verify_sync)
