"""MQTT sink throughput and CPU per message, paho on the gateway's loop against the publisher process.

    .venv/bin/python bench/mqtt_publisher_bench.py --messages 100000 --repeat 2
    .venv/bin/python bench/mqtt_publisher_bench.py --busy   # the gateway's loop 80% busy with other work

An ``MqttSink`` (tag layout, QoS 1) writes ``--messages`` readings in batches of 500 to its outbox as fast
as the outbox drains, to a Mosquitto of its own (window 1,000). Reported per publisher: messages/s from
the first write to an empty outbox, and CPU microseconds per message of this process (encoding, outbox,
and, with ``loop``, paho) and of the worker process (paho). ``--busy`` adds a task that holds the loop
8 ms of every 10, as polls, REST and the fan-out do on a loaded gateway. Publishers alternate, so the
repeats of each interleave.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from _procs import proc_sample, start_mosquitto, stop_all

from gateway.common.status import GOOD
from gateway.readings import Reading
from gateway.sinks.mqtt import MqttSink, MqttSinkConfig

BATCH = 500


def cpu_s(pid: int | None) -> float:
    sample = proc_sample(pid) if pid is not None else None
    return sample.cpu_s if sample is not None else 0.0


async def hold_the_loop() -> None:
    while True:
        end = time.perf_counter() + 0.008
        while time.perf_counter() < end:
            pass
        await asyncio.sleep(0.002)


async def measure(publisher: str, port: int, messages: int, busy: bool, data_dir: Path) -> dict[str, float]:
    config = MqttSinkConfig(url=f"mqtt://127.0.0.1:{port}", layout="tag", publisher=publisher)  # type: ignore[arg-type]
    sink = MqttSink(config, "bench", data_dir)
    await sink.start()
    while not sink.stats().connected:  # noqa: ASYNC110 - the sink offers stats, not events
        await asyncio.sleep(0.01)
    worker: int | None = getattr(sink._publisher, "pid", None)
    hog = asyncio.create_task(hold_the_loop()) if busy else None
    now = datetime.now(UTC)
    own0, worker0, t0 = cpu_s(os.getpid()), cpu_s(worker), time.perf_counter()
    for start in range(0, messages, BATCH):
        await sink.write([Reading("plc", f"asset-{i % 50}", f"tag-{i}", float(i), GOOD, now, now, "site", "area", "MTS")
                          for i in range(start, min(start + BATCH, messages))])
        await asyncio.sleep(0)
    while sink.stats().outbox_depth:  # noqa: ASYNC110 - the sink offers stats, not events
        await asyncio.sleep(0.002)
    elapsed = time.perf_counter() - t0
    own, work = cpu_s(os.getpid()) - own0, cpu_s(worker) - worker0
    if hog is not None:
        hog.cancel()
    await sink.close()
    return {"messages_per_s": messages / elapsed, "gateway_us_per_message": 1e6 * own / messages,
            "worker_us_per_message": 1e6 * work / messages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--busy", action="store_true", help="hold the gateway's loop 8 ms of every 10")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mqtt-publisher-bench-"))
    try:
        _, port = start_mosquitto(tmp / "mosquitto")
        print(f"{args.messages:,} messages, busy loop: {args.busy}, load average before {os.getloadavg()}")
        print("| publisher | messages/s | gateway us per message | worker us per message |")
        print("|---|---:|---:|---:|")
        for n in range(args.repeat):
            for publisher in ("loop", "process"):
                r = asyncio.run(measure(publisher, port, args.messages, args.busy, tmp / f"{publisher}-{n}"))
                print(f"| {publisher} | {r['messages_per_s']:,.0f} | {r['gateway_us_per_message']:.1f} "
                      f"| {r['worker_us_per_message']:.1f} |", flush=True)
    finally:
        stop_all()


if __name__ == "__main__":
    main()
