"""docker-compose.yml cannot run here (no Docker engine), so its structure is checked instead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gateway.config import GATEWAY_ENV_OVERRIDES

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_services_and_commands() -> None:
    services = _compose()["services"]
    assert set(services) == {"mosquitto", "influxdb", "plant", "gateway"}
    assert services["plant"]["command"][0] == "plant"
    assert services["gateway"]["command"][0] == "gateway"
    assert (ROOT / services["plant"]["command"][2]).is_file()
    assert (ROOT / services["gateway"]["command"][2]).is_file()
    assert (ROOT / "Dockerfile").is_file()


def test_gateway_environment_uses_known_overrides_and_reaches_services() -> None:
    services = _compose()["services"]
    known = {override.variable for override in GATEWAY_ENV_OVERRIDES}
    env = services["gateway"]["environment"]
    assert set(env) <= known
    assert env["TWINEDGE_MQTT_URL"].startswith("mqtt://mosquitto:")
    assert env["TWINEDGE_INFLUX_URL"].startswith("http://influxdb:")
    assert env["TWINEDGE_INFLUX_TOKEN"] == services["influxdb"]["environment"]["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"]
    assert env["TWINEDGE_INFLUX_BUCKET"] == services["influxdb"]["environment"]["DOCKER_INFLUXDB_INIT_BUCKET"]


def test_plant_ports_match_default_config() -> None:
    plant = yaml.safe_load((ROOT / "config" / "plant.yaml").read_text(encoding="utf-8"))
    ports = {f"{p}:{p}" for site in plant["sites"] for area in site["areas"] for plc in area["plcs"]
             for p in (plc["opcua"]["port"], plc["modbus"]["port"])}
    assert ports <= set(_compose()["services"]["plant"]["ports"])
    gateway_ports = _compose()["services"]["gateway"]["ports"]
    assert "8080:8080" in gateway_ports
