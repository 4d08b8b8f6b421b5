"""torchdiffeq's ``options`` dict as symode's step rules (``make_steps``), and the paths of
``symode.odeint`` that are not a Runge-Kutta solve to given times: the Adams methods and the
solve to an event (``event_fn``)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ._adams import ADAMS_METHODS, ADAMS_OPTIONS, adams_solve
from ._events import Event, solve_to_event
from ._methods import get_tableau
from ._solve import setup
from ._state import State
from ._step_size import AdaptiveSteps, FixedSteps, Tolerance
from ._tableau import ButcherTableau

__all__ = ["Method", "Params", "make_steps", "odeint_adams", "odeint_to_event"]

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


def odeint_adams(method, func, y0, t, rtol, atol, options, gradient, compile) -> State:
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


def odeint_to_event(func, y0, t, event_fn, rtol, atol, method, options, gradient, adjoint_params, compile):
    """``odeint(..., event_fn=...)``: from ``t[0]`` in ``t[1]``'s direction, with no end time
    (adaptive steps; fixed ones, which need a ``step_size``, stop after ``max_num_steps``)."""
    if isinstance(method, str) and (method == "scipy_solver" or method in ADAMS_METHODS):
        raise ValueError(f"event_fn: method={method!r} has no events in symode; use a Runge-Kutta method (dopri5)")
    times = torch.as_tensor(t)
    if times.ndim != 1 or times.numel() < 2 or not bool(times[1] != times[0]):
        raise ValueError(
            f"with event_fn, t must be [t0, t1] with t1 != t0 (t1 - t0 gives the direction; the solve has no end "
            f"time), got {t!r}; symode.odeint_event(func, y0, t0, event_fn=...) builds it"
        )
    tableau = get_tableau(method)
    given = {} if not isinstance(options, Mapping) else options
    if (not tableau.adaptive and given.get("step_size") is None) or given.get("grid") is not None:
        raise ValueError(
            f"with event_fn, a fixed-step method ({tableau.name!r}) needs options={{'step_size': h}} (there is no end "
            f"time to build a grid to), as in torchdiffeq; 'grid' is not taken"
        )
    steps = make_steps(method, rtol, atol, options)
    problem, grad_method, ts = setup(
        func, y0, times[:2], tableau, steps, gradient, adjoint_params, compile, False, event_fn
    )
    direction = 1.0 if problem.t_out[1] > problem.t_out[0] else -1.0
    t0 = problem.t_out[0]
    if isinstance(steps, FixedSteps):
        assert steps.step_size is not None  # checked above
        end = t0 + direction * steps.step_size * (steps.max_num_steps - 1)
    else:
        end = direction * math.inf
    problem = dataclasses.replace(problem, t_out=[t0, end])
    ys, _, _, t_event = solve_to_event(problem, grad_method, (Event(event_fn),), ts, bounded=False)
    return t_event, problem.layout.unflatten(ys, (2,))
