"""Alerts, their transition history and API-defined rules, in the edge database.

Lifecycle: ``active`` -> ``acknowledged`` (who, when, comment) -> ``cleared``; an active alert may
also clear unacknowledged. Every transition adds an ``alert_history`` row, nothing is deleted, so the
history of an alert is complete. At most one open (not cleared) alert per (rule, asset) is enforced
by a partial unique index as well as by the engine.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field
from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from gateway.alerts.rules import AlertEvent, AlertRuleConfig
from gateway.storage.db import Database
from gateway.storage.tables import alert_history, alert_rules, alerts, page

AlertState = Literal["active", "acknowledged", "cleared"]
OPEN_STATES = ("active", "acknowledged")


class AlertNotFound(Exception):
    pass


class AlertConflict(Exception):
    """The transition is not allowed from the alert's current state."""


@dataclass(frozen=True)
class AlertRecord:
    """An alert as stored, and as the API shows it."""

    id: int
    rule_id: str
    asset: str
    tag: str | None
    severity: Annotated[str, Field(examples=["warning"])]
    state: AlertState
    message: str
    value: Any
    raised_at: datetime
    acked_by: str | None
    acked_at: datetime | None
    ack_comment: str | None
    cleared_at: datetime | None


@dataclass(frozen=True)
class AlertTransition:
    ts: datetime
    state: str
    actor: str | None
    comment: str | None
    value: Any


class AlertStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- alerts ---------------------------------------------------------------------------------

    @staticmethod
    def _get(conn: Connection, alert_id: int) -> AlertRecord:
        row = conn.execute(select(alerts).where(alerts.c.id == alert_id)).one_or_none()
        if row is None:
            raise AlertNotFound(alert_id)
        return AlertRecord(**row._mapping)

    @staticmethod
    def _history(conn: Connection, alert_id: int, ts: datetime, state: str, actor: str | None = None,
                 comment: str | None = None, value: Any = None) -> None:
        conn.execute(insert(alert_history).values(alert_id=alert_id, ts=ts, state=state, actor=actor,
                                                  comment=comment, value=value))

    def apply_sync(self, conn: Connection, event: AlertEvent) -> AlertRecord | None:
        """Persist one engine transition; None when it changes nothing (already open / not open)."""
        if event.kind == "raised":
            try:
                with conn.begin_nested():
                    new_id = conn.execute(insert(alerts).values(
                        rule_id=event.rule_id, asset=event.asset, tag=event.tag, severity=event.severity,
                        state="active", message=event.message, value=event.value, raised_at=event.ts,
                    )).inserted_primary_key
            except IntegrityError:
                return None  # an alert of this rule and asset is already open
            assert new_id is not None
            self._history(conn, int(new_id[0]), event.ts, "active", value=event.value)
            return self._get(conn, int(new_id[0]))
        alert_id = conn.execute(
            select(alerts.c.id).where(alerts.c.rule_id == event.rule_id, alerts.c.asset == event.asset,
                                      alerts.c.state.in_(OPEN_STATES))
        ).scalar_one_or_none()
        if alert_id is None:
            return None
        conn.execute(update(alerts).where(alerts.c.id == alert_id)
                     .values(state="cleared", cleared_at=event.ts))
        self._history(conn, alert_id, event.ts, "cleared", value=event.value)
        return self._get(conn, alert_id)

    async def apply(self, events: list[AlertEvent]) -> list[AlertRecord]:
        def work(conn: Connection) -> list[AlertRecord]:
            return [record for event in events if (record := self.apply_sync(conn, event)) is not None]

        return await self.db.run(work) if events else []

    def acknowledge_sync(
        self, conn: Connection, alert_id: int, actor: str, comment: str | None, now: datetime
    ) -> AlertRecord:
        current = self._get(conn, alert_id)
        if current.state != "active":
            raise AlertConflict(f"alert {alert_id} is {current.state}; only active ones can be acknowledged")
        # The WHERE on state makes a concurrent acknowledge or clear lose cleanly instead of overwriting.
        done = conn.execute(
            update(alerts).where(alerts.c.id == alert_id, alerts.c.state == "active")
            .values(state="acknowledged", acked_by=actor, acked_at=now, ack_comment=comment)
        ).rowcount
        if done != 1:
            raise AlertConflict(f"alert {alert_id} changed state meanwhile")
        self._history(conn, alert_id, now, "acknowledged", actor=actor, comment=comment)
        return self._get(conn, alert_id)

    async def get(self, alert_id: int) -> tuple[AlertRecord, list[AlertTransition]]:
        def work(conn: Connection) -> tuple[AlertRecord, list[AlertTransition]]:
            record = self._get(conn, alert_id)
            rows = conn.execute(select(alert_history).where(alert_history.c.alert_id == alert_id)
                                .order_by(alert_history.c.id))
            return record, [AlertTransition(r.ts, r.state, r.actor, r.comment, r.value) for r in rows]

        return await self.db.run(work)

    async def list_alerts(self, *, open_only: bool, asset: str | None = None, limit: int = 100,
                   before_id: int | None = None, assets: Collection[str] | None = None) -> list[AlertRecord]:
        """Newest first; ``open_only`` gives active and acknowledged alerts, else every state; ``assets``
        limits them to the caller's scope (None: every asset)."""
        stmt = page(alerts, limit=limit, before_id=before_id, states=OPEN_STATES if open_only else (), asset=asset,
                    assets=assets)
        return await self.db.run(lambda conn: [AlertRecord(**row._mapping) for row in conn.execute(stmt)])

    async def open_keys(self) -> list[tuple[str, str]]:
        stmt = select(alerts.c.rule_id, alerts.c.asset).where(alerts.c.state.in_(OPEN_STATES))
        return await self.db.run(lambda conn: [(r.rule_id, r.asset) for r in conn.execute(stmt)])

    # -- rules ----------------------------------------------------------------------------------

    async def rules(self) -> list[tuple[AlertRuleConfig, str]]:
        """Every stored rule with its origin ("config" or "api")."""
        stmt = select(alert_rules).order_by(alert_rules.c.id)
        rows = await self.db.run(lambda conn: list(conn.execute(stmt)))
        return [(AlertRuleConfig.model_validate(row.definition), row.origin) for row in rows]

    @staticmethod
    def put_rule_sync(conn: Connection, rule: AlertRuleConfig, origin: str, now: datetime) -> bool:
        """Insert or replace; True when it was new."""
        definition = rule.model_dump(mode="json")
        done = conn.execute(update(alert_rules).where(alert_rules.c.id == rule.id)
                            .values(definition=definition, origin=origin, updated_at=now)).rowcount
        if done == 0:
            conn.execute(insert(alert_rules).values(id=rule.id, definition=definition, origin=origin,
                                                    updated_at=now))
        return done == 0

    @staticmethod
    def delete_rule_sync(conn: Connection, rule_id: str) -> bool:
        return bool(conn.execute(delete(alert_rules).where(alert_rules.c.id == rule_id)).rowcount)

    async def replace_config_rules(self, rules: list[AlertRuleConfig], now: datetime) -> None:
        """gateway.yaml is the truth for config rules: drop those no longer listed, upsert the rest."""

        def work(conn: Connection) -> None:
            keep = [rule.id for rule in rules]
            conn.execute(delete(alert_rules).where(alert_rules.c.origin == "config",
                                                   alert_rules.c.id.not_in(keep)))
            for rule in rules:
                self.put_rule_sync(conn, rule, "config", now)

        await self.db.run(work)
