"""The plant half of the `twinedge` command: `twinedge plant` and `twinedge registers`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from devices.config import PlantConfig, load_plant_config
from gateway.common.configfile import ConfigError

DEFAULT_CONFIG = Path("config/plant.yaml")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twinedge", description="TwinEdge plant: simulated PLCs.")
    commands = parser.add_subparsers(dest="command", required=True)
    plant = commands.add_parser(
        "plant",
        help="run the simulated plant alone",
        description="Run the simulated PLCs of the plant config, each serving OPC UA and Modbus TCP, "
        "until Ctrl-C or SIGTERM. Writes the tag catalogue to <data_dir>/catalogue.json.",
    )
    plant.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="plant config (default: %(default)s)")
    plant.add_argument("--speed", type=float, help="virtual clock speed factor (overrides plant.speed)")
    plant.add_argument("--seed", type=int, help="random seed (overrides plant.seed)")
    plant.add_argument("--log-level", default="WARNING", help="logging level (default: %(default)s)")
    plant.add_argument("--check", action="store_true", help="only validate the config and exit (status 2 on errors)")
    registers = commands.add_parser(
        "registers",
        help="print the Modbus register map / tag catalogue",
        description="Print the register map generated from the tag tables: table, 0-based address, "
        "1-based 3xxxx/4xxxx number, datatype, word order, scale, unit, range, access, description. "
        "The JSON form is the tag catalogue the gateway loads.",
    )
    registers.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="plant config (default: %(default)s)")
    registers.add_argument("--plc", help="only this PLC id")
    registers.add_argument("--format", choices=("md", "csv", "json"), default="md", help="default: %(default)s")
    return parser


def _with_overrides(config: PlantConfig, speed: float | None, seed: int | None) -> PlantConfig:
    updates: dict[str, float | int] = {}
    if speed is not None:
        updates["speed"] = speed
    if seed is not None:
        updates["seed"] = seed
    if not updates:
        return config
    return config.model_copy(update={"plant": config.plant.model_copy(update=updates)})


async def _serve(config: PlantConfig) -> None:
    from devices.plant import Plant  # servers are imported only when serving

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f"TwinEdge plant {config.plant.name!r} starting", flush=True)
    await Plant(config, announce=lambda line: print(line, flush=True)).run(stop)
    print("plant stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_plant_config(args.config)
        if args.command == "registers":
            from devices.registers_cli import render_registers

            if args.plc is not None and args.plc not in {plc.id for _, _, _, plc in config.placed_plcs()}:
                print(f"{args.config}: no PLC with id {args.plc!r}", file=sys.stderr)
                return 2
            sys.stdout.write(render_registers(config, args.plc, args.format))
            return 0
        if args.speed is not None and args.speed <= 0:
            print(f"--speed = {args.speed}: must be > 0", file=sys.stderr)
            return 2
        config = _with_overrides(config, args.speed, args.seed)
        if args.check:
            return 0
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_serve(config))
    except OSError as exc:
        print(f"plant failed to start: {exc}", file=sys.stderr)
        return 1
    return 0
