"""Message checks: every value a handler takes from a message goes through one of these, and a
message that breaks the protocol raises BadMessage."""
from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np


class BadMessage(ValueError):
    """A message that breaks the protocol: it is logged and skipped, nothing changes."""


def require(msg: dict[str, Any], key: str) -> Any:
    if key not in msg:
        raise BadMessage(f"missing key {key}")
    return msg[key]


def get_bool(msg: dict[str, Any], key: str) -> bool:
    value = require(msg, key)
    if not isinstance(value, bool):
        raise BadMessage(f"{key} must be true or false, got {value!r}")
    return value


def get_int(msg: dict[str, Any], key: str, minimum: int | None = None) -> int:
    value = require(msg, key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadMessage(f"{key} must be a whole number, got {value!r}")
    if minimum is not None and value < minimum:
        raise BadMessage(f"{key} must be at least {minimum}, got {value}")
    return value


def get_float(msg: dict[str, Any], key: str) -> float:
    value = require(msg, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadMessage(f"{key} must be a finite number, got {value!r}")
    return float(value)


def get_str(msg: dict[str, Any], key: str) -> str:
    value = require(msg, key)
    if not isinstance(value, str) or not value:
        raise BadMessage(f"{key} must be a non-empty string, got {value!r}")
    return value


def as_array(value: Any, what: str, shape: tuple[int | None, ...]) -> np.ndarray:
    """A finite float array of `shape` (None: any length) from JSON lists; a BadMessage otherwise.
    One NumPy conversion and vectorised checks, since this runs on every message."""
    try:
        array = np.array(value)  # numbers give int/float arrays; strings, None or ragged rows don't
    except (ValueError, TypeError):
        raise BadMessage(f"{what} must be a list of numbers with shape {shape}") from None
    if array.dtype.kind not in "if" or array.ndim != len(shape) or any(
            want is not None and have != want for have, want in zip(array.shape, shape)):
        raise BadMessage(f"{what} must be a list of numbers with shape {shape}, got {_describe(array)}")
    if _contains_bool(value):  # NumPy silently turns [true, 0.5] into [1.0, 0.5]
        raise BadMessage(f"{what} must hold numbers, not true/false")
    array = array.astype(np.float64, copy=False)
    if not np.isfinite(array).all():
        raise BadMessage(f"{what} contains NaN or infinite numbers")
    return array


def _describe(array: np.ndarray) -> str:
    return f"shape {array.shape} of {array.dtype}" if array.dtype.kind in "ifb" else f"{array.dtype} values"


def _contains_bool(value: Any) -> bool:
    """Whether a list (or a list of lists) from JSON holds true/false; the loop runs in C."""
    if not isinstance(value, list):
        return type(value) is bool
    if value and isinstance(value[0], list):
        value = itertools.chain.from_iterable(row for row in value if isinstance(row, list))
    return bool in map(type, value)


def as_vector(value: Any, what: str, length: int | None = None) -> np.ndarray:
    """A finite float vector, of `length` if given; a BadMessage otherwise."""
    return as_array(value, what, (length,))


def as_batch(value: Any, what: str, envs: int, width: int | None = None) -> np.ndarray:
    """One row per environment: the row itself for one environment (the tutorial's format), else a
    list of rows; a BadMessage for anything else."""
    if envs == 1:
        return as_vector(value, what, width)[np.newaxis]
    return as_array(value, what, (envs, width))


def get_actions(msg: dict[str, Any], key: str, envs: int, n_actions: int) -> np.ndarray:
    """A list of one action per environment (with one environment: [action])."""
    action = require(msg, key)
    if not (isinstance(action, list) and len(action) == envs
            and all(type(a) is int and 0 <= a < n_actions for a in action)):
        raise BadMessage(f"{key} must be a list of {envs} action(s) in 0..{n_actions - 1}, got {action!r:.200}")
    return np.array(action)


def get_per_env(msg: dict[str, Any], key: str, envs: int, kind: type) -> np.ndarray:
    """A float (kind float) or a flag (kind bool) per environment: the value itself for one
    environment, a list of values for more."""
    values = [require(msg, key)] if envs == 1 else require(msg, key)
    if not isinstance(values, list) or len(values) != envs:
        raise BadMessage(f"{key} must be a list of {envs} values, one per environment")
    if kind is bool:
        if not all(type(v) is bool for v in values):
            raise BadMessage(f"{key} must be true or false, got {msg[key]!r:.200}")
        return np.array(values)
    return as_vector(values, key, envs)


def unbatch(array: np.ndarray) -> list:
    """The inverse of as_batch: the row itself for one environment, else the list of rows."""
    return array[0].tolist() if len(array) == 1 else array.tolist()
