"""The outbox stores alone (gateway.outbox: sqlite | log): CPU and bytes written per record.

    .venv/bin/python bench/outbox_bench.py [--records 300000] [--repeat 3]

Replays what a sink does to its outbox under load, in one process, with nothing else running in it:
appends of one poll's records at a time (``--batch`` records of ``--payload`` bytes, like the MQTT
sink's per-asset messages), the newest records peeked as a forwarder would, and acknowledgements of
everything peeked every ``--ack-every`` appends (the MQTT sink removes acknowledged records 256 at a
time under load). A second case stores chunks of ``--chunk-items`` items (the Influx sink's chunks of
lines). Reported per record: process CPU (user + system), and the bytes the process handed to write
calls (``wchar`` of /proc/self/io: WAL frames, checkpoints and deletes for SQLite; records and state
slots for the log). The stores alternate within each repeat, so both see the same machine state.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway.sinks.outbox import Outbox
from gateway.sinks.outbox_common import OutboxStore
from gateway.sinks.outbox_log import LogOutbox

STORES: dict[str, Any] = {"sqlite": (Outbox, "ob.sqlite"), "log": (LogOutbox, "ob.log")}


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def written_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def run(store: str, records: int, batch: int, payload: int, ack_every: int, items: int, tmp: Path) -> dict[str, float]:
    cls, name = STORES[store]
    path = tmp / name
    outbox: OutboxStore = cls(path, max(records * items, 1))
    body = os.urandom(payload)
    appends = records // batch
    keys = [f"bench/site/area/conveyor-{i:03d}" for i in range(batch)]
    counts = [items] * batch
    cursor = 0
    cpu0, bytes0, wall0 = cpu_s(), written_bytes(), time.perf_counter()
    for n in range(appends):
        outbox.append([(key, body) for key in keys], counts)
        peeked = outbox.peek(batch * items, after_id=cursor)
        cursor = peeked[-1].id
        if (n + 1) % ack_every == 0:
            outbox.ack(cursor)
    outbox.ack(cursor)
    cpu, wrote, wall = cpu_s() - cpu0, written_bytes() - bytes0, time.perf_counter() - wall0
    outbox.close()
    stored = appends * batch
    return {"cpu_us": 1e6 * cpu / stored, "bytes": wrote / stored, "records_s": stored / wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=300_000, help="records per run (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=60, help="records per append (default: %(default)s)")
    parser.add_argument("--payload", type=int, default=350, help="bytes per record (default: %(default)s)")
    parser.add_argument("--ack-every", type=int, default=4, help="appends between acks (default: %(default)s)")
    parser.add_argument("--chunk-items", type=int, default=500,
                        help="items per record in the chunk case (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per store and case (default: %(default)s)")
    args = parser.parse_args()
    cases = {
        f"messages ({args.batch} x {args.payload} B per append)": (args.records, args.batch, args.payload, 1),
        f"chunks (1 x {args.chunk_items} items, {args.chunk_items * 60} B per append)":
            (args.records // 50, 1, args.chunk_items * 60, args.chunk_items),
    }
    print(f"load average before: {os.getloadavg()[0]:.2f}; {args.repeat} repeat(s), medians\n")
    print("| case | store | CPU us per record | bytes written per record | records/s |")
    print("|---|---|---:|---:|---:|")
    for case, (records, batch, payload, items) in cases.items():
        results: dict[str, list[dict[str, float]]] = {store: [] for store in STORES}
        for _ in range(args.repeat):
            for store in STORES:
                with tempfile.TemporaryDirectory(prefix="outbox-bench-") as tmp:
                    results[store].append(run(store, records, batch, payload, args.ack_every, items, Path(tmp)))
        for store, runs in results.items():
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(f"| {case} | {store} | {med['cpu_us']:.2f} | {med['bytes']:,.0f} | {med['records_s']:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
