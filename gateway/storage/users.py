"""API users: username, password hash (never the password), role, disabled flag."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, func, insert, select
from sqlalchemy.exc import IntegrityError

from gateway.storage.db import Database
from gateway.storage.tables import users


class UserExists(Exception):
    pass


@dataclass(frozen=True)
class UserRecord:
    id: int
    username: str
    password_hash: str
    role: str
    disabled: bool
    created_at: datetime


class UserStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def count(self) -> int:
        stmt = select(func.count()).select_from(users)
        return await self.db.run(lambda conn: int(conn.execute(stmt).scalar_one()))

    async def get(self, username: str) -> UserRecord | None:
        def query(conn: Connection) -> UserRecord | None:
            row = conn.execute(select(users).where(users.c.username == username)).one_or_none()
            return UserRecord(**row._mapping) if row is not None else None

        return await self.db.run(query)

    async def all(self) -> list[UserRecord]:
        def query(conn: Connection) -> list[UserRecord]:
            rows = conn.execute(select(users).order_by(users.c.username))
            return [UserRecord(**row._mapping) for row in rows]

        return await self.db.run(query)

    async def create(
        self, username: str, password_hash: str, role: str, *, only_if_empty: bool = False
    ) -> UserRecord | None:
        """Insert a user; UserExists on a taken name. ``only_if_empty`` makes the first-admin bootstrap
        safe when two gateway processes share one database: only the first one creates it."""

        def work(conn: Connection) -> UserRecord | None:
            if only_if_empty and conn.execute(select(func.count()).select_from(users)).scalar_one():
                return None
            now = datetime.now(UTC)
            try:
                with conn.begin_nested():
                    new_id = conn.execute(
                        insert(users).values(username=username, password_hash=password_hash, role=role,
                                             disabled=False, created_at=now)
                    ).inserted_primary_key
            except IntegrityError:
                raise UserExists(username) from None
            assert new_id is not None
            return UserRecord(int(new_id[0]), username, password_hash, role, False, now)

        return await self.db.run(work)
