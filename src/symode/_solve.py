"""``symode.solve``: input validation, the dtype policy, dispatch to a gradient method.

Dtype policy (stated once, applied here):

* The state's dtype is ``y0``'s: a real floating dtype; every tuple component shares it and
  its device. All arithmetic on the state (stages, weights, error estimate) is done in it.
* Output times ``t`` may have any real dtype. The time loop works on them as Python floats
  (float64): step sizes, clipping to output times and stage times are computed in float64,
  so a float32 state does not degrade the time grid.
* ``func`` receives ``t`` as a 0-dim tensor of the state's dtype on the state's device and
  ``y`` of the state's dtype; it must return the state's shape and dtype (else ``TypeError``
  or ``ValueError``).
* ``rtol``/``atol`` tensors are cast to the state's dtype.
* The output ``ys`` has the state's dtype; ``Solution.ts`` is ``t`` as given.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ._checks import check_bool
from ._dense import fixed_grid_tableau, interpolation_tableau
from ._dense_solution import DenseSolution
from ._events import EventHit, as_events, solve_to_event
from ._ivp import ODEProblem, StepCallbacks
from ._methods import get_tableau
from ._newton import Newton
from ._state import State, StateLayout
from ._stats import Stats
from ._step_size import AdaptiveSteps, FixedSteps
from ._tableau import ButcherTableau
from .gradients import Backprop, GradientMethod, get_gradient_method

__all__ = ["Solution", "solve"]


@dataclass
class Solution:
    """The result of ``symode.solve``.

    Attributes:
        ts: the output times, as given.
        ys: the states at ``ts``: a tensor of shape ``(len(t), *y0.shape)``, or a tuple of
            them for a tuple ``y0``.
        stats: accepted/rejected steps and evaluations of ``f`` forward and backward (the
            backward counts fill in when ``.backward()`` runs).
        grid: the accepted step endpoints (float64), ``t[0]`` first.
        dense: with ``solve(..., dense=True)``, the solution as a function of time on
            ``[t[0], t[-1]]`` (``symode.DenseSolution``: ``sol.dense(t)``,
            ``sol.dense.derivative(t)``); else ``None``.
        event: with ``solve(..., event=...)``, the event that stopped the solve
            (``symode.EventHit``: which event function, which component, when), or ``None``.
    """

    ts: torch.Tensor
    ys: State
    stats: Stats
    grid: torch.Tensor
    dense: DenseSolution | None = None
    event: EventHit | None = None


def solve(
    func: Callable[..., Any],
    y0: State,
    t: Any,
    *,
    method: str | ButcherTableau = "dopri5",
    steps: FixedSteps | AdaptiveSteps | None = None,
    gradient: str | GradientMethod = "backprop",
    adjoint_params: Sequence[torch.Tensor] | None = None,
    compile: bool = False,
    dense: bool = False,
    event: Any = None,
    newton: Newton | None = None,
) -> Solution:
    """Solve ``dy/dt = func(t, y)``, ``y(t[0]) = y0``, and return the states at the times ``t``.

    Args:
        func: ``func(t, y) -> dy/dt``; an ``nn.Module`` or any callable. ``y`` and the result
            have ``y0``'s structure (a tensor, or a tuple of tensors).
        y0: the initial state: a floating tensor or a tuple of them.
        t: 1-D, strictly increasing or strictly decreasing output times; ``t[0]`` is the
            initial time. With adaptive steps the times between ``t[0]`` and ``t[-1]`` are
            interpolated within the steps (dense output; ``AdaptiveSteps(interpolate=False)``
            makes each one a step end); with fixed steps each is a step end.
        method: a name from ``symode.TABLEAUS`` or a ``ButcherTableau``.
        steps: ``FixedSteps(step_size=h)`` / ``FixedSteps(grid=...)``, or
            ``AdaptiveSteps(rtol=..., atol=..., ...)``; default ``AdaptiveSteps()`` for
            methods with an error estimate (a fixed method needs ``FixedSteps``).
        gradient: how to differentiate: ``"backprop"``, ``"symplectic_adjoint"`` or a
            ``GradientMethod`` object such as ``symode.SymplecticAdjoint()``.
        adjoint_params: the tensors to differentiate besides ``y0``; default: the parameters
            of ``func`` if it is an ``nn.Module``, else none. Used by the adjoint methods;
            backprop differentiates whatever ``func`` uses.
        compile: take the forward steps with ``torch.compile``: each step (every stage's
            call of ``func`` and every combination) becomes one fused graph, which pays where
            per-operation overhead dominates (small networks). The first solve of a
            configuration compiles; results agree with an eager solve to round-off. Not with
            backprop through a ``func`` that differentiates itself (torch.compile has no
            double backward).
        dense: also return the solution as a function of time (``Solution.dense``): every
            step's stages are kept (with their graph), so it is differentiated by backprop
            only: with a gradient wanted, ``gradient`` must be ``"backprop"``. (Every exact
            method differentiates the states at the times ``t`` asked for, interpolated, with
            its own memory.)
        event: stop at an event: a ``symode.Event`` (or a callable ``fn(t, y)``, or a list of
            them): the solve ends where a component of one first changes sign, located on
            the dense output (``symode.Event``). ``t`` is then ``[t0, t_end]``, the span
            searched. With an event, ``Solution.ts`` is ``[t0, t_event]``, ``ys`` the states
            there and ``Solution.event`` which event it was; without one by ``t_end``, the
            solve ends there (``Solution.event`` is ``None``). The event time and state are
            differentiable in ``y0``, the parameters, ``t0`` and what ``fn`` depends on, by
            every gradient method (the implicit function theorem: ``symode._events``).
        newton: with an implicit method (``kvaerno5``, ``radauIIA5``, ...): how its stage
            equations are solved, a ``symode.Newton`` (tolerances, iterations); default
            ``symode.Newton()``.

    Returns:
        Solution: the states at ``t``, the accepted grid and the counts.

    Raises:
        TypeError, ValueError: a bad argument (the message names it and the fix).
        SolveError: the solve cannot succeed (step size underflow, too many steps, a
            non-finite state), with the time it reached.
    """
    problem, grad_method, ts = setup(
        func, y0, t, method, steps, gradient, adjoint_params, compile, dense, event, newton
    )
    layout = problem.layout
    if event is not None:
        if len(problem.t_out) != 2:
            raise ValueError(
                f"with event, t must be [t0, t_end] (the span the event is looked for in), got {len(problem.t_out)} "
                f"times; evaluate the solution at other times with a second solve"
            )
        ys, trajectory, hit, t_event = solve_to_event(problem, grad_method, as_events(event), ts, bounded=True)
        grid = torch.tensor(trajectory.grid, dtype=torch.float64)
        if hit is not None:
            ts = torch.stack([ts[0], t_event])
        return Solution(ts=ts, ys=layout.unflatten(ys, (2,)), stats=problem.stats, grid=grid, event=hit)
    if dense:
        ys, trajectory, dense_solution = _dense_solve(problem, grad_method, ts)
    else:
        (ys, trajectory), dense_solution = grad_method.solve(problem), None
    grid = torch.tensor(trajectory.grid, dtype=torch.float64)
    return Solution(
        ts=ts, ys=layout.unflatten(ys, (ys.shape[0],)), stats=problem.stats, grid=grid, dense=dense_solution
    )


def setup(
    func: Callable[..., Any],
    y0: State,
    t: Any,
    method: str | ButcherTableau = "dopri5",
    steps: FixedSteps | AdaptiveSteps | None = None,
    gradient: str | GradientMethod = "backprop",
    adjoint_params: Sequence[torch.Tensor] | None = None,
    compile: bool = False,
    dense: bool = False,
    event: Any = None,
    newton: Newton | None = None,
) -> tuple[ODEProblem, GradientMethod, torch.Tensor]:
    """``solve``'s checks: the ``ODEProblem``, the gradient method and the output times tensor."""
    if not callable(func):
        raise TypeError(f"func must be callable as func(t, y), got {func!r}")
    tableau = get_tableau(method)
    grad_method = get_gradient_method(gradient)
    check_bool(compile, "compile")
    check_bool(dense, "dense")
    layout = StateLayout.of(y0)
    ts, t_out = _output_times(t)
    newton = _check_implicit(tableau, newton, compile, layout.flat_y0.dtype, layout.flat_y0.numel())
    if steps is None:
        steps = AdaptiveSteps()
    elif not isinstance(steps, (FixedSteps, AdaptiveSteps)):
        raise TypeError(f"steps must be symode.FixedSteps or symode.AdaptiveSteps, got {steps!r}")
    if isinstance(steps, AdaptiveSteps):
        tableau.check_adaptive()
        if steps.interpolate:
            tableau = interpolation_tableau(tableau)
    elif steps.interp is not None:  # FixedSteps interpolating its output times (torchdiffeq's interp)
        tableau = fixed_grid_tableau(tableau, steps.interp)
    if (dense or event is not None) and tableau.b_dense is None:
        tableau = interpolation_tableau(tableau)
    params, explicit = _parameters(func, adjoint_params)
    if ts.requires_grad and not grad_method.time_gradient:
        warnings.warn(
            f"t requires grad, but {grad_method!r} does not differentiate with respect to the "
            f"output times: t gets no gradient",
            stacklevel=2,
        )
    rtol = atol = norm = None
    if isinstance(steps, AdaptiveSteps):
        rtol, atol, norm = layout.tolerance(steps.rtol, "rtol"), layout.tolerance(steps.atol, "atol"), layout.norm
        if steps.norm is not None:
            norm = _user_norm(steps.norm, layout)
        _check_resolvable(rtol, layout.flat_y0.dtype)
    problem = ODEProblem(
        func=layout.wrap(func),
        y0=layout.flat_y0,
        t_out=t_out,
        tableau=tableau,
        steps=steps,
        layout=layout,
        rtol=rtol,
        atol=atol,
        norm=norm,
        params=params,
        params_explicit=explicit,
        buffers=tuple(func.buffers()) if isinstance(func, torch.nn.Module) else (),
        t=ts if ts.requires_grad and ts.is_floating_point() and grad_method.time_gradient else None,
        compile=compile,
        callbacks=StepCallbacks.of(func, layout),
        adjoint_callbacks=StepCallbacks.of(func, layout, "_adjoint"),
        newton=newton,
    )
    if dense and event is not None:
        raise ValueError("dense=True and event exclude each other: give one")
    return problem, grad_method, ts


def _check_implicit(tableau: ButcherTableau, newton: Any, compile: bool, dtype: torch.dtype, numel: int) -> Newton:
    """``newton`` checked (an explicit method takes none), and what implicit methods exclude."""
    if newton is not None and not isinstance(newton, Newton):
        raise TypeError(f"newton must be a symode.Newton(...), got {newton!r}")
    if not tableau.implicit:
        if newton is not None:
            raise ValueError(f"newton= applies to implicit methods; {tableau.name!r} is explicit")
        return Newton()
    if compile:
        raise ValueError(
            f"compile=True compiles explicit steps; the implicit method {tableau.name!r} solves its stages by "
            f"Newton's method, step by step: use compile=False"
        )
    if dtype in (torch.float16, torch.bfloat16):
        name = str(dtype).replace("torch.", "")
        raise ValueError(
            f"the implicit method {tableau.name!r} factorises its Newton matrices, which {name} cannot: solve in "
            f"float32 or float64 (y0.float())"
        )
    newton = newton or Newton()
    if newton.jacobian == "dense" and numel > DENSE_JACOBIAN_LIMIT:
        raise ValueError(
            f"the implicit method {tableau.name!r} forms the Jacobian of f, and the state has {numel} numbers: a "
            f"dense Jacobian would take {numel}^2 entries and {numel} products per step. If y0's first dimension "
            f"is a batch of independent samples (a neural ODE on a batch), pass newton=symode.Newton(jacobian="
            f"'batched'); else newton=symode.Newton(jacobian='krylov') (matrix-free: GMRES with Jacobian-vector "
            f"products)"
        )
    return newton


#: the largest state an implicit method forms the dense Jacobian of (8192^2 float64 entries: 0.5 GB)
DENSE_JACOBIAN_LIMIT = 8192


def _user_norm(norm: Callable[[Any], Any], layout: StateLayout) -> Callable[[torch.Tensor], torch.Tensor]:
    """The user's error norm on the flat state: it is handed the state in ``y0``'s structure."""

    def flat_norm(x: torch.Tensor) -> torch.Tensor:
        value = norm(layout.unflatten(x))
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value, dtype=torch.float64)
        if value.numel() != 1:
            raise ValueError(f"norm must return a scalar, got a tensor of shape {tuple(value.shape)}")
        return value.reshape(())

    return flat_norm


def _dense_solve(problem: ODEProblem, grad_method: GradientMethod, ts: torch.Tensor):
    """The forward solve keeping every step's stage derivatives, differentiated by backprop."""
    if problem.requires_grad and not isinstance(grad_method, Backprop):
        raise ValueError(
            f"dense=True keeps every step's stages, with their graph, and is differentiated by backprop only; "
            f"got gradient={grad_method!r}. Use gradient='backprop', or pass the times you need as t (the states "
            f"there are interpolated and every exact method differentiates them with its own memory)"
        )
    if ts.requires_grad:
        raise ValueError(
            "dense=True: t must not require grad (the dense solution is differentiable in y0, the parameters "
            "and the times it is evaluated at, not in its own span); evaluate it at times that require grad"
        )
    if problem.compile:
        raise ValueError("dense=True takes its steps eagerly: use compile=False")
    trajectory = problem.integrate(keep_states=True, keep_derivatives=True)
    assert trajectory.ys is not None and trajectory.derivatives is not None  # kept on request
    solution = DenseSolution(problem.tableau, trajectory.grid, trajectory.ys, trajectory.derivatives, problem.layout)
    return torch.stack(trajectory.outputs), trajectory, solution


# --------------------------------------------------------------------------------------
def _check_resolvable(rtol: float | torch.Tensor, dtype: torch.dtype) -> None:
    """A float16/bfloat16 state cannot be held to a relative tolerance below its resolution:
    the controller would shrink the steps until their increments round away."""
    if dtype not in (torch.float16, torch.bfloat16):
        return
    eps = torch.finfo(dtype).eps
    largest = float(rtol.max()) if isinstance(rtol, torch.Tensor) else rtol
    if largest < eps:
        name = str(dtype).replace("torch.", "")
        raise ValueError(
            f"rtol = {largest:g} is finer than a {name} state resolves (its machine epsilon is {eps:g}): give "
            f"rtol >= {eps:g} (e.g. rtol=1e-2), or solve in float32 (y0.float())"
        )


def _output_times(t: Any) -> tuple[torch.Tensor, list[float]]:
    if not isinstance(t, torch.Tensor):
        try:
            t = torch.as_tensor(t)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"t must be a 1-D tensor of times, got {t!r}") from None
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"t must be a 1-D tensor with at least one time, got shape {tuple(t.shape)}")
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"t must hold real times, got dtype {t.dtype}")
    t_out = t.detach().to("cpu", torch.float64).tolist()
    if not all(math.isfinite(v) for v in t_out):
        raise ValueError(f"t must be finite, got {t_out}")
    if len(t_out) > 1:
        diffs = [b - a for a, b in zip(t_out, t_out[1:])]
        if not (all(d > 0 for d in diffs) or all(d < 0 for d in diffs)):
            increasing = diffs[0] > 0
            bad = next(i for i, d in enumerate(diffs) if (d <= 0 if increasing else d >= 0))
            raise ValueError(
                f"t must be strictly increasing or strictly decreasing; t[{bad}] = {t_out[bad]!r} and "
                f"t[{bad + 1}] = {t_out[bad + 1]!r} break that (sort t and drop repeated times)"
            )
    return t, t_out


def _parameters(func: Any, adjoint_params: Any) -> tuple[tuple[torch.Tensor, ...], bool]:
    if adjoint_params is None:
        if isinstance(func, torch.nn.Module):
            return tuple(p for p in func.parameters() if p.requires_grad), False
        return (), False
    if isinstance(adjoint_params, torch.Tensor):
        adjoint_params = (adjoint_params,)
    try:
        params = tuple(adjoint_params)
    except TypeError:
        raise TypeError(f"adjoint_params must be a sequence of tensors, got {adjoint_params!r}") from None
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"adjoint_params[{i}] must be a tensor, got {type(p).__name__}")
    unique = {id(p): p for p in params}
    return tuple(p for p in unique.values() if p.requires_grad), True
