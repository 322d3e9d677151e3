"""Replay: stream the rows of a recorded CSV dataset as tags, at the recorded or a chosen rate, looping.

One CSV column per tag (numbers, or enum strings mapped to their index), plus an optional ISO-8601
timestamp column giving the recorded pacing. A cursor in recorded seconds advances by
dt * speed, where speed = 1 at the recorded rate (``rate`` = 0) or rate * mean_row_interval when a
rate in rows per second is chosen; the row shown is the last one whose offset <= cursor modulo the
recording's length, so playback loops. Each instance starts at its own offset (i / count of the
recording) so a fleet of replays does not move in lock-step.

``replay_type`` builds a replay asset type for any CSV; ``CncReplay`` is the one for the sample
dataset shipped in devices/data/cnc_sample.csv (made by scripts/make_cnc_sample.py).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import ClassVar

import numpy as np

from devices.assets.base import Array, AssetModel, State
from devices.tags import Access, DataType, TagKind, TagSpec

SAMPLE_CSV = Path(__file__).resolve().parent.parent / "data" / "cnc_sample.csv"
_CONTROL_TAGS = (
    TagSpec("row", DataType.UINT32, TagKind.COUNTER, "Index of the row being shown", unit="C62"),
    TagSpec("loops", DataType.UINT32, TagKind.COUNTER, "Completed passes through the recording", unit="C62"),
    TagSpec("playing", DataType.BOOL, TagKind.SETPOINT, "Playback running", access=Access.RW),
    TagSpec(
        "rate",
        DataType.FLOAT32,
        TagKind.SETPOINT,
        "Rows per second (0 = recorded rate)",
        unit="HTZ",
        eu_range=(0.0, 100.0),
        access=Access.RW,
    ),
)


@cache
def load_recording(
    path: Path, columns: tuple[TagSpec, ...], timestamp_column: str | None
) -> tuple[Array, Array]:
    """(offsets in seconds, values as rows x columns); a missing timestamp column means one row a second."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{path}: no data rows")
    values = np.empty((len(rows), len(columns)))
    for j, spec in enumerate(columns):
        for i, row in enumerate(rows):
            try:
                cell = row[spec.key]
            except KeyError:
                raise ValueError(f"{path}: no column {spec.key!r}") from None
            values[i, j] = spec.enum_strings.index(cell) if spec.enum_strings else float(cell)
    if timestamp_column is None:
        offsets = np.arange(len(rows), dtype=np.float64)
    else:
        stamps = [datetime.fromisoformat(row[timestamp_column]).timestamp() for row in rows]
        offsets = np.array(stamps) - stamps[0]
        if np.any(np.diff(offsets) <= 0):
            raise ValueError(f"{path}: timestamps must increase strictly")
    return offsets, values


class Replay(AssetModel):
    """Base of replay types; subclasses set ``csv_path``, ``columns`` and ``timestamp_column``."""

    csv_path: ClassVar[Path]
    columns: ClassVar[tuple[TagSpec, ...]]
    timestamp_column: ClassVar[str | None] = None

    def _recording(self) -> tuple[Array, Array, float, float]:
        offsets, values = load_recording(self.csv_path, self.columns, self.timestamp_column)
        interval = float(offsets[-1] / (len(offsets) - 1)) if len(offsets) > 1 else 1.0
        return offsets, values, offsets[-1] + interval, interval

    def initial_state(self, count: int, rng: np.random.Generator) -> State:
        _, _, length, _ = self._recording()
        state = {
            "cursor": np.arange(count) * length / max(count, 1),
            "playing": np.ones(count),
            "rate": np.zeros(count),
            "row": np.zeros(count),
            "loops": np.zeros(count),
        }
        return self._show(state)

    def step(self, state: State, dt: float, rng: np.random.Generator) -> State:
        _, _, _, interval = self._recording()
        speed = np.where(state["rate"] > 0, state["rate"] * interval, 1.0)
        return self._show({**state, "cursor": state["cursor"] + dt * speed * state["playing"]})

    def _show(self, state: State) -> State:
        offsets, values, length, _ = self._recording()
        loops = np.floor(state["cursor"] / length)
        row = np.searchsorted(offsets, state["cursor"] - loops * length, side="right") - 1
        row = np.clip(row, 0, len(offsets) - 1)
        shown = {spec.key: values[row, j] for j, spec in enumerate(self.columns)}
        return {**state, **shown, "row": row.astype(np.float64), "loops": loops}

    def outputs(self, state: State) -> Mapping[str, Array]:
        return {spec.key: state[spec.key] for spec in self.tags}


def replay_type(
    type_name: str, csv_path: Path, columns: tuple[TagSpec, ...], timestamp_column: str | None = None
) -> type[Replay]:
    """A replay asset type for any CSV: ``columns`` declares each column's tag (key = column name)."""
    attrs = {
        "type_name": type_name,
        "csv_path": csv_path,
        "columns": columns,
        "timestamp_column": timestamp_column,
        "tags": (*columns, *_CONTROL_TAGS),
        "model_name": f"replay of {csv_path.name}",
    }
    return type(f"Replay_{type_name}", (Replay,), attrs)


class CncReplay(Replay):
    """The network-connected CNC dataset of the digital-twin-api seed, replayed."""

    type_name: ClassVar[str] = "cnc_replay"
    model_name: ClassVar[str] = "replay of cnc_sample.csv"
    csv_path: ClassVar[Path] = SAMPLE_CSV
    timestamp_column: ClassVar[str | None] = "timestamp"
    columns: ClassVar[tuple[TagSpec, ...]] = (
        TagSpec(
            "temperature",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Machine temperature",
            unit="CEL",
            eu_range=(15.0, 90.0),
        ),
        TagSpec(
            "power_consumption_kw",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Power consumption",
            unit="KWT",
            eu_range=(0.0, 20.0),
        ),
        TagSpec(
            "network_latency_ms",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Network latency",
            unit="C26",
            eu_range=(0.0, 150.0),
        ),
        TagSpec(
            "error_rate_pct",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Error rate",
            unit="P1",
            eu_range=(0.0, 5.0),
        ),
        TagSpec(
            "efficiency_status",
            DataType.ENUM,
            TagKind.STATE,
            "Efficiency class",
            enum_strings=("Low", "Medium", "High"),
        ),
    )
    tags: ClassVar[tuple[TagSpec, ...]] = (*columns, *_CONTROL_TAGS)
