"""Alerts through the real app: readings raise and clear alerts, operators acknowledge them, admins
manage rules; history is kept and every change is audited."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.alerts.rules import AlertRuleConfig
from gateway.alerts.service import AlertsConfig, AlertService
from gateway.alerts.store import AlertRecord, AlertStore
from gateway.common.status import BAD_NO_COMMUNICATION, GOOD
from gateway.readings import Reading, TagValue
from gateway.storage.audit import AuditLog
from gateway.storage.db import Database
from tests.edge_support import Edge

pytest_plugins = ["tests.fixtures.edge"]

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
HOT = {"id": "motor-hot", "type": "high", "tag": "motor_temp", "threshold": 90, "hysteresis": 5,
       "severity": "critical", "assets": ["conveyor-01"]}


def reading(t: float, value: TagValue | None, tag: str = "motor_temp", quality: int = GOOD,
            asset: str = "conveyor-01") -> Reading:
    ts = T0 + timedelta(seconds=t)
    return Reading("plc-1", asset, tag, value, quality, ts, ts)


async def test_rule_crud_is_admin_only_and_validated(edge: Edge) -> None:
    admin = edge.auth("admin")
    created = await edge.client.put("/api/v1/alert-rules/motor-hot", json=HOT, headers=admin)
    assert created.status_code == 201, created.text
    assert created.json()["origin"] == "api"
    path = "/api/v1/alert-rules/motor-hot"
    replaced = await edge.client.put(path, json={**HOT, "threshold": 95}, headers=admin)
    assert replaced.status_code == 200
    forbidden = await edge.client.put(path, json=HOT, headers=edge.auth("operator"))
    assert forbidden.status_code == 403
    for rule_id, body, fragment in [
        ("motor-hot", {**HOT, "id": "other"}, "differs from the path"),
        ("bad", {"id": "bad", "type": "high", "tag": "t"}, "needs threshold"),
        ("ghost", {**HOT, "id": "ghost", "assets": ["nope-01"]}, "unknown asset"),
        ("x", {"id": "x", "type": "offline", "owner": "me"}, "the request is invalid"),
    ]:
        response = await edge.client.put(f"/api/v1/alert-rules/{rule_id}", json=body, headers=admin)
        assert response.status_code == 422, body
        assert fragment in response.text
    listed = await edge.client.get("/api/v1/alert-rules")  # anonymous read
    assert [(r["rule"]["id"], r["rule"]["threshold"]) for r in listed.json()] == [("motor-hot", 95)]
    assert (await edge.client.delete("/api/v1/alert-rules/motor-hot", headers=admin)).status_code == 204
    assert (await edge.client.delete("/api/v1/alert-rules/motor-hot", headers=admin)).status_code == 404
    assert (await edge.client.get("/api/v1/alert-rules/motor-hot")).status_code == 404
    actions = [e.action for e in await edge.services.audit.entries(action_prefix="alert_rule.")]
    assert actions == ["alert_rule.delete", "alert_rule.put", "alert_rule.put"]


async def test_alert_life_active_acknowledged_cleared(edge: Edge) -> None:
    await edge.client.put("/api/v1/alert-rules/motor-hot", json=HOT, headers=edge.auth("admin"))
    alerts = edge.services.alerts
    seen: list[str] = []
    alerts.subscribe(lambda record: seen.append(record.state))

    await alerts.process([reading(0, 80)])
    [raised] = await alerts.process([reading(1, 97.5)])
    assert await alerts.process([reading(2, 99)]) == []  # one alert per rule and asset
    open_alerts = (await edge.client.get("/api/v1/alerts")).json()
    assert [(a["rule_id"], a["asset"], a["state"], a["severity"], a["value"]) for a in open_alerts] == [
        ("motor-hot", "conveyor-01", "active", "critical", 97.5)]

    path = f"/api/v1/alerts/{raised.id}/ack"
    viewer = await edge.client.post(path, json={"comment": "x"}, headers=edge.auth("viewer"))
    assert viewer.status_code == 403
    assert (await edge.client.post(path, json={"comment": "x"})).status_code == 401
    acked = await edge.client.post(path, json={"comment": "fan checked"}, headers=edge.auth("operator"))
    assert acked.status_code == 200
    assert (acked.json()["state"], acked.json()["acked_by"], acked.json()["ack_comment"]) == (
        "acknowledged", "operator", "fan checked")
    again = await edge.client.post(path, json={}, headers=edge.auth("operator"))
    assert again.status_code == 409
    assert "only active ones" in again.json()["detail"]

    assert await alerts.process([reading(3, 86)]) == []  # inside the hysteresis band
    [cleared] = await alerts.process([reading(4, 84)])
    assert cleared.state == "cleared"
    assert (await edge.client.get("/api/v1/alerts")).json() == []
    history = (await edge.client.get("/api/v1/alerts", params={"state": "all"})).json()
    assert [a["state"] for a in history] == ["cleared"]
    detail = (await edge.client.get(f"/api/v1/alerts/{raised.id}")).json()
    assert [(h["state"], h["actor"]) for h in detail["history"]] == [
        ("active", None), ("acknowledged", "operator"), ("cleared", None)]
    assert seen == ["active", "acknowledged", "cleared"]
    [ack_entry] = await edge.services.audit.entries(action_prefix="alert.")
    assert (ack_entry.actor, ack_entry.target["alert"]) == ("operator", raised.id)
    assert ack_entry.detail == "fan checked"


async def test_unknown_alert_and_bad_inputs(edge: Edge) -> None:
    operator = edge.auth("operator")
    assert (await edge.client.post("/api/v1/alerts/12345/ack", json={}, headers=operator)).status_code == 404
    assert (await edge.client.get("/api/v1/alerts/12345")).status_code == 404
    assert (await edge.client.get("/api/v1/alerts", params={"state": "weird"})).status_code == 422
    assert (await edge.client.get("/api/v1/alerts", params={"limit": 100000})).status_code == 422
    response = await edge.client.post("/api/v1/alerts/1/ack", json={"comment": "x" * 2000}, headers=operator)
    assert response.status_code == 422


async def test_config_rules_are_read_only_and_offline_alerts(database: Database) -> None:
    offline = AlertRuleConfig(id="plc-offline", type="offline", severity="critical")
    service = AlertService(AlertStore(database), AuditLog(database), AlertsConfig(rules=(offline,)))
    await service.start()
    assert service.rules()[0][1] == "config"
    from gateway.alerts.service import RuleReadOnly
    from gateway.storage.audit import SYSTEM

    with pytest.raises(RuleReadOnly):
        await service.delete_rule("plc-offline", SYSTEM)
    batch = [reading(0, None, tag, BAD_NO_COMMUNICATION) for tag in ("motor_temp", "speed")]
    [raised] = await service.process(batch)
    assert (raised.rule_id, raised.asset, raised.state) == ("plc-offline", "conveyor-01", "active")
    [cleared] = await service.process([reading(5, 20.0)])
    assert cleared.state == "cleared"


async def test_open_alerts_survive_a_restart_and_orphans_are_cleared(database: Database) -> None:
    rule = AlertRuleConfig.model_validate(HOT)
    first = AlertService(AlertStore(database), AuditLog(database), AlertsConfig(rules=(rule,)))
    await first.start()
    [raised] = await first.process([reading(0, 99)])

    # restart with the same rule: the engine knows the alert is open and clears it when normal
    second = AlertService(AlertStore(database), AuditLog(database), AlertsConfig(rules=(rule,)))
    await second.start()
    assert await second.process([reading(1, 99)]) == []
    [cleared] = await second.process([reading(2, 50)])
    assert cleared.id == raised.id

    # restart after the rule was removed from gateway.yaml: its open alert is cleared at start
    await second.process([reading(3, 99)])
    notified: list[AlertRecord] = []
    third = AlertService(AlertStore(database), AuditLog(database), AlertsConfig())
    third.subscribe(notified.append)
    await third.start()
    assert [r.state for r in notified] == ["cleared"]
    assert await third.store.list_alerts(open_only=True) == []
