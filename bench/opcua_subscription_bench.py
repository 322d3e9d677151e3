"""OPC UA subscription load: one client subscribed to every variable of a PLC whose values all change every scan.

    .venv/bin/python bench/opcua_subscription_bench.py [--seconds 30] [--warmup 5]

Goals (issue 4): with a client subscribed to all 10,000 variables at 1 s, the PLC delivers every change
(10,000 notifications/s) at under 40% of one core for the PLC process, scan included; the same
reported with 1,000 variables at 100 ms sampling.

What runs, per case (``--case VARIABLES:PERIOD_MS``, default ``10000:1000`` and ``1000:100``):

1. PLC process (``python bench/opcua_subscription_bench.py --serve ...``, its own OS process):
   ``devices.plant.Plant.run`` exactly as ``twinedge plant`` runs it (OPC UA + Modbus, ``gc.freeze``
   after start-up, ``Plc.run`` on the virtual clock at speed 1; control API off), on a bench-only plant
   config with one PLC of VARIABLES / 10 assets of the bench type ``bench-ramp``: 10 Float
   measurements (AnalogItems) per asset, each rising by exactly the scan period in seconds at every
   scan. So every variable changes at every scan: VARIABLES changes per PERIOD_MS, i.e.
   VARIABLES x 1000 / PERIOD_MS changes per second (10,000/s in both default cases).
2. Client (this process, asyncua): resolves every variable by browse path
   (TranslateBrowsePathsToNodeIds), creates one subscription with publishing interval PERIOD_MS and
   CreateMonitoredItems in batches of ``--batch`` (sampling interval PERIOD_MS, queue size
   ``--queue-size``), and counts the notifications of each PublishResponse in the raw publish callback.
3. Checks: each variable must step by exactly one scan increment between two notifications, so a
   larger step counts the skipped changes as missed (and a zero step as a duplicate); the
   NotificationMessage sequence numbers must have no gaps. Both are counted from the first
   notification of each variable to the end of the window, warm-up included.
4. After ``--warmup`` s, a window of ``--seconds``: the PLC process's CPU time (utime + stime from
   /proc/<pid>/stat) over the window's wall time, its RSS (VmRSS) at the end, the notifications per
   second (notifications of the publish responses after the window's first one, over the time
   between the first and last response in the window), and from inside the PLC process the scans
   done, overruns and the mean wall time of ``Plc.scan`` (models + process image + OPC UA publisher
   + Modbus encoder; the subscription notifications and publish responses run outside it).

Prints one markdown table (and with ``--json`` one JSON line per case).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asyncua import ua
from asyncua.client.client import Client

from devices.assets.base import Array, AssetModel, State
from devices.opcua._ua import AttributeIds, ObjectIds, nodeid
from devices.tags import DataType, TagKind, TagSpec

HOST = "127.0.0.1"
TAGS_PER_ASSET = 10
SITE, AREA, PLC_ID = "site", "area", "plc-bench"
INSTANCE_NAMESPACE_URI = "urn:twinedge:plant"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
SELF = Path(__file__).resolve()


class Ramp(AssetModel):
    """10 Float measurements per asset, each rising by ``dt`` every scan: every variable changes every scan."""

    type_name: ClassVar[str] = "bench-ramp"
    tags: ClassVar[tuple[TagSpec, ...]] = tuple(
        TagSpec(f"m{i}", DataType.FLOAT32, TagKind.MEASUREMENT, "bench ramp") for i in range(TAGS_PER_ASSET)
    )

    def initial_state(self, count: int, rng: np.random.Generator) -> State:
        return {spec.key: np.floor(rng.random(count) * 100.0) for spec in self.tags}

    def step(self, state: State, dt: float, rng: np.random.Generator) -> State:
        return {key: values + dt for key, values in state.items()}

    def outputs(self, state: State) -> Mapping[str, Array]:
        return state


# --- the PLC process ----------------------------------------------------------------------------------


def _plant_config(assets: int, period_ms: int, port: int, modbus: bool, data_dir: str) -> Any:
    from devices.config import PlantConfig

    return PlantConfig.model_validate(
        {
            "plant": {"name": "bench", "seed": 1, "bind_host": HOST, "api_port": None, "data_dir": data_dir},
            "sites": [
                {
                    "id": SITE,
                    "areas": [
                        {
                            "id": AREA,
                            "plcs": [
                                {
                                    "id": PLC_ID,
                                    "scan_period_ms": period_ms,
                                    "opcua": {"port": port, "security_policies": ["None"]},
                                    "modbus": {"port": free_port(), "enabled": modbus},
                                    "assets": [{"type": Ramp.type_name, "id": "ramp", "count": assets}],
                                }
                            ],
                        }
                    ],
                }
            ],
        }
    )


def serve(assets: int, period_ms: int, port: int, modbus: bool, data_dir: str, asyncua_callback: bool) -> None:
    """PLC process: ``Plant.run`` until stdin says ``stop`` or closes; ``stats`` prints scan statistics."""
    from devices.assets.registry import ASSET_TYPES
    from devices.opcua import publisher

    if asyncua_callback:  # the "before" of BENCHMARKS.md: every notification through asyncua's own callback
        publisher._is_asyncua_datachange = lambda callback: False
    from devices.opcua.publisher import ValuePublisher
    from devices.plant import Plant

    publishers: list[ValuePublisher] = []
    publisher_init = ValuePublisher.__init__

    def remember(self: ValuePublisher, *args: Any, **kwargs: Any) -> None:  # to report its counters
        publisher_init(self, *args, **kwargs)
        publishers.append(self)

    ValuePublisher.__init__ = remember  # type: ignore[method-assign]

    ASSET_TYPES[Ramp.type_name] = Ramp
    plant = Plant(
        _plant_config(assets, period_ms, port, modbus, data_dir), announce=lambda line: print(line, flush=True)
    )
    plc = plant.plcs[0].plc
    timed = {"scans": 0, "seconds": 0.0, "cpu_seconds": 0.0}
    scan = plc.scan

    def timed_scan() -> Any:
        began, began_cpu = time.perf_counter(), time.thread_time()
        image = scan()
        timed["seconds"] += time.perf_counter() - began
        timed["cpu_seconds"] += time.thread_time() - began_cpu
        timed["scans"] += 1
        return image

    plc.scan = timed_scan  # type: ignore[method-assign]

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_stdin() -> None:
            line = sys.stdin.readline()
            if not line or line.strip() == "stop":
                stop.set()
            elif line.strip() == "stats":
                stats = {
                    "scan_count": plc.scan_count,
                    "overruns": plc.overruns,
                    **timed,
                    "writes": sum(p.writes for p in publishers),
                    "coalesced": sum(p.coalesced for p in publishers),
                }
                print(json.dumps(stats), flush=True)

        loop.add_reader(sys.stdin.fileno(), on_stdin)
        await plant.run(stop)

    asyncio.run(main())


# --- the client (this process) ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def rss_mib(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20


@dataclass
class Counter:
    """Counts notifications per PublishResponse and checks every variable's ramp for skipped values."""

    variables: int
    step: float
    last: list[float | None] = field(default_factory=list)
    notifications: int = 0
    missed: int = 0
    duplicates: int = 0
    bad: int = 0
    sequence_gaps: int = 0
    last_sequence: int | None = None
    publishes: list[tuple[float, int]] = field(default_factory=list)  # (receipt time, notifications)
    all_seen: asyncio.Event = field(default_factory=asyncio.Event)  # every variable notified once
    unseen: int = 0

    def __post_init__(self) -> None:
        self.last = [None] * self.variables
        self.unseen = self.variables

    def publish_callback(self, result: ua.PublishResult) -> None:
        now = time.monotonic()
        message = result.NotificationMessage
        if not any(isinstance(n, ua.DataChangeNotification) for n in message.NotificationData or ()):
            return  # keep-alive, or the client's own status change when the connection closes
        sequence = int(message.SequenceNumber)
        if self.last_sequence is not None and sequence > self.last_sequence + 1:
            self.sequence_gaps += sequence - self.last_sequence - 1
        self.last_sequence = sequence
        count = 0
        last, step = self.last, self.step
        for notification in message.NotificationData:
            if not isinstance(notification, ua.DataChangeNotification):
                continue
            for item in notification.MonitoredItems:
                count += 1
                handle = int(item.ClientHandle)
                variant = item.Value.Value if item.Value is not None else None
                if variant is None or variant.Value is None:
                    self.bad += 1
                    continue
                value = float(variant.Value)
                previous = last[handle]
                last[handle] = value
                if previous is None:
                    self.unseen -= 1
                    if not self.unseen:
                        self.all_seen.set()
                    continue
                steps = round((value - previous) / step)
                if steps > 1:
                    self.missed += steps - 1
                elif steps < 1:
                    self.duplicates += 1
        self.notifications += count
        self.publishes.append((now, count))

    def rate(self, began: float, ended: float) -> float:
        window = [(t, n) for t, n in self.publishes if began <= t <= ended]
        if len(window) < 2:
            return 0.0
        return sum(n for _, n in window[1:]) / (window[-1][0] - window[0][0])


async def _command(process: asyncio.subprocess.Process, command: str) -> dict[str, Any]:
    assert process.stdin is not None
    assert process.stdout is not None
    process.stdin.write(f"{command}\n".encode())
    await process.stdin.drain()
    while True:
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        if not line:
            raise RuntimeError("PLC process exited")
        if line.startswith("{"):
            return cast(dict[str, Any], json.loads(line))


async def _resolve(client: Client, ns: int, assets: list[str]) -> list[ua.NodeId]:
    root = (await client.nodes.objects.get_child([f"{ns}:{SITE}", f"{ns}:{AREA}", f"{ns}:{PLC_ID}"])).nodeid
    paths = []
    for asset in assets:
        for spec in Ramp.tags:
            elements = [
                ua.RelativePathElement(
                    ReferenceTypeId=nodeid(ObjectIds.HierarchicalReferences),
                    IsInverse=cast(Any, False),
                    IncludeSubtypes=cast(Any, True),
                    TargetName=ua.QualifiedName(Name=name, NamespaceIndex=ns),
                )
                for name in (asset, spec.key)
            ]
            paths.append(ua.BrowsePath(StartingNode=root, RelativePath=ua.RelativePath(Elements=elements)))
    nodeids: list[ua.NodeId] = []
    for start in range(0, len(paths), 1000):
        for result in await client.uaclient.translate_browsepaths_to_nodeids(paths[start : start + 1000]):
            result.StatusCode.check()
            target = result.Targets[0].TargetId
            nodeids.append(ua.NodeId(target.Identifier, target.NamespaceIndex))
    return nodeids


async def _subscribe(
    client: Client, counter: Counter, nodeids: list[ua.NodeId], period_ms: int, batch: int, queue_size: int
) -> None:
    params = ua.CreateSubscriptionParameters(
        RequestedPublishingInterval=float(period_ms),
        RequestedLifetimeCount=cast(Any, 10_000),
        RequestedMaxKeepAliveCount=cast(Any, max(3, int(10_000 / period_ms))),
        MaxNotificationsPerPublish=cast(Any, 0),
        PublishingEnabled=True,
        Priority=cast(Any, 0),
    )
    session = client.uaclient.session
    created = await session.create_subscription(params, counter.publish_callback)
    for start in range(0, len(nodeids), batch):
        items = [
            ua.MonitoredItemCreateRequest(
                ItemToMonitor=ua.ReadValueId(NodeId=nodeid, AttributeId=cast(Any, AttributeIds.Value)),
                MonitoringMode=ua.MonitoringMode.Reporting,
                RequestedParameters=ua.MonitoringParameters(
                    ClientHandle=cast(Any, start + offset),
                    SamplingInterval=float(period_ms),
                    QueueSize=cast(Any, queue_size),
                    DiscardOldest=True,
                ),
            )
            for offset, nodeid in enumerate(nodeids[start : start + batch])
        ]
        request = ua.CreateMonitoredItemsParameters(
            SubscriptionId=created.SubscriptionId,
            TimestampsToReturn=ua.TimestampsToReturn.Both,
            ItemsToCreate=items,
        )
        for result in await session.create_monitored_items(request):
            result.StatusCode.check()


async def run_case(variables: int, period_ms: int, args: argparse.Namespace) -> dict[str, Any]:
    assets = max(1, variables // TAGS_PER_ASSET)
    variables = assets * TAGS_PER_ASSET
    port = free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        command = [sys.executable, str(SELF), "--serve", str(assets), str(period_ms), str(port), data_dir] + (
            [] if args.modbus else ["--no-modbus"]
        )
        command += ["--asyncua-callback"] if args.asyncua_callback else []
        began = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=SELF.parent.parent
        )
        try:
            assert process.stdout is not None
            while True:
                line = (await asyncio.wait_for(process.stdout.readline(), 180)).decode()
                if not line:
                    raise RuntimeError("PLC process exited before serving")
                if line.startswith("plant ready"):
                    break
            ready_s = time.monotonic() - began
            counter = Counter(variables, period_ms / 1000.0)
            async with Client(f"opc.tcp://{HOST}:{port}", timeout=60, watchdog_intervall=10.0) as client:
                ns = await client.get_namespace_index(INSTANCE_NAMESPACE_URI)
                width = max(2, len(str(assets)))  # AssetConfig.instance_ids
                ids = [f"ramp-{n:0{width}d}" for n in range(1, assets + 1)] if assets > 1 else ["ramp"]
                nodeids = await _resolve(client, ns, ids)
                subscribing = time.monotonic()
                await _subscribe(client, counter, nodeids, period_ms, args.batch, args.queue_size)
                subscribe_s = time.monotonic() - subscribing
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(counter.all_seen.wait(), 60)
                await asyncio.sleep(args.warmup)
                pid = process.pid
                before = await _command(process, "stats")
                cpu0, t0 = cpu_seconds(pid), time.monotonic()
                client0 = time.process_time()
                spy = await _py_spy(args.py_spy, pid, args.seconds, f"{variables}-{period_ms}ms")
                await asyncio.sleep(args.seconds)
                client_cpu = time.process_time() - client0
                cpu1, t1 = cpu_seconds(pid), time.monotonic()
                after = await _command(process, "stats")
                rss = rss_mib(pid)
                if spy is not None:
                    await spy.wait()
            scans = after["scan_count"] - before["scan_count"]
            timed = after["scans"] - before["scans"]
            return {
                "variables": variables,
                "sampling_ms": period_ms,
                "changes_per_s": variables * 1000 / period_ms,
                "notifications_per_s": round(counter.rate(t0, t1), 1),
                "missed": counter.missed,
                "sequence_gaps": counter.sequence_gaps,
                "duplicates": counter.duplicates,
                "bad": counter.bad,
                "never_notified": counter.unseen,
                "plc_cpu_pct": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
                "plc_rss_mib": round(rss, 1),
                "client_cpu_pct": round(100 * client_cpu / (t1 - t0), 1),
                "scans": scans,
                "scan_ms": round(1000 * (after["seconds"] - before["seconds"]) / max(1, timed), 2),
                "scan_cpu_ms": round(1000 * (after["cpu_seconds"] - before["cpu_seconds"]) / max(1, timed), 2),
                "overruns": after["overruns"] - before["overruns"],
                "writes": after["writes"] - before["writes"],
                "coalesced": after["coalesced"] - before["coalesced"],
                "ready_s": round(ready_s, 2),
                "subscribe_s": round(subscribe_s, 2),
                "window_s": round(t1 - t0, 2),
            }
        finally:
            if process.returncode is None:
                assert process.stdin is not None
                process.stdin.close()
                try:
                    await asyncio.wait_for(process.wait(), 30)
                except TimeoutError:
                    process.kill()
                    await process.wait()


async def _py_spy(prefix: str | None, pid: int, seconds: float, case: str) -> asyncio.subprocess.Process | None:
    """Profile the PLC process over the window (``pip install py-spy``; profiling only, not a dependency)."""
    if prefix is None:
        return None
    command = [
        "py-spy",
        "record",
        "--nonblocking",
        "-p",
        str(pid),
        "-d",
        str(int(seconds)),
        "-f",
        "raw",
        "-o",
        f"{prefix}-{case}.txt",
    ]
    return await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.DEVNULL)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| variables | sampling | changes/s expected | notifications/s received | missed | PLC CPU % of one core "
        "| PLC RSS | scan (mean) | overruns |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        missed = f"{r['missed']} (seq gaps {r['sequence_gaps']}, dup {r['duplicates']}, never {r['never_notified']})"
        lines.append(
            f"| {r['variables']:,} | {r['sampling_ms']} ms | {r['changes_per_s']:,.0f} | "
            f"{r['notifications_per_s']:,.0f} | {missed} | {r['plc_cpu_pct']:.1f} % | {r['plc_rss_mib']:.0f} MiB | "
            f"{r['scan_ms']:.1f} ms | {r['overruns']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--case", action="append", help="VARIABLES:PERIOD_MS (default: 10000:1000 and 1000:100)")
    parser.add_argument("--seconds", type=float, default=30.0, help="measurement window per case")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds after every variable's first value")
    parser.add_argument("--batch", type=int, default=1000, help="monitored items per CreateMonitoredItems")
    parser.add_argument("--queue-size", type=int, default=4, help="requested monitored item queue size")
    parser.add_argument("--no-modbus", dest="modbus", action="store_false", help="PLC without its Modbus server")
    parser.add_argument(
        "--asyncua-callback",
        action="store_true",
        help="notify through asyncua's MonitoredItemService.datachange_callback (deepcopy; the 'before')",
    )
    parser.add_argument("--py-spy", metavar="PREFIX", help="profile the PLC process into PREFIX-<case>.txt (raw)")
    parser.add_argument("--json", action="store_true", help="also print one JSON line per case")
    parser.add_argument("--serve", nargs=4, metavar=("ASSETS", "PERIOD_MS", "PORT", "DATA_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        assets, period_ms, port, data_dir = args.serve
        serve(int(assets), int(period_ms), int(port), args.modbus, data_dir, args.asyncua_callback)
        return
    rows = []
    for case in args.case or ["10000:1000", "1000:100"]:
        variables, period_ms = (int(part) for part in case.split(":"))
        row = asyncio.run(run_case(variables, period_ms, args))
        if args.json:
            print(json.dumps(row), flush=True)
        rows.append(row)
    print(table(rows))


if __name__ == "__main__":
    main()
