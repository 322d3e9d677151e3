"""Cost of scanning the plant: stepping every asset type, couplings, and building the process image.

Builds one PLC holding every registered asset type (one group each, instance counts chosen so the
plant has about N tags, split evenly across types), runs scans at the default 100 ms period and
reports the CPU time per scan and the share of one core at 10 Hz. The goal from issue 3: 100 000 tags
at 10 Hz under 20 % of one core. The first scans are warm-up (numpy allocations, caches).

Run: .venv/bin/python bench/plant_step_bench.py [--tags 10000 30000 100000 300000] [--scans 50]
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

from devices.assets.coupling import machine_shop_coupling
from devices.assets.mine import mine_coupling
from devices.assets.registry import ASSET_TYPES
from devices.clock import VirtualClock
from devices.plc import AssetGroup, Plc


def build(total_tags: int) -> tuple[Plc, int]:
    types = sorted(ASSET_TYPES.items())
    per_type = total_tags / len(types)
    groups, tags = [], 0
    for name, model_type in types:
        model = model_type()
        count = max(1, round(per_type / len(model.tags)))
        groups.append(AssetGroup(model, tuple(f"{name}-{i}" for i in range(count))))
        tags += count * len(model.tags)
    plc = Plc("bench", groups, VirtualClock(start=datetime(2025, 1, 1, tzinfo=UTC)), 0.1, seed=1,
              coupling=mine_coupling() + machine_shop_coupling())
    return plc, tags


def measure(total_tags: int, scans: int) -> tuple[int, float, float]:
    plc, tags = build(total_tags)
    for _ in range(5):
        plc.scan()
    step_cpu = 0.0
    start = time.process_time()
    for _ in range(scans):
        t0 = time.process_time()
        for group in plc.groups:
            group.state = group.model.step(group.state, plc.scan_period_s, plc._rng)
        step_cpu += time.process_time() - t0
        plc.scan()
    total = time.process_time() - start
    # Each loop ran the models twice (once alone, once inside scan()): split the cost accordingly.
    per_scan = (total - step_cpu) / scans
    return tags, per_scan, step_cpu / scans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tags", type=int, nargs="+", default=[10_000, 30_000, 100_000, 300_000])
    parser.add_argument("--scans", type=int, default=50)
    args = parser.parse_args()
    header = ("tags", "scan ms", "models ms", "image ms", "core % @10 Hz", "us/1k tags")
    print(" ".join(f"{name:>{width}}" for name, width in zip(header, (9, 9, 10, 9, 14, 11), strict=True)))
    for wanted in args.tags:
        tags, per_scan, step = measure(wanted, args.scans)
        print(
            f"{tags:>9} {per_scan * 1e3:>9.2f} {step * 1e3:>10.2f} {(per_scan - step) * 1e3:>9.2f} "
            f"{per_scan * 10 * 100:>13.1f}% {per_scan * 1e6 / tags * 1000:>11.1f}"
        )


if __name__ == "__main__":
    main()
