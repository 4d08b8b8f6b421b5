"""``method="scipy_solver"``: the solve handed to ``scipy.integrate.solve_ivp``, as torchdiffeq's.

Semantics (torchdiffeq's ``scipy_solver``, with its errors made explicit):

* ``options["solver"]`` names the scipy method (default ``"LSODA"``); every other key goes to
  ``solve_ivp`` and must be an option that method accepts (``max_step``, ``first_step``,
  ``min_step`` for LSODA, ``jac``...), else ``ValueError``: scipy would ignore it with a warning.
* The state (a tensor, or a tuple of tensors flattened into one vector) is solved in float64;
  ``func`` is called under ``torch.no_grad()`` with ``t`` a 0-dim tensor and ``y`` in ``y0``'s
  dtype and device. The times are float64; decreasing ``t`` is solved backwards by scipy.
* The states at ``t`` come back in ``y0``'s dtype and device, the first exactly ``y0`` (one time: no solve).
* Nothing is differentiable: a solve that would need a gradient is refused before it starts.
* A failed solve (or ``func`` returning a non-finite value) raises ``SolveError``: scipy's message,
  the last accepted step's time and the accepted steps (counted by an event that never fires).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ._stats import SolveError

__all__ = ["scipy_solve"]

SCIPY_SOLVERS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")
_SET_HERE = ("fun", "t0", "y0", "t_bound", "rtol", "atol", "vectorized", "t_span", "t_eval", "method", "events")


def scipy_solve(
    func: Callable[..., Any],
    y0: Any,
    t: Any,
    *,
    rtol: Any,
    atol: Any,
    options: Mapping[str, Any] | None,
    params: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Solve ``dy/dt = func(t, y)``, ``y(t[0]) = y0`` with ``scipy.integrate.solve_ivp``; the states at ``t``."""
    import scipy.integrate

    if not callable(func):
        raise TypeError(f"func must be callable as func(t, y), got {func!r}")
    is_tuple = isinstance(y0, tuple)
    parts = y0 if is_tuple else (y0,)
    if not parts or not all(isinstance(p, torch.Tensor) for p in parts):
        raise TypeError(f"y0 must be a floating tensor or a non-empty tuple of them, got {y0!r}")
    dtype, device = parts[0].dtype, parts[0].device
    for p in parts:
        if not p.is_floating_point() or p.dtype != dtype or p.device != device:
            raise TypeError(f"y0 must be real floating tensors of one dtype and device, got {p.dtype} on {p.device}")
    t_np = _times(t)
    if params is None:
        params = list(func.parameters()) if isinstance(func, torch.nn.Module) else []
    inputs = [*parts, *params] + ([t] if isinstance(t, torch.Tensor) else [])
    if torch.is_grad_enabled() and any(x.requires_grad for x in inputs):
        raise ValueError(
            "method='scipy_solver' solves with scipy and cannot be differentiated (by any gradient method, the "
            "continuous adjoint included), but y0, t or a parameter of func requires grad. Use a symode method "
            "(e.g. method='dopri5'), or solve under torch.no_grad()"
        )
    options = dict(options or {})
    solver = options.pop("solver", "LSODA")
    if solver not in SCIPY_SOLVERS:
        raise ValueError(f"options['solver'] must be one of scipy's methods {SCIPY_SOLVERS}, got {solver!r}")
    accepted = [k for k in inspect.signature(getattr(scipy.integrate, solver).__init__).parameters][1:-1]
    for key in options:
        if key in _SET_HERE or key not in accepted:
            raise ValueError(
                f"options[{key!r}]: not an option of scipy's {solver} here (set by symode, or ignored by scipy); "
                f"accepted: {[k for k in accepted if k not in _SET_HERE]}"
            )
    shapes, sizes = [p.shape for p in parts], [p.numel() for p in parts]
    tols = {name: _tolerance(tol, name, sum(sizes)) for name, tol in (("rtol", rtol), ("atol", atol))}
    if solver in ("Radau", "BDF") and not isinstance(tols["rtol"], float):
        raise ValueError(f"rtol must be one number for scipy's {solver} (it takes no per-element rtol), got {rtol!r}")
    if len(t_np) == 1:
        out = tuple(p.detach()[None].clone() for p in parts)
        return out if is_tuple else out[0]

    def fun(s: float, y: np.ndarray) -> np.ndarray:
        ty = torch.from_numpy(np.ascontiguousarray(y)).to(device, dtype).split(sizes)
        state = tuple(c.reshape(shape) for c, shape in zip(ty, shapes))
        with torch.no_grad():
            f = func(torch.tensor(s, dtype=dtype, device=device), state if is_tuple else state[0])
        fs = f if is_tuple and isinstance(f, (tuple, list)) else (f,)
        if not all(isinstance(c, torch.Tensor) for c in fs) or len(fs) != len(parts):
            raise TypeError(f"func must return {'a tuple of ' if is_tuple else ''}tensors like y0, got {type(f)}")
        if [c.shape for c in fs] != shapes or any(c.is_complex() for c in fs):
            got = [tuple(c.shape) for c in fs]
            raise ValueError(f"func {func!r} must return y0's shape(s) {[tuple(x) for x in shapes]} (real), got {got}")
        out = torch.cat([c.detach().reshape(-1) for c in fs]).to("cpu", torch.float64).numpy()
        if not np.isfinite(out).all():  # LSODA retries a non-finite derivative forever: stop here
            raise _failure(f"func returned non-finite values at t={s}", solver, steps, t_np)
        return out

    steps: list[float] = []  # the time of every accepted step (scipy evaluates events once per step, and at t[0])

    def count(s: float, y: np.ndarray) -> float:
        steps.append(float(s))
        return 1.0

    flat_y0 = torch.cat([p.detach().reshape(-1) for p in parts]).to("cpu", torch.float64).numpy()
    span = (t_np[0], t_np[-1])
    result = scipy.integrate.solve_ivp(fun, span, flat_y0, method=solver, t_eval=t_np, events=count, **tols, **options)
    if not result.success:
        raise _failure(f"scipy: {result.message.rstrip('.')}", solver, steps, t_np)
    result.y[:, 0] = flat_y0  # y(t[0]) is y0 exactly (scipy interpolates it at some methods' t_eval)
    ys = torch.from_numpy(np.ascontiguousarray(result.y.T)).to(device, dtype).split(sizes, dim=1)
    out = tuple(c.reshape(len(t_np), *shape) for c, shape in zip(ys, shapes))
    return out if is_tuple else out[0]


def _failure(why: str, solver: str, steps: list[float], t: np.ndarray) -> SolveError:
    """The ``SolveError`` of a failed solve: the last accepted step's time and the accepted steps."""
    t_reached, n = (steps[-1] if steps else float(t[0])), max(len(steps) - 1, 0)
    fix = "Try a stiff solver (options={'solver': 'Radau'} or 'BDF'), looser rtol/atol, or check for a blow-up"
    msg = f"scipy's solve_ivp (method={solver!r}) failed at t={t_reached} after {n} accepted steps: {why}. {fix}"
    return SolveError(msg, t_reached, n)


def _times(t: Any) -> np.ndarray:
    """``t`` as float64 numpy: 1-D, finite, strictly monotone."""
    arr = _float64(t, "t")
    if arr.ndim != 1 or arr.size == 0 or not np.isfinite(arr).all():
        raise ValueError(f"t must be a non-empty 1-D sequence of finite times, got shape {tuple(arr.shape)}")
    d = np.diff(arr)
    if not ((d > 0).all() or (d < 0).all()):
        raise ValueError("t must be strictly increasing or strictly decreasing (sort it and drop repeated times)")
    return arr


def _tolerance(tol: Any, name: str, n: int) -> float | np.ndarray:
    """A tolerance as a float when it is one value, else as float64 of the flat state's length ``n``."""
    arr = _float64(tol, name)
    if arr.ndim > 0:
        try:  # one value per element (any shape), or broadcastable to the flat state
            arr = np.broadcast_to(arr.reshape(-1) if arr.size == n else arr, (n,))
        except ValueError:
            msg = f"{name} must be a number or broadcastable to the state's {n} elements, got shape {arr.shape}"
            raise ValueError(msg) from None
    return float(arr.flat[0]) if arr.size and (arr == arr.flat[0]).all() else arr.copy()


def _float64(x: Any, name: str) -> np.ndarray:
    """``x`` (a tensor, array, number or sequence) as float64 numpy, without a float32 round trip."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double() if x.is_floating_point() else x.detach().cpu()
    arr = np.asarray(x)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be real numbers, got dtype {arr.dtype}")
    return arr.astype(np.float64)
