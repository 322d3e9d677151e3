"""The `twinedge` command.

`twinedge up` runs the plant and the gateway as two OS processes (a PLC can crash or restart without
the gateway, and the two halves get a core each). `twinedge plant` and `twinedge registers` belong to
the plant half and run `python -m devices`, so this package never imports `devices`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from gateway.common.configfile import ConfigError
from gateway.supervisor import Supervisor

PLANT_COMMANDS = ("plant", "registers")
DEFAULT_PLANT_CONFIG = Path("config/plant.yaml")
DEFAULT_GATEWAY_CONFIG = Path("config/gateway.yaml")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twinedge",
        description="TwinEdge: simulated PLCs over OPC UA and Modbus TCP, a gateway that republishes "
        "them to MQTT and InfluxDB, and an edge API.",
        epilog="Run 'twinedge <command> --help' for a command's options.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    up = commands.add_parser(
        "up",
        help="run the plant and the gateway with its API (two processes)",
        description="Start the simulated plant, wait until its PLCs serve, then start the gateway and its "
        "API; print every endpoint. Ctrl-C or SIGTERM stops both cleanly.",
    )
    up.add_argument("--plant-config", type=Path, default=DEFAULT_PLANT_CONFIG, help="default: %(default)s")
    up.add_argument("--gateway-config", type=Path, default=DEFAULT_GATEWAY_CONFIG, help="default: %(default)s")
    up.add_argument("--speed", type=float, help="virtual clock speed factor for the plant")
    up.add_argument("--log-level", default="WARNING", help="logging level of both processes (default: %(default)s)")
    gateway = commands.add_parser(
        "gateway",
        help="run the gateway and its API alone (against any OPC UA / Modbus PLCs)",
        description="Poll the sources of the gateway config, publish to its sinks and serve the edge API "
        "until Ctrl-C or SIGTERM.",
    )
    gateway.add_argument("--config", type=Path, default=DEFAULT_GATEWAY_CONFIG, help="default: %(default)s")
    gateway.add_argument("--log-level", default="WARNING", help="logging level (default: %(default)s)")
    status = commands.add_parser(
        "status",
        help="summarise a running gateway: its sources and sinks, from its API",
        description="Read a running gateway's /api/v1/health and /metrics and print one line per source "
        "(connected, reads, values, bad, errors, overruns, dropped) and per sink (connected, published, errors, "
        "dropped, outbox depth, age of the oldest waiting record). Exit status 1 when the API cannot be read.",
    )
    status.add_argument("--url", default="http://127.0.0.1:8080",
                        help="base URL of the gateway's API (default: %(default)s)")
    status.add_argument("--timeout", type=float, default=5.0, help="seconds per request (default: %(default)s)")
    audit = commands.add_parser(
        "audit-verify",
        help="check the audit log's hash chain in the gateway's database",
        description="Recompute the hash chain of the edge API's audit log in the database of the gateway "
        "config (read-only). Exit status 0 intact, 1 broken (the first broken row is printed), 2 not checkable.",
    )
    audit.add_argument("--config", type=Path, default=DEFAULT_GATEWAY_CONFIG, help="default: %(default)s")
    commands.add_parser("plant", help="run the simulated plant alone (see 'twinedge plant --help')", add_help=False)
    commands.add_parser("registers", help="print the Modbus register map / tag catalogue", add_help=False)
    return parser


def _run_plant_half(argv: list[str]) -> int:
    """Hand over to the plant's own CLI in this process's place (same pid, same signals)."""
    os.execv(sys.executable, [sys.executable, "-m", "devices", *argv])
    return 0  # pragma: no cover - execv does not return


def _run_gateway(config_path: Path, log_level: str) -> int:
    from gateway.config import load_gateway_config

    try:
        config = load_gateway_config(config_path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from gateway.runtime import serve

    try:
        asyncio.run(serve(config))
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return 0


def _verify_audit(config_path: Path) -> int:
    from gateway.audit_verify import verify_database
    from gateway.config import load_gateway_config

    try:
        config = load_gateway_config(config_path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return verify_database(config.storage, config.gateway.data_dir)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PLANT_COMMANDS:
        return _run_plant_half(argv)
    args = _parser().parse_args(argv)
    if args.command == "gateway":
        return _run_gateway(args.config, args.log_level)
    if args.command == "audit-verify":
        return _verify_audit(args.config)
    if args.command == "status":
        from gateway.status import run_status

        return run_status(args.url, args.timeout)
    supervisor = Supervisor(args.plant_config, args.gateway_config, args.speed, args.log_level)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, supervisor.request_stop)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
