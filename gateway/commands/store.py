"""Commands, idempotency keys and their state transitions in the edge database.

Every transition is a conditional UPDATE (``WHERE state = <expected>``), so a cancel racing the
executor's claim, or two gateways sharing one PostgreSQL, resolve to exactly one winner; the loser
sees ``None``. Each transition writes its audit entry in the same transaction.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator
from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from gateway.readings import TagValue
from gateway.storage.audit import Actor, AuditLog
from gateway.storage.tables import commands, idempotency_keys, page

CommandState = Literal["PENDING", "IN_PROGRESS", "COMPLETED", "FAILED", "CANCELLED", "EXPIRED"]
TERMINAL: frozenset[str] = frozenset({"COMPLETED", "FAILED", "CANCELLED", "EXPIRED"})
WRITE = "write"


class CommandRequest(BaseModel):
    """``POST /api/v1/commands`` body. The client never sets state, owner or timestamps (OWASP API3)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    asset: str = Field(min_length=1, max_length=128, examples=["conveyor-01"])
    command: str = Field(min_length=1, max_length=64, examples=["write"],
                         description='"write" for a tag write, else a named command of the asset type')
    tag: str | None = Field(default=None, max_length=128, examples=["speed_setpoint"])
    value: TagValue | None = Field(default=None, examples=[1.2])
    args: tuple[TagValue, ...] = Field(default=(), description="arguments of a named command")
    ttl_s: float | None = Field(default=None, gt=0, description="time to live; the queue's default if absent")

    @model_validator(mode="after")
    def _shape(self) -> Self:
        if self.command == WRITE:
            if self.tag is None or self.value is None:
                raise ValueError('a "write" command needs tag and value')
            if self.args:
                raise ValueError('a "write" command takes tag and value, not args')
        elif self.tag is not None or self.value is not None:
            raise ValueError(f"the named command {self.command!r} takes args, not tag/value")
        return self

    def fingerprint(self) -> str:
        """What an idempotency key is bound to: the canonical JSON of the body."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class CommandRecord:
    """A command as stored, and as the API and the ``commands`` stream show it."""

    id: int
    asset: str
    command: str
    tag: str | None
    value: Any
    args: list[Any]
    state: CommandState
    reason: Annotated[str | None, Field(description="why it failed, expired or was cancelled")]
    created_by: str
    channel: str
    idempotency_key: str | None
    created_at: datetime
    expires_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def target(self) -> dict[str, Any]:
        target: dict[str, Any] = {"asset": self.asset, "command_id": self.id}
        if self.tag is not None:
            target["signal"] = self.tag
        return target

    def as_json(self) -> dict[str, Any]:
        """What the API returns for this command."""
        json_view: dict[str, Any] = _RECORD_ADAPTER.dump_python(self, mode="json")
        return json_view


_RECORD_ADAPTER = TypeAdapter(CommandRecord)


class IdempotencyConflict(Exception):
    """The key was used before with a different body."""


def get_sync(conn: Connection, command_id: int) -> CommandRecord | None:
    row = conn.execute(select(commands).where(commands.c.id == command_id)).one_or_none()
    return CommandRecord(**row._mapping) if row is not None else None


def _replay(conn: Connection, actor: str, key: str, fingerprint: str) -> CommandRecord | None:
    row = conn.execute(select(idempotency_keys).where(idempotency_keys.c.actor == actor,
                                                      idempotency_keys.c.key == key)).one_or_none()
    if row is None:
        return None
    if row.request_hash != fingerprint:
        raise IdempotencyConflict(f"Idempotency-Key {key!r} was already used with a different request")
    record = get_sync(conn, row.command_id)
    assert record is not None
    return record


def lookup_sync(conn: Connection, actor: Actor, key: str, request: CommandRequest) -> CommandRecord | None:
    """The command an earlier request with this key created, or None; IdempotencyConflict on mismatch."""
    return _replay(conn, actor.sub, key, request.fingerprint())


def insert_sync(
    conn: Connection, request: CommandRequest, actor: Actor, key: str | None, now: datetime, expires: datetime
) -> tuple[CommandRecord, bool]:
    """Store a new PENDING command (and its key); (record, replayed). A concurrent request with the
    same key that committed first wins, and this one returns its command as a replay."""
    try:
        with conn.begin_nested():
            new_id = conn.execute(insert(commands).values(
                asset=request.asset, command=request.command, tag=request.tag, value=request.value,
                args=list(request.args), state="PENDING", created_by=actor.sub, channel=actor.channel,
                idempotency_key=key, created_at=now, expires_at=expires,
            )).inserted_primary_key
            assert new_id is not None
            if key is not None:
                conn.execute(insert(idempotency_keys).values(actor=actor.sub, key=key, created_at=now,
                                                             request_hash=request.fingerprint(),
                                                             command_id=int(new_id[0])))
    except IntegrityError:
        if key is None:
            raise
        existing = _replay(conn, actor.sub, key, request.fingerprint())
        assert existing is not None
        return existing, True
    record = get_sync(conn, int(new_id[0]))
    assert record is not None
    AuditLog.append_sync(conn, actor.entry(
        f"command.{request.command}", "accepted", target=record.target(), ts=now, correlation_id=key,
        requested=request.value if request.command == WRITE else list(request.args),
    ))
    return record, False


def transition_sync(
    conn: Connection, command_id: int, from_state: CommandState, to_state: CommandState, now: datetime,
    actor: Actor, reason: str | None = None,
) -> CommandRecord | None:
    """Move one command from ``from_state``; None when it was not in that state any more."""
    values: dict[str, Any] = {"state": to_state, "reason": reason}
    values["started_at" if to_state == "IN_PROGRESS" else "finished_at"] = now
    done = conn.execute(update(commands).where(commands.c.id == command_id, commands.c.state == from_state)
                        .values(**values)).rowcount
    if done != 1:
        return None
    record = get_sync(conn, command_id)
    assert record is not None
    if to_state != "IN_PROGRESS":  # the audit trail records outcomes; dispatch is in started_at
        AuditLog.append_sync(conn, actor.entry(
            f"command.{record.command}", to_state.lower(), target=record.target(), ts=now, detail=reason,
            correlation_id=record.idempotency_key,
            requested=record.value if record.command == WRITE else record.args,
        ))
    return record


def ids_in_state_sync(conn: Connection, state: CommandState) -> list[int]:
    stmt = select(commands.c.id).where(commands.c.state == state).order_by(commands.c.id)
    return [int(i) for i in conn.execute(stmt).scalars()]


def expired_ids_sync(conn: Connection, now: datetime) -> list[int]:
    stmt = select(commands.c.id).where(commands.c.state == "PENDING", commands.c.expires_at <= now)
    return [int(i) for i in conn.execute(stmt.order_by(commands.c.id)).scalars()]


def count_pending_sync(conn: Connection, asset: str) -> int:
    stmt = select(commands.c.id).where(commands.c.state == "PENDING", commands.c.asset == asset)
    return len(conn.execute(stmt).all())


def list_sync(
    conn: Connection, *, states: Sequence[str] = (), asset: str | None = None, limit: int = 100,
    before_id: int | None = None, oldest_first: bool = False, assets: Collection[str] | None = None,
) -> list[CommandRecord]:
    stmt = page(commands, limit=limit, before_id=before_id, states=states, asset=asset, assets=assets,
                oldest_first=oldest_first)
    return [CommandRecord(**row._mapping) for row in conn.execute(stmt)]
