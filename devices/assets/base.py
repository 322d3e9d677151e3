"""The shape every asset model has: pure, deterministic, vectorised over the instances of a type.

A model holds no state of its own. ``State`` maps a state-variable name to an array with one element
per instance, so one ``step`` advances every conveyor (or lathe, or truck) of a PLC at once with numpy.
Setpoints live in the state under their tag key: a client write changes the array element at scan
start, before ``step`` runs, so a setpoint is the model's input for that scan.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from devices.tags import CommandRejected, CommandSpec, DataType, TagSpec

Array = npt.NDArray[np.float64]
State = dict[str, Array]
ArgValue = float | int | bool | str


class AssetModel(ABC):
    """An asset type. Subclasses declare ``type_name``, ``tags``, ``commands`` and the physics."""

    type_name: ClassVar[str]
    tags: ClassVar[tuple[TagSpec, ...]]
    commands: ClassVar[tuple[CommandSpec, ...]] = ()
    manufacturer: ClassVar[str] = "TwinEdge"
    model_name: ClassVar[str] = ""

    @abstractmethod
    def initial_state(self, count: int, rng: np.random.Generator) -> State:
        """The state of ``count`` fresh instances."""

    @abstractmethod
    def step(self, state: State, dt: float, rng: np.random.Generator) -> State:
        """Advance every instance by ``dt`` seconds of plant time; returns a new state."""

    @abstractmethod
    def outputs(self, state: State) -> Mapping[str, Array]:
        """The value of every tag, keyed by tag key, one element per instance."""

    def apply_command(self, state: State, index: int, name: str, args: Mapping[str, ArgValue]) -> None:
        """Apply a named command to instance ``index`` in place; raise CommandRejected if impossible."""
        raise CommandRejected(f"{self.type_name} has no command {name!r}")

    def tag(self, key: str) -> TagSpec:
        for spec in self.tags:
            if spec.key == key:
                return spec
        raise KeyError(f"{self.type_name} has no tag {key!r}")

    def command(self, name: str) -> CommandSpec:
        for spec in self.commands:
            if spec.name == name:
                return spec
        raise CommandRejected(f"{self.type_name} has no command {name!r}")

    def apply_write(self, state: State, index: int, key: str, value: float) -> None:
        """Write a validated setpoint into instance ``index`` (called at scan start)."""
        state[key][index] = value


def validate_write(spec: TagSpec, value: ArgValue) -> float:
    """Check a client write against the tag table; returns the value as the model stores it.

    Raises TypeError for a value of the wrong type and ValueError for one outside EURange (or the
    datatype's own range), so each protocol can map them to its own error (BadTypeMismatch /
    BadOutOfRange, Modbus exception 03, HTTP 422).
    """
    if not spec.writable:
        raise PermissionError(f"tag {spec.key} is read-only")
    if spec.datatype is DataType.BOOL:
        if not isinstance(value, bool | int) or int(value) not in (0, 1):
            raise TypeError(f"tag {spec.key} takes a boolean, got {value!r}")
        return float(bool(value))
    if spec.datatype is DataType.STRING or isinstance(value, str | bool):
        raise TypeError(f"tag {spec.key} takes a number, got {value!r}")
    number = float(value)
    if not np.isfinite(number):
        raise ValueError(f"tag {spec.key}: {value!r} is not a finite number")
    if spec.datatype is DataType.ENUM:
        if not number.is_integer() or not 0 <= number < len(spec.enum_strings):
            raise ValueError(f"tag {spec.key}: {value!r} is not one of 0..{len(spec.enum_strings) - 1}")
        return number
    if spec.datatype is not DataType.FLOAT32 and not number.is_integer():
        raise TypeError(f"tag {spec.key} takes an integer, got {value!r}")
    if spec.eu_range is not None:
        low, high = spec.eu_range
        if not low <= number <= high:
            raise ValueError(f"tag {spec.key}: {value!r} is outside {low:g}..{high:g}")
    return number
