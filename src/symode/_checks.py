"""The checks of scalar arguments, written once.

The rule throughout symode: ``TypeError`` when a value is not of an accepted kind at all (a
string where a number belongs), ``ValueError`` when it is of the right kind but not allowed
(a negative step, a fractional count). Each message names the argument and what was passed.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import torch

__all__ = [
    "is_real",
    "check_bool",
    "positive_float",
    "optional_positive_float",
    "positive_int",
    "non_negative_int",
    "check_tolerance",
]


def is_real(x: Any) -> bool:
    """A real number that is not a bool."""
    return isinstance(x, Real) and not isinstance(x, bool)


def check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def positive_float(value: Any, name: str) -> float:
    """``value`` as a positive finite float (a one-element tensor is read as its value)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if not is_real(value):
        raise TypeError(f"{name} must be a positive number, got {value!r}")
    value = float(value)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return value


def optional_positive_float(value: Any, name: str) -> float | None:
    return None if value is None else positive_float(value, name)


def _integer(value: Any, name: str, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not (isinstance(value, Integral) or is_real(value)):
        raise TypeError(f"{name} must be {what}, got {value!r}")
    if not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def positive_int(value: Any, name: str) -> int:
    """``value`` as an int >= 1: ``TypeError`` for a non-number, ``ValueError`` for a number
    that is not a positive whole int (``0``, ``10.5``)."""
    return _integer(value, name, "a positive int", 1)


def non_negative_int(value: Any, name: str) -> int:
    """``value`` as an int >= 0 (the rules of :func:`positive_int`)."""
    return _integer(value, name, "a non-negative int", 0)


def check_tolerance(value: Any, name: str) -> None:
    """Raise unless ``value`` is a valid tolerance: positive and finite numbers or tensors (a
    tuple of them for tuple states)."""
    parts = value if isinstance(value, (tuple, list)) else (value,)
    if len(parts) == 0:
        raise ValueError(f"{name} must not be empty")
    for part in parts:
        if isinstance(part, torch.Tensor):
            if not (part.is_floating_point() or part.dtype in (torch.int32, torch.int64)):
                raise TypeError(f"{name} tensor must be real, got dtype {part.dtype}")
            if part.numel() == 0 or not bool(torch.all(part > 0)) or not bool(torch.all(torch.isfinite(part))):
                raise ValueError(f"{name} must be positive and finite everywhere, got {part!r}")
        elif is_real(part):
            if not (float(part) > 0 and math.isfinite(float(part))):
                raise ValueError(f"{name} must be positive and finite, got {part!r}; e.g. {name}=1e-6")
        else:
            raise TypeError(f"{name} must be a positive number or tensor, got {part!r}")
