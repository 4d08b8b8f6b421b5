"""The first step of an adaptive solve: Hairer's heuristic (Hairer, Norsett & Wanner, Solving
ODEs I, II.4), on Python floats and detached tensors."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["initial_step"]

Norm = Callable[[torch.Tensor], torch.Tensor]


def initial_step(
    rhs,
    t0: float,
    y0: torch.Tensor,
    f0: torch.Tensor,
    direction: float,
    error_order: int,
    rtol,
    atol,
    norm: Norm,
    span: float,
) -> float:
    """Hairer's heuristic for the first step (costs one evaluation of ``rhs``).

    ``rtol``/``atol`` are floats or tensors shaped like ``y0``; ``span`` is ``|t_end - t0|``
    and bounds the result. Runs without gradient; returns a positive float (0.0 when
    ``span`` is 0: a single output time, no step).
    """
    if not span > 0.0:
        return 0.0  # a single output time: no step is taken (and h0 = 0 would divide by zero below)
    with torch.no_grad():
        scale = atol + rtol * y0.abs()
        d0 = float(norm(y0 / scale))
        d1 = float(norm(f0 / scale))
        if not (math.isfinite(d0) and math.isfinite(d1)):
            return span  # the caller's checks report the non-finite state
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        h0 = min(h0, span)
        y1 = y0 + (direction * h0) * f0
        f1 = rhs(t0 + direction * h0, y1)
        d2 = float(norm((f1 - f0) / scale)) / h0
        if not math.isfinite(d2):
            return h0
        if max(d1, d2) <= 1e-15:
            h1 = max(1e-6, h0 * 1e-3)
        else:
            h1 = (0.01 / max(d1, d2)) ** (1.0 / (error_order + 1))
        return min(100 * h0, h1, span)
