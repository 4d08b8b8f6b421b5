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
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .gradients import GradientMethod, get_gradient_method
from .integrate import Stats
from .methods import get_tableau
from .problem import Problem
from .step_size import AdaptiveSteps, FixedSteps, mixed_rms_norm, rms_norm
from .tableau import ButcherTableau

__all__ = ["Solution", "solve"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


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
    """

    ts: torch.Tensor
    ys: torch.Tensor | tuple[torch.Tensor, ...]
    stats: Stats
    grid: torch.Tensor


def solve(func: Callable, y0, t, *, method: str | ButcherTableau = "dopri5",
          steps: FixedSteps | AdaptiveSteps | None = None,
          gradient: str | GradientMethod = "backprop",
          adjoint_params: Sequence[torch.Tensor] | None = None, compile: bool = False) -> Solution:
    """Solve ``dy/dt = func(t, y)``, ``y(t[0]) = y0``, and return the states at the times ``t``.

    Args:
        func: ``func(t, y) -> dy/dt``; an ``nn.Module`` or any callable. ``y`` and the result
            have ``y0``'s structure (a tensor, or a tuple of tensors).
        y0: the initial state: a floating tensor or a tuple of them.
        t: 1-D, strictly increasing or strictly decreasing output times; ``t[0]`` is the
            initial time. Every output time is a step endpoint (no interpolation).
        method: a name from ``symode.TABLEAUS`` or a ``ButcherTableau``.
        steps: ``FixedSteps(step_size=h)`` / ``FixedSteps(grid=...)``, or
            ``AdaptiveSteps(rtol=..., atol=..., ...)``; default ``AdaptiveSteps()`` for
            methods with an error estimate (a fixed method needs ``FixedSteps``).
        gradient: how to differentiate: ``"backprop"``, ``"symplectic_adjoint"`` or a
            ``GradientMethod`` object such as ``symode.SymplecticAdjoint()``.
        adjoint_params: the tensors to differentiate besides ``y0``; default: the parameters
            of ``func`` if it is an ``nn.Module``, else none. Used by the adjoint methods;
            backprop differentiates whatever ``func`` uses.
        compile: take the forward steps with ``torch.compile`` (``symode.compiled``): for
            small networks, where per-operation overhead dominates, each step becomes one
            fused graph. The first solve compiles (seconds); results agree with an eager
            solve to round-off. Not with backprop through a ``func`` that differentiates
            itself (torch.compile has no double backward).
    """
    if not callable(func):
        raise TypeError(f"func must be callable as func(t, y), got {func!r}")
    tableau = get_tableau(method)
    grad_method = get_gradient_method(gradient)
    if not isinstance(compile, bool):
        raise TypeError(f"compile must be True or False, got {compile!r}")
    state = _State.of(y0)
    ts, t_out = _output_times(t)
    if steps is None:
        if not tableau.adaptive:
            raise ValueError(
                f"method {tableau.name!r} has fixed steps and needs a step size: e.g. "
                f"steps=symode.FixedSteps(step_size=0.01) (odeint: options={{'step_size': 0.01}})")
        steps = AdaptiveSteps()
    elif not isinstance(steps, (FixedSteps, AdaptiveSteps)):
        raise TypeError(f"steps must be symode.FixedSteps or symode.AdaptiveSteps, got {steps!r}")
    if isinstance(steps, AdaptiveSteps) and not tableau.adaptive:
        raise ValueError(
            f"method {tableau.name!r} has no error estimate, so it cannot choose its steps: give a step "
            f"size (options={{'step_size': h}}) or choose an adaptive method such as 'dopri5'")
    params, explicit = _parameters(func, adjoint_params)
    if ts.requires_grad and not grad_method.time_gradient:
        warnings.warn(f"t requires grad, but {grad_method!r} does not differentiate with respect to the "
                      f"output times: t gets no gradient", stacklevel=2)
    problem = Problem(func=state.wrap(func), y0=state.flat_y0, t_out=t_out, tableau=tableau, steps=steps,
                      params=params, params_explicit=explicit,
                      t=ts if ts.requires_grad and ts.is_floating_point() and grad_method.time_gradient else None,
                      compile=compile)
    if isinstance(steps, AdaptiveSteps):
        problem.rtol = state.tolerance(steps.rtol, "rtol")
        problem.atol = state.tolerance(steps.atol, "atol")
        problem.norm = state.norm
    ys, trajectory = grad_method.solve(problem)
    grid = torch.tensor(trajectory.ts, dtype=torch.float64)
    return Solution(ts=ts, ys=state.unflatten_outputs(ys), stats=problem.stats, grid=grid)


# --------------------------------------------------------------------------------------
def _output_times(t) -> tuple[torch.Tensor, list[float]]:
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
                f"t[{bad + 1}] = {t_out[bad + 1]!r} break that (sort t and drop repeated times)")
    return t, t_out


def _parameters(func, adjoint_params) -> tuple[tuple[torch.Tensor, ...], bool]:
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


class _State:
    """The state's structure: one tensor, or a tuple flattened into one vector."""

    def __init__(self, y0, components: tuple[torch.Tensor, ...] | None):
        self.y0 = y0
        self.components = components
        if components is None:
            self.flat_y0, self.sizes, self.norm = y0, None, rms_norm
        else:  # flattened once; the error norm is the max of the components' RMS norms
            self.flat_y0 = torch.cat([c.reshape(-1) for c in components])
            self.sizes = [c.numel() for c in components]
            self.norm = mixed_rms_norm(self.sizes)

    @classmethod
    def of(cls, y0) -> "_State":
        if isinstance(y0, torch.Tensor):
            _check_tensor(y0, "y0")
            return cls(y0, None)
        if isinstance(y0, (tuple, list)) and len(y0) > 0:
            for i, c in enumerate(y0):
                if not isinstance(c, torch.Tensor):
                    raise TypeError(f"y0[{i}] must be a tensor, got {type(c).__name__}")
                _check_tensor(c, f"y0[{i}]")
            dtypes = {c.dtype for c in y0}
            devices = {c.device for c in y0}
            if len(dtypes) > 1 or len(devices) > 1:
                raise TypeError(f"the components of y0 must share one dtype and device, got "
                                f"{[(c.dtype, str(c.device)) for c in y0]}; convert them first")
            return cls(tuple(y0), tuple(y0))
        raise TypeError(f"y0 must be a tensor or a non-empty tuple of tensors, got {type(y0).__name__}")

    def split(self, flat: torch.Tensor, lead: tuple[int, ...] = ()) -> tuple[torch.Tensor, ...]:
        parts = torch.split(flat, self.sizes, dim=-1)
        return tuple(p.reshape(*lead, *c.shape) for p, c in zip(parts, self.components))

    def tolerance(self, tol, name: str):
        """A tolerance as a float or a tensor shaped like the (flat) state."""
        like = self.flat_y0
        if self.components is not None and isinstance(tol, (tuple, list)):
            if len(tol) != len(self.components):
                raise ValueError(f"{name} has {len(tol)} entries but y0 has {len(self.components)} components")
            parts = []
            for i, (part, c) in enumerate(zip(tol, self.components)):
                part = torch.as_tensor(part, dtype=like.dtype, device=like.device)
                try:
                    parts.append(part.expand(c.shape).reshape(-1))
                except RuntimeError:
                    raise ValueError(f"{name}[{i}] of shape {tuple(part.shape)} does not broadcast to the shape "
                                     f"{tuple(c.shape)} of y0[{i}]") from None
            return torch.cat(parts)
        if isinstance(tol, (tuple, list)):
            raise TypeError(f"{name} is a {type(tol).__name__} of {len(tol)} entries, but y0 is a single tensor: "
                            f"give a number, or a tensor that broadcasts to y0's shape {tuple(self.y0.shape)}")
        if isinstance(tol, torch.Tensor):
            target = self.y0 if self.components is None else like
            try:
                return tol.to(dtype=like.dtype, device=like.device).expand(target.shape)
            except RuntimeError:
                raise ValueError(f"{name} of shape {tuple(tol.shape)} does not broadcast to the state's "
                                 f"shape {tuple(target.shape)}") from None
        return float(tol)

    def wrap(self, func: Callable) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``func`` on the flat state, checking what it returns."""
        if self.components is None:
            def flat_func(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                out = func(t, y)
                if (not isinstance(out, torch.Tensor) or out.shape != y.shape or out.dtype != y.dtype
                        or out.device != y.device):
                    _bad_output(out, y)
                return out
            return flat_func

        def tuple_func(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            parts = self.split(y)
            out = func(t, parts)
            if not isinstance(out, (tuple, list)) or len(out) != len(parts):
                raise TypeError(f"func must return a tuple of {len(parts)} tensors like y0, got "
                                f"{type(out).__name__}{'' if not isinstance(out, (tuple, list)) else f' of length {len(out)}'}")
            for o, p in zip(out, parts):
                if not isinstance(o, torch.Tensor) or o.shape != p.shape or o.dtype != p.dtype or o.device != p.device:
                    _bad_output(o, p)
            return torch.cat([o.reshape(-1) for o in out])
        return tuple_func

    def unflatten_outputs(self, ys: torch.Tensor):
        if self.components is None:
            return ys
        return self.split(ys, (ys.shape[0],))


def _check_tensor(y: torch.Tensor, name: str) -> None:
    if y.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must have a real floating dtype (float32 or float64), got {y.dtype}; "
                        f"convert it, e.g. {name}.double()")
    if y.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(y.shape)})")
    if not bool(torch.isfinite(y).all()):
        raise ValueError(f"{name} has non-finite entries (inf or nan)")


def _bad_output(out, like: torch.Tensor) -> None:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"func must return a tensor like y, got {type(out).__name__}")
    if out.dtype != like.dtype:
        raise TypeError(f"func returned dtype {out.dtype} for a state of dtype {like.dtype}; "
                        f"it must return the state's dtype (see the dtype policy in symode.solve)")
    if out.device != like.device:
        raise TypeError(f"func returned a tensor on {out.device} for a state on {like.device}")
    raise ValueError(f"func returned shape {tuple(out.shape)} for a state of shape {tuple(like.shape)}; "
                     f"dy/dt must have the shape of y")
