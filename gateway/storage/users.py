"""API users: username, password hash (never the password), role, disabled flag, sites, token stamp.

Every change that matters to security (password, role, sites, disabled) gives the user a new token
stamp, which revokes the tokens issued before it. Each change writes its audit entry in the same
transaction. The last enabled admin can be neither demoted, disabled nor deleted: the admin rows are
locked (SELECT ... FOR UPDATE, in id order, before the target row) and then counted, so two admins
demoting each other at the same time cannot both succeed on PostgreSQL; SQLite runs a process's
transactions one at a time anyway.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Row, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from gateway.storage.audit import Actor, AuditLog
from gateway.storage.db import Database
from gateway.storage.tables import users

T = TypeVar("T")


class UserExists(Exception):
    pass


class UserNotFound(Exception):
    pass


class LastAdmin(Exception):
    """The change would leave no enabled admin."""


@dataclass(frozen=True)
class UserRecord:
    id: int
    username: str
    password_hash: str
    role: str
    disabled: bool
    created_at: datetime
    sites: tuple[str, ...] = ()  # empty: every site
    token_stamp: str = ""


@dataclass(frozen=True)
class UserChanges:
    """What a PATCH changes; None leaves a field as it is."""

    role: str | None = None
    password_hash: str | None = None
    disabled: bool | None = None
    sites: Sequence[str] | None = None

    def audit_view(self) -> dict[str, Any]:
        """The requested change as the audit log keeps it: never the hash."""
        view: dict[str, Any] = {k: v for k, v in (("role", self.role), ("disabled", self.disabled)) if v is not None}
        if self.sites is not None:
            view["sites"] = list(self.sites)
        if self.password_hash is not None:
            view["password"] = "changed"
        return view


def new_stamp() -> str:
    return secrets.token_hex(16)


def _record(row: Row[Any]) -> UserRecord:
    return UserRecord(**{**row._mapping, "sites": tuple(row.sites or ())})


def _get_sync(conn: Connection, username: str, *, lock: bool = False) -> UserRecord:
    stmt = select(users).where(users.c.username == username)
    row = conn.execute(stmt.with_for_update() if lock else stmt).one_or_none()
    if row is None:
        raise UserNotFound(username)
    return _record(row)


def _lock_enabled_admins(conn: Connection) -> int:
    """Lock the enabled admins' rows (in id order, so two such transactions queue instead of deadlocking)
    and count them."""
    stmt = select(users.c.id).where(users.c.role == "admin", users.c.disabled.is_(False)).order_by(users.c.id)
    return len(conn.execute(stmt.with_for_update()).all())


def _keep_an_admin(user: UserRecord, stays_admin: bool, enabled_admins: int) -> None:
    """LastAdmin when ``user`` is an enabled admin who would stop being one and is the only one."""
    if user.role == "admin" and not user.disabled and not stays_admin and enabled_admins <= 1:
        raise LastAdmin(user.username)


class UserStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def count(self) -> int:
        stmt = select(func.count()).select_from(users)
        return await self.db.run(lambda conn: int(conn.execute(stmt).scalar_one()))

    async def get(self, username: str) -> UserRecord | None:
        def query(conn: Connection) -> UserRecord | None:
            try:
                return _get_sync(conn, username)
            except UserNotFound:
                return None

        return await self.db.run(query)

    async def all(self) -> list[UserRecord]:
        def query(conn: Connection) -> list[UserRecord]:
            return [_record(row) for row in conn.execute(select(users).order_by(users.c.username))]

        return await self.db.run(query)

    async def create(
        self, username: str, password_hash: str, role: str, *, sites: Sequence[str] = (),
        only_if_empty: bool = False,
    ) -> UserRecord | None:
        """Insert a user; UserExists on a taken name. ``only_if_empty`` makes the first-admin bootstrap
        safe when two gateway processes share one database: only the first one creates it."""

        def work(conn: Connection) -> UserRecord | None:
            if only_if_empty and conn.execute(select(func.count()).select_from(users)).scalar_one():
                return None
            now, stamp = datetime.now(UTC), new_stamp()
            try:
                with conn.begin_nested():
                    new_id = conn.execute(
                        insert(users).values(username=username, password_hash=password_hash, role=role,
                                             disabled=False, created_at=now, sites=list(sites), token_stamp=stamp)
                    ).inserted_primary_key
            except IntegrityError:
                raise UserExists(username) from None
            assert new_id is not None
            return UserRecord(int(new_id[0]), username, password_hash, role, False, now, tuple(sites), stamp)

        return await self.db.run(work)

    async def update(
        self, username: str, changes: UserChanges, actor: Actor, action: str = "user.update"
    ) -> UserRecord:
        """Apply ``changes`` with a new token stamp; UserNotFound, or LastAdmin (audited as rejected)."""

        def work(conn: Connection) -> UserRecord:
            may_remove_admin = changes.role is not None or changes.disabled is True
            admins = _lock_enabled_admins(conn) if may_remove_admin else 0
            user = _get_sync(conn, username, lock=True)
            stays_admin = (changes.role or user.role) == "admin" and not (
                changes.disabled if changes.disabled is not None else user.disabled)
            if may_remove_admin:
                _keep_an_admin(user, stays_admin, admins)
            values: dict[str, Any] = {"token_stamp": new_stamp()}
            for name in ("role", "password_hash", "disabled"):
                if getattr(changes, name) is not None:
                    values[name] = getattr(changes, name)
            if changes.sites is not None:
                values["sites"] = list(changes.sites)
            conn.execute(update(users).where(users.c.id == user.id).values(**values))
            AuditLog.append_sync(conn, actor.entry(action, "ok", target={"user": username},
                                                   requested=changes.audit_view()))
            return _get_sync(conn, username)

        return await self._audited(action, username, work, actor, changes.audit_view())

    async def delete(self, username: str, actor: Actor) -> None:
        def work(conn: Connection) -> None:
            admins = _lock_enabled_admins(conn)
            user = _get_sync(conn, username, lock=True)
            _keep_an_admin(user, False, admins)
            conn.execute(delete(users).where(users.c.id == user.id))
            AuditLog.append_sync(conn, actor.entry("user.delete", "ok", target={"user": username}))

        await self._audited("user.delete", username, work, actor, None)

    async def _audited(
        self, action: str, username: str, work: Callable[[Connection], T], actor: Actor, requested: Any
    ) -> T:
        """Run ``work``; a refusal is audited in a transaction of its own (the change rolled back)."""
        try:
            result = await self.db.run(work)
        except (UserNotFound, LastAdmin) as exc:
            reason = "no such user" if isinstance(exc, UserNotFound) else "the last enabled admin"
            await AuditLog(self.db).append(actor.entry(action, "rejected", target={"user": username},
                                                       requested=requested, detail=reason))
            raise
        return result
