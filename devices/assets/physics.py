"""Numerical helpers shared by the asset models, written so that any step size stays stable.

Models are stepped at 100 ms in a running plant but at minutes or hours in tests and in fast
scenarios, so every first-order lag uses the exact discretisation ``1 - exp(-dt / tau)`` instead of
the explicit Euler factor ``dt / tau``, which overshoots and diverges once dt exceeds tau.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from devices.assets.base import Array, AssetModel, State


def approach(value: Array, target: Array | float, dt: float, tau: float) -> Array:
    """First-order lag towards ``target`` with time constant ``tau``, exact for any ``dt``."""
    gain = float(-np.expm1(-dt / tau))
    out: Array = value + (target - value) * gain
    return out


def ou_noise(value: Array, sigma: float, dt: float, tau: float, rng: np.random.Generator) -> Array:
    """Zero-mean Ornstein-Uhlenbeck noise with stationary deviation ``sigma`` (exact update)."""
    keep = np.exp(-dt / tau)
    out: Array = value * keep + sigma * np.sqrt(1.0 - keep * keep) * rng.standard_normal(value.shape)
    return out


def smoothstep(x: Array) -> Array:
    """Position profile of a move with zero speed at both ends (jerk-limited axes look like this)."""
    x = np.clip(x, 0.0, 1.0)
    out: Array = x * x * (3.0 - 2.0 * x)
    return out


def smoothstep_rate(x: Array) -> Array:
    """Derivative of ``smoothstep``: the normalised speed along the move."""
    x = np.clip(x, 0.0, 1.0)
    out: Array = 6.0 * x * (1.0 - x)
    return out


def tag_outputs(model: AssetModel, state: State) -> Mapping[str, Array]:
    """Every tag straight from the state array of the same key (the common case)."""
    return {spec.key: state[spec.key] for spec in model.tags}


def as_flag(condition: npt.NDArray[np.bool_]) -> Array:
    """A boolean mask as the 0.0/1.0 floats the state arrays hold."""
    return condition.astype(np.float64)
