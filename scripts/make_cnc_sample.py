"""Generate devices/data/cnc_sample.csv: a small, deterministic recording of a network-connected CNC mill.

Columns follow the digital-twin-api seed (temperature, power_consumption_kw, network_latency_ms,
error_rate_pct, efficiency_status) plus an ISO timestamp every 2 s. The series come from the same
relations the cnc_mill model uses (error rate from latency and heat, efficiency class from both), with
a warm-up, part cycles, and two incidents so the replay has something to alert on: a network
congestion burst and an overheating spell.

Run: .venv/bin/python scripts/make_cnc_sample.py
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from devices.assets.cnc_mill import EFFICIENCY, efficiency_status, error_rate

ROWS = 720  # 24 minutes at 2 s
PERIOD_S = 2.0
OUT = Path(__file__).resolve().parent.parent / "devices" / "data" / "cnc_sample.csv"


def main() -> None:
    rng = np.random.default_rng(2024)
    t = np.arange(ROWS) * PERIOD_S
    cutting = ((t % 120.0) > 6.0) & ((t % 120.0) < 114.0)  # 2-minute parts with a load/unload gap
    load = np.where(cutting, 0.6 + 0.08 * rng.standard_normal(ROWS), 0.05)
    temperature = 22.0 + 30.0 * (1.0 - np.exp(-t / 300.0)) + 6.0 * load + 0.4 * rng.standard_normal(ROWS)
    overheat = (t >= 900.0) & (t < 1100.0)
    temperature += np.where(overheat, 25.0 * np.sin(np.pi * (t - 900.0) / 200.0), 0.0)
    power = 1.5 + 9.0 * load + 0.15 * rng.standard_normal(ROWS)
    latency = 20.0 * np.exp(0.25 * rng.standard_normal(ROWS))
    latency += np.where((t >= 400.0) & (t < 520.0), 110.0, 0.0)
    errors = error_rate(latency, temperature) + 0.05 * np.abs(rng.standard_normal(ROWS))
    status = efficiency_status(latency, errors, temperature).astype(int)
    start = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "timestamp",
                "temperature",
                "power_consumption_kw",
                "network_latency_ms",
                "error_rate_pct",
                "efficiency_status",
            ]
        )
        for i in range(ROWS):
            writer.writerow(
                [
                    (start + timedelta(seconds=float(t[i]))).isoformat(),
                    f"{temperature[i]:.2f}",
                    f"{power[i]:.3f}",
                    f"{latency[i]:.1f}",
                    f"{errors[i]:.3f}",
                    EFFICIENCY[status[i]],
                ]
            )
    print(f"wrote {ROWS} rows to {OUT}")


if __name__ == "__main__":
    main()
