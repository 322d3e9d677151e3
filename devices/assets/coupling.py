"""Couplings between asset types: one model's output becomes another model's input.

``AssetModel.step`` sees one type at a time, so the flows between machines (ore dumped by trucks
into a crusher, crushed ore onto a stockpile, parts delivered by a conveyor to a mill) are declared
as ``Link``s and applied by a ``PlantCoupling`` after every group of a PLC has been stepped:

    scan n:   step every group  ->  coupling copies source arrays into target input arrays
    scan n+1: each target model consumes its inputs (and zeroes one-shot inputs such as dumped mass)

Flows therefore lag by one scan, which keeps every model pure and the order of groups irrelevant.
Instances are wired in contiguous blocks: with 12 trucks and 2 crushers, trucks 0-5 feed crusher 0
and trucks 6-11 feed crusher 1; with one target every source feeds it. Several groups of one type on
a PLC are treated as one concatenated fleet.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from devices.assets.base import Array, AssetModel, State

Reduce = Literal["sum", "mean", "max", "min"]


class CoupledGroup(Protocol):
    """What a coupling needs of a PLC's asset group (``devices.plc.AssetGroup`` has this shape)."""

    model: AssetModel
    state: State


def block_index(n_source: int, n_target: int) -> Array:
    """Target instance of each source instance when ``n_source`` feed ``n_target`` in blocks."""
    index: Array = ((np.arange(n_source) * n_target) // max(n_source, 1)).astype(np.float64)
    return index


@dataclass(frozen=True)
class Link:
    """Copy ``source_type.source_key`` into ``target_type.target_key``, reduced per target instance.

    ``transform`` maps the source array first (for example belt speed -> "is delivering" 0/1).
    """

    source_type: str
    source_key: str
    target_type: str
    target_key: str
    reduce: Reduce = "sum"
    transform: Callable[[Array], Array] | None = None

    def apply(self, groups: Sequence[CoupledGroup]) -> None:
        sources = [g for g in groups if g.model.type_name == self.source_type]
        targets = [g for g in groups if g.model.type_name == self.target_type]
        if not sources or not targets:
            return
        values = np.concatenate([g.state[self.source_key] for g in sources])
        if self.transform is not None:
            values = self.transform(values)
        n_target = sum(len(g.state[self.target_key]) for g in targets)
        reduced = reduce_blocks(values, n_target, self.reduce)
        offset = 0
        for group in targets:
            count = len(group.state[self.target_key])
            # Replace the array rather than write into it: the previous state may still be shared.
            group.state = {**group.state, self.target_key: reduced[offset : offset + count].copy()}
            offset += count


def reduce_blocks(values: Array, n_target: int, how: Reduce) -> Array:
    """Reduce ``values`` into ``n_target`` contiguous blocks (vectorised, no Python loop per asset)."""
    index = block_index(len(values), n_target).astype(np.int64)
    sums: Array = np.bincount(index, weights=values, minlength=n_target).astype(np.float64)
    if how == "sum":
        return sums
    if how == "mean":
        counts = np.bincount(index, minlength=n_target)
        out: Array = np.divide(sums, counts, out=np.zeros(n_target), where=counts > 0)
        return out
    fill = -np.inf if how == "max" else np.inf
    result = np.full(n_target, fill)
    (np.maximum if how == "max" else np.minimum).at(result, index, values)
    reduced: Array = np.where(np.isfinite(result), result, 0.0)
    return reduced


class PlantCoupling:
    """An ordered set of links applied together after each scan's stepping."""

    def __init__(self, links: Sequence[Link]) -> None:
        self.links = tuple(links)

    def apply(self, groups: Sequence[CoupledGroup]) -> None:
        for link in self.links:
            link.apply(groups)

    def __add__(self, other: PlantCoupling) -> PlantCoupling:
        return PlantCoupling(self.links + other.links)


def delivering(threshold: float) -> Callable[[Array], Array]:
    """Transform: 1.0 where an upstream speed exceeds ``threshold`` (a belt that moves parts)."""

    def transform(values: Array) -> Array:
        return (values > threshold).astype(np.float64)

    return transform


def machine_shop_coupling() -> PlantCoupling:
    """A conveyor feeds the mills and lathes on its PLC: a stopped belt starves them."""
    moving = delivering(0.05)
    return PlantCoupling(
        (
            Link("conveyor", "belt_speed", "cnc_mill", "part_supply", "mean", moving),
            Link("conveyor", "belt_speed", "lathe", "part_supply", "mean", moving),
        )
    )
