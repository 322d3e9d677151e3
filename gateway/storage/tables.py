"""Table definitions (SQLAlchemy Core): one metadata shared by every store.

Declared without a schema so one definition serves SQLite and PostgreSQL (and a per-test schema
through PostgreSQL's ``search_path``). The schema of a database is made by the Alembic revisions in
``migrations/versions``; a test checks that they and these tables agree. Timestamps are stored as UTC
and always read back timezone-aware: SQLite keeps no offset, and naive datetimes compared with aware
ones raise at the worst moment.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    Text,
    TypeDecorator,
    select,
    text,
)


class UtcDateTime(TypeDecorator[datetime]):
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: storage takes timezone-aware UTC timestamps only")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=False),
    Column("role", String(16), nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", UtcDateTime, nullable=False),
    # The sites whose assets the user may see (OWASP API1); empty: every site.
    Column("sites", JSON, nullable=False, server_default=text("'[]'")),
    # Changes on every security-relevant change of the user (password, role, sites, disabled) and is
    # copied into each token: a token carrying an older stamp is revoked. Random rather than a counter,
    # so a user deleted and created again under the same name does not revive the old tokens.
    Column("token_stamp", String(32), nullable=False, server_default=""),
)

revoked_tokens = Table(
    "revoked_tokens",
    metadata,
    # Tokens logged out before they expired; a row is useless once its token has expired and is pruned.
    Column("jti", String(64), primary_key=True),
    Column("username", String(64), nullable=False),
    Column("expires_at", UtcDateTime, nullable=False, index=True),
)

alert_rules = Table(
    "alert_rules",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("definition", JSON, nullable=False),  # AlertRuleConfig.model_dump(mode="json")
    Column("origin", String(8), nullable=False),  # "config" (gateway.yaml, read-only) or "api"
    Column("updated_at", UtcDateTime, nullable=False),
)

alerts = Table(
    "alerts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("rule_id", String(64), nullable=False),  # no FK: history outlives a deleted rule
    Column("asset", String(128), nullable=False),
    Column("tag", String(128), nullable=True),
    Column("severity", String(16), nullable=False),
    Column("state", String(16), nullable=False),  # active | acknowledged | cleared
    Column("message", Text, nullable=False),
    Column("value", JSON, nullable=True),
    Column("raised_at", UtcDateTime, nullable=False),
    Column("acked_by", String(64), nullable=True),
    Column("acked_at", UtcDateTime, nullable=True),
    Column("ack_comment", Text, nullable=True),
    Column("cleared_at", UtcDateTime, nullable=True),
    # "One active alert per rule and asset", enforced by the database too: a partial unique index
    # over open (not cleared) alerts, which both SQLite and PostgreSQL support.
    Index(
        "uq_alerts_open",
        "rule_id",
        "asset",
        unique=True,
        sqlite_where=text("state != 'cleared'"),
        postgresql_where=text("state != 'cleared'"),
    ),
    Index("ix_alerts_state", "state"),
)

alert_history = Table(
    "alert_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("alert_id", Integer, ForeignKey("alerts.id"), nullable=False, index=True),
    Column("ts", UtcDateTime, nullable=False),
    Column("state", String(16), nullable=False),  # the state entered
    Column("actor", String(64), nullable=True),  # None when the rule engine made the transition
    Column("comment", Text, nullable=True),
    Column("value", JSON, nullable=True),
)

commands = Table(
    "commands",
    metadata,
    # Integer ids grow with submission order, which is the per-asset execution order.
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("asset", String(128), nullable=False),
    Column("command", String(64), nullable=False),
    Column("tag", String(128), nullable=True),
    Column("value", JSON, nullable=True),
    Column("args", JSON, nullable=False),
    Column("state", String(16), nullable=False),
    Column("reason", Text, nullable=True),
    Column("created_by", String(64), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("idempotency_key", String(255), nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("started_at", UtcDateTime, nullable=True),
    Column("finished_at", UtcDateTime, nullable=True),
    Index("ix_commands_state", "state", "id"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    # Scoped per caller, so two clients picking the same key never see each other's commands.
    Column("actor", String(64), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("command_id", Integer, ForeignKey("commands.id"), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", UtcDateTime, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("roles", JSON, nullable=False),
    Column("ip", String(64), nullable=True),
    Column("action", String(64), nullable=False),
    Column("target", JSON, nullable=False),
    Column("requested", JSON, nullable=True),
    Column("result", String(32), nullable=False),
    Column("detail", Text, nullable=True),
    Column("correlation_id", String(255), nullable=True),
    Column("channel", String(16), nullable=False),
    # Tamper evidence: hash = SHA-256 over (prev_hash, the row's fields); see storage/chain.py.
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

audit_chain_head = Table(
    "audit_chain_head",
    metadata,
    # One row (id 1): the hash of the newest audit row. Appends lock it (SELECT ... FOR UPDATE), so
    # concurrent writers, in one process or several sharing PostgreSQL, extend the chain one at a time,
    # and removing rows from the end of the log is detected.
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("last_id", Integer, nullable=True),
    Column("hash", String(64), nullable=False),
)


def page(
    table: Table, *, limit: int, before_id: int | None = None, states: Sequence[str] = (),
    asset: str | None = None, assets: Collection[str] | None = None, oldest_first: bool = False,
) -> Select[Any]:
    """One page of ``table`` by id, newest first unless ``oldest_first``; ``before_id`` is the smallest
    id of the previous page, ``states``, ``asset`` and ``assets`` (the caller's scope; None: all) filter
    tables with those columns."""
    stmt = select(table).order_by(table.c.id if oldest_first else table.c.id.desc()).limit(limit)
    if states:
        stmt = stmt.where(table.c.state.in_(states))
    if asset is not None:
        stmt = stmt.where(table.c.asset == asset)
    if assets is not None:
        stmt = stmt.where(table.c.asset.in_(sorted(assets)))
    if before_id is not None:
        stmt = stmt.where(table.c.id < before_id)
    return stmt
