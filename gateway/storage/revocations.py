"""Token revocation in the edge database: logged-out tokens by ``jti``, and the users' token stamps.

A token is good while its user exists, is enabled and still has the stamp the token carries, and
its ``jti`` is not in ``revoked_tokens``. Both facts come from one statement that probes two unique
indexes (users.username, revoked_tokens.jti). Revoked rows are only needed until their token expires;
each logout prunes the expired ones through the index on ``expires_at``.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import Connection, and_, delete, insert, select
from sqlalchemy.exc import IntegrityError

from gateway.storage.audit import Actor, AuditLog
from gateway.storage.db import Database
from gateway.storage.tables import revoked_tokens, users


class Token(NamedTuple):
    """An issued token as revocation sees it: its user, its ``jti``, the user's token stamp at issue."""

    username: str
    jti: str
    stamp: str


class TokenRevocations:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def revoke(self, jti: str, username: str, expires_at: datetime, actor: Actor, now: datetime) -> None:
        """Revoke one token (idempotent), prune expired revocations, audit ``auth.logout``."""

        def work(conn: Connection) -> None:
            conn.execute(delete(revoked_tokens).where(revoked_tokens.c.expires_at <= now))
            try:
                with conn.begin_nested():
                    conn.execute(insert(revoked_tokens).values(jti=jti, username=username, expires_at=expires_at))
            except IntegrityError:
                pass  # already revoked: a repeated logout changes nothing
            AuditLog.append_sync(conn, actor.entry("auth.logout", "ok", target={"user": username},
                                                   correlation_id=jti, ts=now))

        await self.db.run(work)

    async def is_valid(self, username: str, jti: str, stamp: str) -> bool:
        """True when the token of ``username`` with ``jti`` and ``stamp`` has not been revoked."""
        stmt = (
            select(users.c.token_stamp, users.c.disabled, revoked_tokens.c.jti)
            .select_from(users.outerjoin(revoked_tokens, revoked_tokens.c.jti == jti))
            .where(users.c.username == username)
        )

        def query(conn: Connection) -> bool:
            row = conn.execute(stmt).one_or_none()
            return row is not None and not row.disabled and row.token_stamp == stamp and row.jti is None

        return await self.db.run(query)

    async def good_tokens(self, tokens: Collection[Token]) -> set[Token]:
        """``is_valid`` for many tokens in one statement (the open streams' periodic re-check): each
        user's row (stamp, disabled) with those of the given ``jti`` it logged out."""
        jtis = {t.jti for t in tokens}
        stmt = (
            select(users.c.username, users.c.token_stamp, users.c.disabled, revoked_tokens.c.jti)
            .select_from(users.outerjoin(revoked_tokens, and_(revoked_tokens.c.username == users.c.username,
                                                              revoked_tokens.c.jti.in_(jtis))))
            .where(users.c.username.in_({t.username for t in tokens}))
        )

        def query(conn: Connection) -> set[Token]:
            stamps: dict[str, str] = {}
            revoked: set[str] = set()
            for row in conn.execute(stmt):
                if not row.disabled:
                    stamps[row.username] = row.token_stamp
                if row.jti is not None:
                    revoked.add(row.jti)
            return {t for t in tokens if stamps.get(t.username) == t.stamp and t.jti not in revoked}

        return await self.db.run(query)
