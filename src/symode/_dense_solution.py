"""``DenseSolution``: a solve that can be evaluated, with its derivative, at any time of its span.

It keeps, per accepted step, the start state and the stage derivatives the continuous extension
uses (``symode._dense``), as the forward solve computed them: with their autograd graph when the
solve was differentiated (by backprop), so an evaluation is differentiable in ``y0``, the
parameters and the time it is evaluated at. ``theta`` and the weights ``b_i(theta)`` are
computed in torch from the evaluation times (float64, then the state's dtype), so the
gradient with respect to them is the interpolant's time derivative.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ._state import State, StateLayout
from ._tableau import ButcherTableau

__all__ = ["DenseSolution"]


class DenseSolution:
    """The solution of ``symode.solve(..., dense=True)`` (and ``symode.odeint_dense``) as a
    function of time on ``[t0, t1]`` (either order).

    ``sol(t)``: the state at ``t``, a float, a 0-dim tensor (the result has ``y0``'s shape) or
    a 1-D tensor of times (the result has shape ``(len(t), *y0.shape)``; tuples for a tuple
    ``y0``); ``sol.derivative(t)``: ``dy/dt`` of the interpolant there. Times outside the span
    raise ``ValueError``. Each step's interpolant is the method's continuous extension, so
    ``sol(t)`` agrees with ``symode.solve``'s interpolated outputs at ``t`` to round-off; at a
    step end it is that step's state up to round-off.

    Attributes:
        t0, t1: the span, as floats.
        grid: the accepted step ends, float64, ``t0`` first.
    """

    def __init__(
        self,
        tableau: ButcherTableau,
        grid: Sequence[float],
        states: Sequence[torch.Tensor],
        derivatives: Sequence[Sequence[torch.Tensor | None]],
        layout: StateLayout,
    ):
        rows = tableau.b_dense
        assert rows is not None  # an interpolation tableau
        self._layout = layout
        self.grid = torch.tensor(list(grid), dtype=torch.float64)
        self.t0, self.t1 = float(grid[0]), float(grid[-1])
        y = states[0]
        self._states = torch.stack(list(states[:-1])) if len(states) > 1 else y[None]
        self._last = states[-1]
        used = [i for i, row in enumerate(rows) if any(c != 0.0 for c in row)]
        self._ks: torch.Tensor | None = None
        if len(states) > 1:
            zero = torch.zeros_like(y)
            self._ks = torch.stack([torch.stack([_or(ks[i], zero) for i in used]) for ks in derivatives])
        self._coefficients = torch.tensor([rows[i] for i in used], dtype=torch.float64)  # (S, P)

    def __repr__(self) -> str:
        return f"DenseSolution(t0={self.t0!r}, t1={self.t1!r}, {len(self.grid) - 1} steps)"

    def __call__(self, t: Any) -> State:
        return self._evaluate(t, derivative=False)

    def derivative(self, t: Any) -> State:
        """``dy/dt`` of the interpolant at ``t`` (as for calling the solution)."""
        return self._evaluate(t, derivative=True)

    def _evaluate(self, t: Any, derivative: bool) -> State:
        times = t if isinstance(t, torch.Tensor) else torch.as_tensor(t, dtype=torch.float64)
        if times.ndim > 1 or times.is_complex() or times.dtype == torch.bool:
            raise ValueError(f"t must be a time or a 1-D tensor of times, got shape {tuple(times.shape)}")
        scalar = times.ndim == 0
        times = times.reshape(-1).to(device="cpu", dtype=torch.float64)
        low, high = min(self.t0, self.t1), max(self.t0, self.t1)
        values = times.detach()
        if values.numel() and (not bool(torch.isfinite(values).all()) or values.min() < low or values.max() > high):
            raise ValueError(
                f"t = {values.tolist() if values.numel() < 8 else '...'} reaches outside the solved span "
                f"[{self.t0!r}, {self.t1!r}]; solve over a span that holds every time you evaluate"
            )
        flat = self._interpolate(times, derivative)
        out = self._layout.unflatten(flat, (flat.shape[0],))
        if scalar:
            return out[0] if isinstance(out, torch.Tensor) else tuple(c[0] for c in out)
        return out

    def _interpolate(self, times: torch.Tensor, derivative: bool) -> torch.Tensor:
        y = self._states
        if self._ks is None:  # a single time: no step
            value = torch.zeros_like(self._last) if derivative else self._last
            return value.expand(times.shape[0], *value.shape)
        sign = 1.0 if self.t1 >= self.t0 else -1.0
        grid = sign * self.grid
        # step n holds (t_n, t_{n+1}]; t0 itself is the start of step 0
        idx = torch.searchsorted(grid, sign * times.detach(), right=False).sub(1).clamp(0, len(self.grid) - 2)
        start, h = self.grid[idx], self.grid[idx + 1] - self.grid[idx]
        theta = (times - start) / h  # float64; differentiable in times
        powers = torch.arange(1, self._coefficients.shape[1] + 1, dtype=torch.float64)
        if derivative:
            basis = powers * theta[:, None] ** (powers - 1)  # d/dtheta theta**p
            weights = (basis @ self._coefficients.T).to(y.dtype)  # (M, S): b_i'(theta)
            scale = None
        else:
            weights = (theta[:, None] ** powers @ self._coefficients.T).to(y.dtype)  # b_i(theta)
            scale = h.to(y.dtype)
        device = y.device
        at = idx.to(device)
        ks = self._ks[at]  # (M, S, *shape)
        extra = (1,) * (ks.ndim - 2)
        total = (weights.to(device).reshape(*weights.shape, *extra) * ks).sum(1)
        if scale is None:
            return total
        return y[at] + scale.to(device).reshape(-1, *extra) * total


def _or(k: torch.Tensor | None, zero: torch.Tensor) -> torch.Tensor:
    return zero if k is None else k
