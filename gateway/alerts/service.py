"""The alert service: runs the rule engine over the pipeline's batches and owns the lifecycle.

The runtime calls :meth:`AlertService.process` with every batch (after LatestValues is updated) and
periodically with an empty batch, so ``stale`` rules fire when data stops coming. Listeners receive
every stored transition (raise, acknowledge, clear) for the WebSocket alert stream and MQTT; they
are called synchronously and must only enqueue (a slow consumer must not stall the pipeline).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime

from sqlalchemy import Connection

from gateway.alerts.rules import AlertEngine, AlertEvent, AlertRuleConfig
from gateway.alerts.store import AlertRecord, AlertStore
from gateway.common.configfile import StrictModel
from gateway.readings import Reading
from gateway.storage.audit import Actor, AuditLog

log = logging.getLogger(__name__)

Listener = Callable[[AlertRecord], None]


class AlertsConfig(StrictModel):
    """``alerts:`` in gateway.yaml. Rules listed here are read-only through the API."""

    rules: tuple[AlertRuleConfig, ...] = ()


class RuleReadOnly(Exception):
    """The rule comes from gateway.yaml; change it there."""


class RuleNotFound(Exception):
    pass


def _utcnow() -> datetime:
    return datetime.now(UTC)


class AlertService:
    def __init__(
        self, store: AlertStore, audit: AuditLog, config: AlertsConfig | None = None,
        *, clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.store = store
        self.audit = audit
        self.config = config or AlertsConfig()
        self.clock = clock
        self.engine = AlertEngine()
        self._origins: dict[str, str] = {}
        self._all_rules: dict[str, AlertRuleConfig] = {}  # disabled ones too, for the API
        self._listeners: list[Listener] = []

    async def start(self) -> None:
        """Sync config rules into storage, load every rule, and pick up alerts still open."""
        await self.store.replace_config_rules(list(self.config.rules), self.clock())
        for rule, origin in await self.store.rules():
            self._all_rules[rule.id] = rule
            self._origins[rule.id] = origin
        self.engine.set_rules(self._all_rules.values())
        open_keys = await self.store.open_keys()
        watched = {rule.id for rule in self.engine.rules}
        self.engine.restore(open_keys)
        # An alert whose rule was removed or disabled while the gateway was down would stay open
        # forever: nobody evaluates it any more.
        await self._clear_orphans([key for key in open_keys if key[0] not in watched])

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _notify(self, records: Iterable[AlertRecord]) -> None:
        for record in records:
            for listener in list(self._listeners):
                try:
                    listener(record)
                except Exception:  # one broken listener must not stop alerts for the others
                    log.exception("alert listener failed")

    async def process(self, readings: Sequence[Reading], now: datetime | None = None) -> list[AlertRecord]:
        events = self.engine.evaluate(readings, now or self.clock())
        records = await self.store.apply(events)
        self._notify(records)
        return records

    async def acknowledge(self, alert_id: int, actor: Actor, comment: str | None) -> AlertRecord:
        now = self.clock()

        def work(conn: Connection) -> AlertRecord:
            record = self.store.acknowledge_sync(conn, alert_id, actor.sub, comment, now)
            AuditLog.append_sync(conn, actor.entry(
                "alert.ack", "ok", ts=now, detail=comment,
                target={"alert": alert_id, "rule": record.rule_id, "asset": record.asset},
            ))
            return record

        record = await self.store.db.run(work)
        self._notify([record])
        return record

    # -- rules ----------------------------------------------------------------------------------

    def rules(self) -> list[tuple[AlertRuleConfig, str]]:
        ordered = sorted(self._all_rules.values(), key=lambda r: r.id)
        return [(rule, self._origins[rule.id]) for rule in ordered]

    def rule(self, rule_id: str) -> tuple[AlertRuleConfig, str]:
        if rule_id not in self._all_rules:
            raise RuleNotFound(rule_id)
        return self._all_rules[rule_id], self._origins[rule_id]

    async def put_rule(self, rule: AlertRuleConfig, actor: Actor) -> bool:
        """Create or replace an API rule; True when created. Config rules raise RuleReadOnly."""
        if self._origins.get(rule.id) == "config":
            raise RuleReadOnly(rule.id)
        now = self.clock()

        def work(conn: Connection) -> bool:
            created = self.store.put_rule_sync(conn, rule, "api", now)
            AuditLog.append_sync(conn, actor.entry(
                "alert_rule.put", "created" if created else "updated", target={"rule": rule.id},
                requested=rule.model_dump(mode="json"), ts=now,
            ))
            return created

        created = await self.store.db.run(work)
        self._all_rules[rule.id], self._origins[rule.id] = rule, "api"
        await self._reload()
        return created

    async def delete_rule(self, rule_id: str, actor: Actor) -> None:
        origin = self._origins.get(rule_id)
        if origin is None:
            raise RuleNotFound(rule_id)
        if origin == "config":
            raise RuleReadOnly(rule_id)

        def work(conn: Connection) -> None:
            self.store.delete_rule_sync(conn, rule_id)
            AuditLog.append_sync(conn, actor.entry("alert_rule.delete", "ok", target={"rule": rule_id},
                                                   ts=self.clock()))

        await self.store.db.run(work)
        del self._all_rules[rule_id], self._origins[rule_id]
        await self._reload()

    async def _reload(self) -> None:
        orphaned = self.engine.set_rules(self._all_rules.values())
        await self._clear_orphans(orphaned)

    async def _clear_orphans(self, keys: list[tuple[str, str]]) -> None:
        now = self.clock()
        events = [AlertEvent("cleared", rule_id, asset, None, "info", None, "rule changed or removed", now)
                  for rule_id, asset in keys]
        self._notify(await self.store.apply(events))
