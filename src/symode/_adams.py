"""torchdiffeq's fixed-step Adams methods: ``explicit_adams`` and ``implicit_adams`` (also ``fixed_adams``).

The behaviour is torchdiffeq's (``fixed_adams.py``), step for step:

* Every step evaluates ``f0 = f(t_n, y_n)`` and puts it at the front of the history of
  derivatives (at most ``max_order - 1`` of them, default 11).
* While the history holds fewer than 3 derivatives (the first two steps), the step is
  Runge-Kutta's 3/8 rule (torchdiffeq's ``rk4``) from ``f0``.
* Then ``explicit_adams`` takes the Adams-Bashforth step with as many past derivatives as the
  history holds, ``y_{n+1} = y_n + h sum_j beta_j f_{n-j}``: one evaluation of ``f`` per step.
* ``implicit_adams`` corrects that prediction with Adams-Moulton one order higher, by
  functional iteration: ``y_{n+1} = y_n + h (alpha_0 f(t_{n+1}, y_{n+1}) + sum_j alpha_{j+1}
  f_{n-j})``, at most ``max_iters`` (default 4) evaluations, until two successive increments
  agree to ``max |d - d'| / (atol + rtol max(|d|, |d'|)) < 1``. An iteration that does not
  converge warns (as torchdiffeq does) and drops the oldest derivative of the history.

The coefficients assume equal steps (they are those of a uniform grid whatever the grid is,
as in torchdiffeq). They are computed here, exactly in rationals, by integrating the Lagrange
polynomials through the history's nodes.

Gradients: these are multistep methods, so the gradient methods built on one-step
Runge-Kutta structure (the symplectic adjoint, revolve, the continuous adjoint's
reuse of the forward method) do not apply and are refused. ``"backprop"`` differentiates the
loop; ``Checkpoint()`` keeps each step's state and derivative and recomputes one step at a
time in the backward pass; ``OneCheckpoint()`` keeps ``y0`` only and recomputes the whole
solve. All three compute the same gradient (the recomputations replay the random generators).
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from functools import cache
from typing import Any

import torch
import torch.utils.checkpoint

from ._runge_kutta import Nudged
from ._solve import _output_times
from ._state import State, StateLayout
from ._step_size import FixedSteps
from .gradients import Backprop, Checkpoint, GradientMethod, OneCheckpoint, get_gradient_method

__all__ = ["ADAMS_METHODS", "ADAMS_OPTIONS", "adams_solve", "adams_coefficients"]

ADAMS_METHODS = ("explicit_adams", "implicit_adams", "fixed_adams")  # fixed_adams: implicit_adams
#: the options of the Adams methods besides the fixed-step ones
ADAMS_OPTIONS = ("max_order", "max_iters")
_MIN_ORDER, _MAX_ORDER, _MAX_ITERS = 4, 12, 4


@cache
def adams_coefficients(k: int, implicit: bool) -> tuple[float, ...]:
    """The weights of ``f_{n+1}`` (implicit only), ``f_n``, ..., ``f_{n-k+1}`` in
    ``(y_{n+1} - y_n) / h`` of the ``k``-step Adams-Bashforth (``implicit=False``) or
    Adams-Moulton method: the integrals over ``[0, 1]`` of the Lagrange polynomials through
    the nodes (in steps from ``t_n``) ``1`` (implicit), ``0, -1, ..., -(k-1)``."""
    nodes = ([1] if implicit else []) + [-j for j in range(k)]
    weights = []
    for m, s_m in enumerate(nodes):
        poly = [Fraction(1)]  # coefficients of the Lagrange basis polynomial, lowest power first
        for i, s_i in enumerate(nodes):
            if i != m:
                scale = Fraction(1, s_m - s_i)
                poly = [(a - s_i * b) * scale for a, b in zip([Fraction(0), *poly], [*poly, Fraction(0)])]
        weights.append(float(sum(c / (p + 1) for p, c in enumerate(poly))))
    return tuple(weights)


def adams_solve(
    func: Callable[..., Any],
    y0: State,
    t: Any,
    steps: FixedSteps,
    *,
    implicit: bool,
    rtol: Any,
    atol: Any,
    options: Mapping[str, Any],
    gradient: str | GradientMethod,
) -> State:
    """The states at ``t`` of the Adams solve (see the module docstring); ``options`` holds
    ``max_order`` and ``max_iters`` if given."""
    method = "implicit_adams" if implicit else "explicit_adams"
    max_order, max_iters = _orders(options)
    grad_method = get_gradient_method(gradient)
    if not isinstance(grad_method, (Backprop, Checkpoint, OneCheckpoint)):
        raise ValueError(
            f"method={method!r} is a multistep method: gradient={grad_method!r} is defined for one-step Runge-Kutta "
            f"methods only. Use gradient='backprop', symode.Checkpoint() or symode.OneCheckpoint() (odeint, "
            f"odeint_checkpoint, odeint_onecheckpoint), or a Runge-Kutta method such as 'rk4' or 'dopri5'"
        )
    layout = StateLayout.of(y0)
    ts, t_out = _output_times(t)
    if ts.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"method={method!r} does not differentiate with respect to t: pass t.detach()")
    flat_func = layout.wrap(func)
    y = layout.flat_y0
    if len(t_out) == 1:
        return layout.unflatten(y[None], (1,))
    tol = tuple(
        torch.as_tensor(layout.tolerance(x, name), dtype=y.dtype, device=y.device)
        for x, name in ((rtol, "rtol"), (atol, "atol"))
    )
    solver = _Adams(flat_func, y, steps, implicit, max_order, max_iters, tol)
    points, out_idx, _ = steps.plan(t_out)
    buffers = tuple(func.buffers()) if isinstance(func, torch.nn.Module) else ()
    versions = [b._version for b in buffers]
    if isinstance(grad_method, OneCheckpoint) and torch.is_grad_enabled():

        def run(y_: torch.Tensor) -> torch.Tensor:
            return torch.stack(solver.run(y_, points, t_out, out_idx, False))

        ys = torch.utils.checkpoint.checkpoint(run, y, use_reentrant=False)
    else:
        with_checkpoints = isinstance(grad_method, Checkpoint) and torch.is_grad_enabled()
        ys = torch.stack(solver.run(y, points, t_out, out_idx, with_checkpoints))
    if not isinstance(grad_method, Backprop) and [b._version for b in buffers] != versions:
        raise ValueError(
            f"func changed its buffers during the solve (e.g. BatchNorm's running statistics in training mode): "
            f"{grad_method!r} recomputes the steps in the backward pass, which would see the changed values. "
            f"Use gradient='backprop', or func.eval()"
        )
    return layout.unflatten(ys, (ys.shape[0],))


class _Adams:
    """One Adams solve on the flat state."""

    def __init__(self, func, y0, steps: FixedSteps, implicit, max_order, max_iters, tol):
        self.func, self.steps, self.implicit = func, steps, implicit
        self.max_order, self.max_iters = max_order, max_iters
        self.rtol, self.atol = tol
        self.dtype, self.device = y0.dtype, y0.device
        self.unconverged: list[float] = []

    def time(self, t: float) -> torch.Tensor:
        value = torch.scalar_tensor(t, dtype=self.dtype, device=self.device)
        if isinstance(t, Nudged):
            value = torch.nextafter(value, torch.full_like(value, t.toward * math.inf))
        return value

    def run(self, y, points: Sequence[float], t_out, out_idx, checkpoints: bool) -> list[torch.Tensor]:
        """The states at the output times; ``checkpoints``: each step under ``torch.utils.checkpoint``."""
        history: deque[torch.Tensor] = deque(maxlen=self.max_order - 1)
        ends, derivatives = [y], []
        interp = self.steps.interp
        for t0, t1 in zip(points, points[1:]):
            if checkpoints:
                y, f0, ok = torch.utils.checkpoint.checkpoint(
                    self.step, t0, t1, y, *history, use_reentrant=False, determinism_check="none"
                )
            else:
                y, f0, ok = self.step(t0, t1, y, *history)
            history.appendleft(f0)
            if not ok:
                warnings.warn(
                    f"implicit_adams: the functional iteration did not converge in the step from t={t0} to t={t1}; "
                    f"the solution may be inaccurate (take smaller steps, or raise options['max_iters'])",
                    stacklevel=4,
                )
                history.pop()
            ends.append(y)
            derivatives.append(f0)
        if interp is None:
            return [ends[i] for i in out_idx]
        return [self.interpolate(points, ends, derivatives, i, s) for i, s in zip(out_idx, t_out)]

    def step(self, t0: float, t1: float, y: torch.Tensor, *history: torch.Tensor):
        """``(y1, f0, converged)`` of the step from ``t0`` to ``t1``; ``history``: the past
        derivatives, newest first."""
        perturb = self.steps.perturb
        sign = 1.0 if t1 > t0 else -1.0
        start, end = (Nudged(t0, sign), Nudged(t1, -sign)) if perturb else (t0, t1)
        dt = t1 - t0
        f0 = self.func(self.time(start), y)
        past = (f0, *history)[: self.max_order - 1]
        k = len(past)
        if k < _MIN_ORDER - 1:  # the 3/8 rule while the history is short
            k2 = self.func(self.time(t0 + dt / 3), y + dt / 3 * f0)
            k3 = self.func(self.time(t0 + 2 * dt / 3), y + dt * (k2 - f0 / 3))
            k4 = self.func(self.time(end), y + dt * (f0 - k2 + k3))
            return y + dt / 8 * (f0 + 3 * (k2 + k3) + k4), f0, True
        dy = _combine(dt, adams_coefficients(k, False), past)
        if not self.implicit:
            return y + dy, f0, True
        alpha = adams_coefficients(k, True)  # one order higher: the new point as well as the k past ones
        delta = _combine(dt, alpha[1:], past)
        converged = False
        for _ in range(self.max_iters):
            previous = dy
            dy = dt * alpha[0] * self.func(self.time(end), y + dy) + delta
            scale = self.atol + self.rtol * torch.maximum(previous.abs(), dy.abs())
            converged = bool(((previous - dy).abs() / scale).max() < 1)
            if converged:
                break
        return y + dy, f0, converged

    def interpolate(self, points, ends, derivatives, i: int, s: float) -> torch.Tensor:
        """The output at time ``s`` in step ``i - 1 -> i``: linear, or cubic Hermite (``f`` at
        the step's end evaluated anew)."""
        t0, t1, y0, y1 = points[i - 1], points[i], ends[i - 1], ends[i]
        if s == t0:
            return y0
        if s == t1:
            return y1
        h, u = t1 - t0, (s - t0) / (t1 - t0)
        if self.steps.interp == "linear":
            return y0 + u * (y1 - y0)
        f1 = self.func(self.time(t1), y1)
        h00, h10, h01, h11 = (1 + 2 * u) * (1 - u) ** 2, u * (1 - u) ** 2, u * u * (3 - 2 * u), u * u * (u - 1)
        return h00 * y0 + h10 * h * derivatives[i - 1] + h01 * y1 + h11 * h * f1


def _combine(dt: float, weights: Sequence[float], fs: Sequence[torch.Tensor]) -> torch.Tensor:
    out = (dt * weights[0]) * fs[0]
    for w, f in zip(weights[1:], fs[1:]):
        out = out + (dt * w) * f
    return out


def _orders(options: Mapping[str, Any]) -> tuple[int, int]:
    values = []
    for key, default in (("max_order", _MAX_ORDER), ("max_iters", _MAX_ITERS)):
        v = options.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"options[{key!r}] must be a positive integer, got {v!r}")
        values.append(v)
    if values[0] > _MAX_ORDER:
        raise ValueError(f"options['max_order'] must be at most {_MAX_ORDER} (torchdiffeq's limit), got {values[0]}")
    if values[0] < _MIN_ORDER:
        warnings.warn(f"max_order is below {_MIN_ORDER}, so the solver reduces to the 3/8 rule ('rk38')", stacklevel=4)
    return values[0], values[1]
