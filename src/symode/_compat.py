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

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ._adams import ADAMS_METHODS, ADAMS_OPTIONS, adams_solve
from ._dense_solution import DenseSolution
from ._methods import get_tableau
from ._scipy import scipy_solve
from ._solve import solve
from ._state import State
from ._step_size import DEFAULT_ATOL, DEFAULT_RTOL, AdaptiveSteps, FixedSteps, Tolerance
from ._tableau import ButcherTableau
from .gradients import Checkpoint, ContinuousAdjoint, GradientMethod, OneCheckpoint, SymplecticAdjoint

__all__ = [
    "odeint",
    "odeint_adjoint",
    "odeint_checkpoint",
    "odeint_onecheckpoint",
    "odeint_symplectic_adjoint",
    "odeint_dense",
    "make_steps",
]

Method = str | ButcherTableau | None
Params = Sequence[torch.Tensor] | None

_FIXED_OPTIONS = ("step_size", "grid", "interp", "grid_constructor", "perturb")
_ADAPTIVE_OPTIONS = (
    "first_step",
    "controller",
    "safety",
    "ifactor",
    "dfactor",
    "interpolate",
    "min_step",
    "max_step",
    "step_t",
    "jump_t",
    "norm",
    "pcoeff",
    "icoeff",
    "dcoeff",
)
_BOTH_OPTIONS = ("max_num_steps",)  # the limit on the steps of a solve, fixed or adaptive
#: accepted as torchdiffeq does, with no effect: symode's times are float64 whatever the dtype given
_ACCEPTED_OPTIONS = ("dtype",)


def make_steps(
    method: Method | None,
    rtol: Tolerance,
    atol: Tolerance,
    options: Mapping[str, Any] | None,
    t: Any = None,
    func: Any = None,
    y0: Any = None,
) -> FixedSteps | AdaptiveSteps:
    """The step-size rule for ``method`` from torchdiffeq-style ``rtol``, ``atol``, ``options``.

    ``options`` (a dict, or ``None``) takes, for fixed steps, ``step_size`` (steps of this
    size within each output interval, the last one shortened to end on the output time) or
    ``grid`` (the step endpoints; the output times are added) — any method, adaptive ones
    included, then takes fixed steps — and, for adaptive steps, ``first_step``,
    ``controller`` (``"i"`` or ``"pi"``), ``safety``, ``ifactor`` and ``dfactor`` (see
    :class:`symode.AdaptiveSteps`), ``min_step``, ``max_step``, ``step_t`` (times every step
    must end on), ``jump_t`` (discontinuities of ``f`` in time), ``norm`` (a callable on the
    state, as torchdiffeq's; a tuple state is handed to it as a tuple), ``interpolate``, and
    ``controller="pid"`` with ``pcoeff``, ``icoeff``, ``dcoeff``; for fixed steps also
    ``interp``, ``grid_constructor`` and ``perturb`` (see :class:`symode.FixedSteps`);
    ``max_num_steps`` (default 100000) limits either kind; ``dtype`` (torchdiffeq's time dtype)
    is accepted and has no effect: symode keeps times in float64 whatever it says. An unknown key, or keys
    of both kinds, raise ``ValueError``. A fixed-step method without a step size steps from
    one output time to the next (the output times ``t`` are its grid), as in torchdiffeq.
    """
    options = {} if options is None else options
    if not isinstance(options, Mapping):
        raise TypeError(f"options must be a dict, got {type(options).__name__}")
    dtype = options.get("dtype")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"option 'dtype' (the dtype of the times) must be a floating torch.dtype, got {dtype!r}")
    options = {k: v for k, v in options.items() if k not in _ACCEPTED_OPTIONS}
    unknown = sorted(set(options) - set(_FIXED_OPTIONS) - set(_ADAPTIVE_OPTIONS) - set(_BOTH_OPTIONS))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown}; symode's options are {list(_FIXED_OPTIONS)} for fixed "
            f"steps, {list(_ADAPTIVE_OPTIONS)} for adaptive steps and {list(_BOTH_OPTIONS)} for both"
        )
    tableau = get_tableau(method)
    fixed = {k: options[k] for k in _FIXED_OPTIONS if options.get(k) is not None and k != "perturb"}
    if "perturb" in options and (fixed or not tableau.adaptive):
        fixed["perturb"] = options["perturb"]
    elif options.get("perturb"):
        raise ValueError(
            "option 'perturb' applies to fixed steps (give 'step_size' or 'grid'); with adaptive steps, name the "
            "discontinuities of func in time with options={'jump_t': times}"
        )
    if fixed:
        mixed = sorted(k for k in _ADAPTIVE_OPTIONS if k in options)
        if mixed:
            raise ValueError(
                f"option(s) {mixed} apply to adaptive steps, but {sorted(fixed)} asks for fixed steps; "
                f"give one or the other"
            )
        constructor = fixed.pop("grid_constructor", None)
        if constructor is not None:
            if "step_size" in fixed or "grid" in fixed:
                raise ValueError("options 'grid_constructor' and 'step_size'/'grid' exclude each other; give one")
            if not callable(constructor) or func is None or t is None:
                raise ValueError("option 'grid_constructor' must be a callable grid_constructor(func, y0, t) -> grid")
            fixed["grid"] = constructor(func, y0, torch.as_tensor(t))
        if "step_size" not in fixed and "grid" not in fixed and t is not None:  # interp alone: the output grid
            fixed["grid"] = torch.as_tensor(t).detach().reshape(-1)
        return FixedSteps(**fixed, **{k: options[k] for k in _BOTH_OPTIONS if k in options})
    if not tableau.adaptive and t is not None and not any(k in options for k in _ADAPTIVE_OPTIONS):
        both = {k: options[k] for k in _BOTH_OPTIONS if k in options}
        if "perturb" in options:
            both["perturb"] = options["perturb"]
        times = torch.as_tensor(t).detach().reshape(-1)
        if times.numel() < 2:  # a single output time: no step
            return FixedSteps(step_size=1.0, **both)
        return FixedSteps(grid=times, **both)
    tableau.check_adaptive()
    return AdaptiveSteps(rtol=rtol, atol=atol, **{k: v for k, v in options.items() if k != "perturb"})


def odeint(
    func: Callable[..., Any],
    y0: State,
    t: Any,
    *,
    rtol: Tolerance = DEFAULT_RTOL,
    atol: Tolerance = DEFAULT_ATOL,
    method: Method = "dopri5",
    options: Mapping[str, Any] | None = None,
    gradient: str | GradientMethod = "backprop",
    adjoint_params: Params = None,
    compile: bool = False,
) -> State:
    """Solve ``dy/dt = func(t, y)`` from ``y0`` at ``t[0]``; return the states at ``t``
    (shape ``(len(t), *y0.shape)``, or a tuple for a tuple ``y0``).

    As torchdiffeq's ``odeint``, plus ``gradient`` (``"backprop"``, ``"symplectic_adjoint"``
    or a gradient object) to choose how the solve is differentiated. See
    :func:`symode.solve` for the arguments (``compile`` included) and the dtype policy, and
    :func:`symode.make_steps` for the options.
    """
    if isinstance(method, str) and method == "scipy_solver":
        return scipy_solve(func, y0, t, rtol=rtol, atol=atol, options=options, params=adjoint_params)
    if isinstance(method, str) and method in ADAMS_METHODS:
        return _adams(method, func, y0, t, rtol, atol, options, gradient, compile)
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
    ).ys


def _adams(method, func, y0, t, rtol, atol, options, gradient, compile) -> State:
    """``odeint`` with ``explicit_adams``/``implicit_adams``: fixed steps, as torchdiffeq's."""
    if options is not None and not isinstance(options, Mapping):
        raise TypeError(f"options must be a dict, got {type(options).__name__}")
    options = dict(options or {})
    own = {k: options.pop(k) for k in ADAMS_OPTIONS if k in options}
    adaptive = sorted(k for k in options if k in _ADAPTIVE_OPTIONS)
    if adaptive:
        raise ValueError(
            f"method={method!r} takes fixed steps: option(s) {adaptive} apply to adaptive methods; give "
            f"'step_size' or 'grid' (or neither: the output times are the grid), or use method='dopri5'"
        )
    if compile:
        raise ValueError(f"compile=True applies to Runge-Kutta steps, not to method={method!r}; drop it")
    steps = make_steps("rk38", rtol, atol, options, t, func, y0)
    assert isinstance(steps, FixedSteps)  # rk38 has no error estimate, and no adaptive option was given
    return adams_solve(
        func,
        y0,
        t,
        steps,
        implicit=method != "explicit_adams",
        rtol=rtol,
        atol=atol,
        options=own,
        gradient=gradient,
    )


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
    adjoint_params: Params = None,
    compile: bool = False,
) -> State:
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
    adjoint_params: Params = None,
    compile: bool = False,
) -> State:
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
    adjoint_params: Params = None,
    compile: bool = False,
) -> State:
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
    adjoint_rtol: Tolerance | None = None,
    adjoint_atol: Tolerance | None = None,
    adjoint_method: Method | None = None,
    adjoint_options: Mapping[str, Any] | None = None,
    adjoint_params: Params = None,
    compile: bool = False,
) -> State:
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
