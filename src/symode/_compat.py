"""torchdiffeq-style functions: ``odeint(func, y0, t, rtol, atol, method, options)``.

torchdiffeq's ``options`` dict is translated into a step-size rule here, once, by
:func:`make_steps` (unknown keys rejected); the rest of symode sees step objects only:

* fixed steps: ``step_size`` (steps per output interval) or ``grid`` (step endpoints);
  any method, adaptive ones included, takes fixed steps when given one of them;
* adaptive steps: ``first_step``, ``controller`` (``"pi"`` or ``"i"``), ``safety``,
  ``ifactor``, ``dfactor``, ``interpolate`` (default ``True``: output times between steps are
  interpolated, as torchdiffeq does; ``False``: every output time ends a step);
* both: ``max_num_steps``.

``odeint_adjoint``'s ``adjoint_options`` are translated the same way, for the backward solve
(plus ``"norm"``: ``"default"`` or ``"seminorm"``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from ._adams import ADAMS_METHODS
from ._checks import check_bool
from ._dense_solution import DenseSolution
from ._methods import get_tableau
from ._newton import Newton
from ._options import Method, Params, make_steps, odeint_adams, odeint_to_event
from ._scipy import scipy_solve
from ._solve import solve
from ._state import State
from ._step_size import DEFAULT_ATOL, DEFAULT_RTOL, Tolerance
from .gradients import Checkpoint, ContinuousAdjoint, GradientMethod, OneCheckpoint, SymplecticAdjoint

__all__ = [
    "odeint",
    "odeint_adjoint",
    "odeint_checkpoint",
    "odeint_onecheckpoint",
    "odeint_symplectic_adjoint",
    "odeint_dense",
    "odeint_event",
    "make_steps",
]


def odeint(
    func: Callable[..., Any],
    y0: State,
    t: Any,
    *,
    rtol: Tolerance = DEFAULT_RTOL,
    atol: Tolerance = DEFAULT_ATOL,
    method: Method = "dopri5",
    options: Mapping[str, Any] | None = None,
    event_fn: Callable[..., Any] | None = None,
    gradient: str | GradientMethod = "backprop",
    adjoint_params: Params = None,
    compile: bool = False,
) -> Any:
    """Solve ``dy/dt = func(t, y)`` from ``y0`` at ``t[0]``; return the states at ``t``
    (shape ``(len(t), *y0.shape)``, or a tuple for a tuple ``y0``).

    As torchdiffeq's ``odeint``, plus ``gradient`` (``"backprop"``, ``"symplectic_adjoint"``
    or a gradient object) to choose how the solve is differentiated. See
    :func:`symode.solve` for the arguments (``compile`` included) and the dtype policy, and
    :func:`symode.make_steps` for the options.

    ``event_fn(t, y)`` (as torchdiffeq's): solve from ``t[0]``, in the direction of ``t[1]``
    and with no end time, until a component of ``event_fn`` first changes sign; return
    ``(event_t, states)``, ``states`` at ``[t[0], event_t]``, both differentiable
    (:func:`symode.odeint_event`).
    """
    if event_fn is not None:
        return odeint_to_event(func, y0, t, event_fn, rtol, atol, method, options, gradient, adjoint_params, compile)
    if isinstance(method, str) and method == "scipy_solver":
        return scipy_solve(func, y0, t, rtol=rtol, atol=atol, options=options, params=adjoint_params)
    if isinstance(method, str) and method in ADAMS_METHODS:
        return odeint_adams(method, func, y0, t, rtol, atol, options, gradient, compile)
    options, newton = _newton_options(method, options)
    steps = make_steps(method, rtol, atol, options, t, func, y0)
    return solve(
        func,
        y0,
        t,
        method=get_tableau(method),
        steps=steps,
        gradient=gradient,
        adjoint_params=adjoint_params,
        compile=compile,
        newton=newton,
    ).ys


def _newton_options(method: Any, options: Any) -> tuple[Any, Newton | None]:
    """An implicit method's ``options={'max_iters': n}`` (torchdiffeq's name) as ``Newton(max_iters=n)``,
    or ``options={'newton': symode.Newton(...)}`` (symode's, for its other settings)."""
    if not isinstance(options, Mapping) or not ({"max_iters", "newton"} & options.keys()):
        return options, None
    if not get_tableau(method).implicit:
        return options, None  # make_steps names the option as unknown to an explicit method
    rest = {k: v for k, v in options.items() if k not in ("max_iters", "newton")}
    if "newton" not in options:
        return rest, Newton(max_iters=options["max_iters"])
    newton = options["newton"]
    if not isinstance(newton, Newton):
        raise TypeError(f"options['newton'] must be a symode.Newton(...), got {newton!r}")
    if "max_iters" in options:
        raise ValueError(
            f"options has both 'max_iters' and 'newton'; give one: "
            f"symode.Newton(max_iters={options['max_iters']!r}, ...)"
        )
    return rest, newton


def odeint_event(
    func: Callable[..., Any],
    y0: State,
    t0: Any,
    *,
    event_fn: Callable[..., Any],
    reverse_time: bool = False,
    odeint_interface: Callable[..., Any] | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, State]:
    """torchdiffeq's ``odeint_event``: solve from ``t0`` (backwards with ``reverse_time``), with
    no end time, until a component of ``event_fn(t, y)`` first changes sign.

    Returns ``(event_t, states)``: the event time (0-dim, in ``t0``'s dtype, float64 for a
    Python number) and the states at
    ``[t0, event_t]`` (shape ``(2, *y0.shape)``, or a tuple). Both are differentiable in ``y0``,
    the parameters, ``t0`` and what ``event_fn`` depends on: ``odeint_interface`` (default
    :func:`symode.odeint`; or ``odeint_adjoint``, ``odeint_symplectic_adjoint``, ...) says by which
    gradient method; ``kwargs`` are its arguments (``rtol``, ``atol``, ``method``, ``options``,
    ``gradient``...). The event is located on the dense output to round-off; a batch stops at
    the first crossing of any component. See :class:`symode.Event` for the object API.
    """
    check_bool(reverse_time, "reverse_time")
    interface = odeint if odeint_interface is None else odeint_interface
    start = t0 if isinstance(t0, torch.Tensor) else torch.as_tensor(t0, dtype=torch.float64)
    if start.numel() != 1:
        raise ValueError(f"t0 must be a single time, got shape {tuple(start.shape)}")
    start = start.reshape(())
    if not start.is_floating_point():
        start = start.double()
    t = torch.stack([start, start.detach() + (-1.0 if reverse_time else 1.0)])
    return interface(func, y0, t, event_fn=event_fn, **kwargs)


def odeint_dense(
    func: Callable[..., Any],
    y0: State,
    t0: Any,
    t1: Any,
    *,
    rtol: Tolerance = DEFAULT_RTOL,
    atol: Tolerance = DEFAULT_ATOL,
    method: Method = "dopri5",
    options: Mapping[str, Any] | None = None,
) -> DenseSolution:
    """Solve from ``t0`` to ``t1`` and return the solution as a function of time (torchdiffeq's
    ``odeint_dense``): ``sol = odeint_dense(...)``, then ``sol(t)`` for any ``t`` in the span (a
    float, a 0-dim or a 1-D tensor) and ``sol.derivative(t)``. Differentiable by backprop in
    ``y0``, the parameters of ``func`` and the evaluation times; see
    :class:`symode.DenseSolution`."""
    times = torch.stack([torch.as_tensor(t0, dtype=torch.float64), torch.as_tensor(t1, dtype=torch.float64)])
    steps = make_steps(method, rtol, atol, options, times)
    solution = solve(func, y0, times.detach(), method=get_tableau(method), steps=steps, dense=True).dense
    assert solution is not None  # asked for
    return solution


def odeint_symplectic_adjoint(
    func: Callable[..., Any],
    y0: State,
    t: Any,
    *,
    rtol: Tolerance = DEFAULT_RTOL,
    atol: Tolerance = DEFAULT_ATOL,
    method: Method = "dopri5",
    options: Mapping[str, Any] | None = None,
    event_fn: Callable[..., Any] | None = None,
    adjoint_params: Params = None,
    compile: bool = False,
) -> Any:
    """``odeint`` differentiated by the symplectic adjoint method: the exact gradient of the
    solve with memory of the stored states plus one network use (the name and signature of
    the authors' ``torch_symplectic_adjoint``)."""
    return odeint(
        func,
        y0,
        t,
        rtol=rtol,
        atol=atol,
        method=method,
        options=options,
        gradient=SymplecticAdjoint(),
        adjoint_params=adjoint_params,
        compile=compile,
        event_fn=event_fn,
    )


def odeint_checkpoint(
    func: Callable[..., Any],
    y0: State,
    t: Any,
    *,
    rtol: Tolerance = DEFAULT_RTOL,
    atol: Tolerance = DEFAULT_ATOL,
    method: Method = "dopri5",
    options: Mapping[str, Any] | None = None,
    event_fn: Callable[..., Any] | None = None,
    adjoint_params: Params = None,
    compile: bool = False,
) -> Any:
    """``odeint`` differentiated by checkpointing every accepted step and backpropagating
    through one rebuilt step at a time (ACA; the authors' ``odeint_checkpoint``)."""
    return odeint(
        func,
        y0,
        t,
        rtol=rtol,
        atol=atol,
        method=method,
        options=options,
        gradient=Checkpoint(),
        adjoint_params=adjoint_params,
        compile=compile,
        event_fn=event_fn,
    )


def odeint_onecheckpoint(
    func: Callable[..., Any],
    y0: State,
    t: Any,
    *,
    rtol: Tolerance = DEFAULT_RTOL,
    atol: Tolerance = DEFAULT_ATOL,
    method: Method = "dopri5",
    options: Mapping[str, Any] | None = None,
    event_fn: Callable[..., Any] | None = None,
    adjoint_params: Params = None,
    compile: bool = False,
) -> Any:
    """``odeint`` differentiated by storing ``y0`` only and backpropagating through a
    re-run of the whole solve (the authors' ``odeint_onecheckpoint``)."""
    return odeint(
        func,
        y0,
        t,
        rtol=rtol,
        atol=atol,
        method=method,
        options=options,
        gradient=OneCheckpoint(),
        adjoint_params=adjoint_params,
        compile=compile,
        event_fn=event_fn,
    )


def odeint_adjoint(
    func: Callable[..., Any],
    y0: State,
    t: Any,
    *,
    rtol: Tolerance = DEFAULT_RTOL,
    atol: Tolerance = DEFAULT_ATOL,
    method: Method = "dopri5",
    options: Mapping[str, Any] | None = None,
    event_fn: Callable[..., Any] | None = None,
    adjoint_rtol: Tolerance | None = None,
    adjoint_atol: Tolerance | None = None,
    adjoint_method: Method | None = None,
    adjoint_options: Mapping[str, Any] | None = None,
    adjoint_params: Params = None,
    compile: bool = False,
) -> Any:
    """``odeint`` differentiated by the continuous adjoint method (torchdiffeq's
    ``odeint_adjoint``): memory independent of the number of steps, a gradient as accurate as
    the backward solve. ``adjoint_rtol``/``adjoint_atol``/``adjoint_method``/``adjoint_options``
    set the backward solve (``None``: as the forward one); ``adjoint_options`` takes the keys
    of ``options`` (translated by :func:`make_steps`; then the tolerances are
    ``adjoint_rtol``/``adjoint_atol``, or the forward ones) and ``"norm": "seminorm"`` to
    leave the parameter gradients out of its error control."""
    return odeint(
        func,
        y0,
        t,
        rtol=rtol,
        atol=atol,
        method=method,
        options=options,
        gradient=_continuous_adjoint(rtol, atol, method, adjoint_rtol, adjoint_atol, adjoint_method, adjoint_options),
        adjoint_params=adjoint_params,
        compile=compile,
        event_fn=event_fn,
    )


def _continuous_adjoint(
    rtol: Tolerance,
    atol: Tolerance,
    method: Method,
    adjoint_rtol: Tolerance | None,
    adjoint_atol: Tolerance | None,
    adjoint_method: Method | None,
    adjoint_options: Mapping[str, Any] | None,
) -> ContinuousAdjoint:
    """``odeint_adjoint``'s ``adjoint_*`` arguments as a ``ContinuousAdjoint``."""
    if adjoint_options is None:
        return ContinuousAdjoint(rtol=adjoint_rtol, atol=adjoint_atol, method=adjoint_method)
    if not isinstance(adjoint_options, Mapping):
        raise TypeError(f"adjoint_options must be a dict, got {type(adjoint_options).__name__}")
    options = dict(adjoint_options)
    norm = options.pop("norm", "default")
    try:
        steps = make_steps(
            method if adjoint_method is None else adjoint_method,
            rtol if adjoint_rtol is None else adjoint_rtol,
            atol if adjoint_atol is None else adjoint_atol,
            options,
        )
    except (TypeError, ValueError) as e:
        raise type(e)(f"adjoint_options (the backward solve's options): {e}") from None
    return ContinuousAdjoint(method=adjoint_method, steps=steps, norm=norm)
