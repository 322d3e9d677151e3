"""Contracts every registered asset type keeps: a sane tag table, finite outputs, pure steps."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.assets.registry import ASSET_TYPES
from devices.tags import Access, DataType, TagKind
from devices.units import UNITS

TYPES = sorted(ASSET_TYPES)


@pytest.mark.parametrize("name", TYPES)
def test_tag_table(name: str) -> None:
    model = ASSET_TYPES[name]()
    assert 8 <= len(model.tags) <= 25
    assert len({spec.key for spec in model.tags}) == len(model.tags)
    for spec in model.tags:
        if spec.datatype is DataType.FLOAT32:
            assert spec.unit in UNITS, spec.key
            assert spec.eu_range is not None, spec.key
        if spec.kind is TagKind.SETPOINT:
            assert spec.access is Access.RW, spec.key


@pytest.mark.parametrize("name", TYPES)
@settings(max_examples=8, deadline=None)
@given(dt=st.sampled_from([0.1, 1.0, 30.0, 600.0, 3600.0]), steps=st.integers(1, 30), seed=st.integers(0, 99))
def test_outputs_finite_and_step_pure(name: str, dt: float, steps: int, seed: int) -> None:
    model = ASSET_TYPES[name]()
    rng = np.random.default_rng(seed)
    state = model.initial_state(5, rng)
    for _ in range(steps):
        before = {key: value.copy() for key, value in state.items()}
        new = model.step(state, dt, rng)
        for key, value in before.items():
            assert np.array_equal(state[key], value), f"step mutated {key}"
        state = new
        outputs = model.outputs(state)
        for spec in model.tags:
            values = np.asarray(outputs[spec.key])
            assert values.shape == (5,)
            assert np.all(np.isfinite(values)), spec.key
            if spec.datatype in (DataType.BOOL,):
                assert set(np.unique(values)) <= {0.0, 1.0}, spec.key
            if spec.datatype is DataType.ENUM:
                assert np.all((values >= 0) & (values < len(spec.enum_strings))), spec.key
