"""Bad config gets one clear line per problem naming file, key path and value, and exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from devices.config import load_plant_config
from gateway.common.configfile import ConfigError
from gateway.config import load_gateway_config

ROOT = Path(__file__).resolve().parent.parent

GOOD_PLANT = """
sites:
  - id: s1
    areas:
      - id: a1
        plcs:
          - id: p1
            opcua: {port: 4840}
            modbus: {port: 5020}
            assets:
              - {type: conveyor, id: c}
"""


def _write(tmp_path: Path, text: str, name: str = "plant.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_default_configs_are_valid() -> None:
    plant = load_plant_config(ROOT / "config" / "plant.yaml")
    assert plant.sites
    gateway = load_gateway_config(ROOT / "config" / "gateway.yaml")
    assert gateway.sources


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("port: 5020", "port: 70000"), "sites[0].areas[0].plcs[0].modbus.port = 70000: Input should be less"),
        (("{type: conveyor, id: c}", "{type: conveyer, id: c}"),
         "sites[0].areas[0].plcs[0].assets[0].type = 'conveyer': unknown asset type"),
        (("opcua: {port: 4840}", "opcua: {port: 4840, colour: red}"),
         "sites[0].areas[0].plcs[0].opcua.colour = 'red': unknown key"),
        (("port: 5020", "port: 4840"), "sites[0].areas[0].plcs[0].modbus.port = 4840: port already used by p1 opcua"),
        (("id: p1", "id: P 1"), "sites[0].areas[0].plcs[0].id = 'P 1': String should match pattern"),
    ],
)
def test_plant_errors_name_file_key_and_value(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    path = _write(tmp_path, GOOD_PLANT.replace(*change))
    with pytest.raises(ConfigError) as caught:
        load_plant_config(path)
    assert len(caught.value.lines) == 1
    assert caught.value.lines[0] == f"{path}: {expected}" or caught.value.lines[0].startswith(f"{path}: {expected}")


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "sites: [\n  - id: x\n")
    with pytest.raises(ConfigError) as caught:
        load_plant_config(path)
    assert caught.value.lines[0].startswith(f"{path}:")
    assert "YAML syntax error" in caught.value.lines[0]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_plant_config(tmp_path / "absent.yaml")


def test_environment_override_applies_and_is_named_on_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, "api: {port: 8080}\n", "gateway.yaml")
    monkeypatch.setenv("TWINEDGE_API_PORT", "9191")
    monkeypatch.setenv("TWINEDGE_MQTT_URL", "mqtt://broker.example:1884")
    config = load_gateway_config(path)
    assert config.api.port == 9191
    assert config.sinks.mqtt.url == "mqtt://broker.example:1884"
    monkeypatch.setenv("TWINEDGE_API_PORT", "not-a-port")
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(path)
    assert caught.value.lines == [
        f"environment TWINEDGE_API_PORT ({path}: api.port) = 'not-a-port': "
        "Input should be a valid integer, unable to parse string as an integer"
    ]


@pytest.mark.parametrize("command", [["plant"], ["registers"], ["gateway"], ["up"]])
def test_cli_exits_2_with_one_line_and_no_traceback(tmp_path: Path, command: list[str]) -> None:
    bad = _write(tmp_path, "sites: 7\nsinks: {mqtt: {qos: 5}}\n", "bad.yaml")
    flag = {"up": "--plant-config", "gateway": "--config"}.get(command[0], "--config")
    argv = [*command, flag, str(bad)]
    if command == ["up"]:
        argv += ["--gateway-config", str(_write(tmp_path, "api: {port: 0}\n", "gw.yaml"))]
    result = subprocess.run([sys.executable, "-m", "gateway.cli", *argv], capture_output=True, text=True,
                            cwd=ROOT, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines, "an error line is expected"
    assert all(line.startswith(str(bad)) or "environment" in line or "gw.yaml" in line for line in lines), lines


def test_outbox_store_is_sqlite_or_log(tmp_path: Path) -> None:
    assert load_gateway_config(_write(tmp_path, "api: {port: 8080}\n", "gateway.yaml")).gateway.outbox == "sqlite"
    chosen = load_gateway_config(_write(tmp_path, "gateway: {outbox: log}\n", "gateway.yaml"))
    assert chosen.gateway.outbox == "log"
    path = _write(tmp_path, "gateway: {outbox: lmdb}\n", "gateway.yaml")
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(path)
    (line,) = caught.value.lines
    assert str(path) in line
    assert "gateway.outbox = 'lmdb'" in line
