"""The continuous adjoint method (Chen, Rubanova, Bettencourt & Duvenaud, "Neural Ordinary
Differential Equations", NeurIPS 2018), as torchdiffeq's ``odeint_adjoint`` does it.

Forward: integrate without an autograd graph, keeping only the outputs ``y(t_0..t_K)``.
Backward: solve the augmented system ``z = [y, a, g]`` (one flat vector) backward in time,
from ``t_K`` to ``t_0``, one output interval at a time::

    dy/dt = f(t, y, θ),    da/dt = -aᵀ ∂f/∂y,    dg/dt = -aᵀ ∂f/∂θ

from ``y(t_K)`` (the forward output), ``a(t_K) = ∂L/∂y(t_K)``, ``g(t_K) = 0``. Passing an
output time ``t_k`` adds ``∂L/∂y(t_k)`` to ``a`` and resets ``y`` to the forward output
``y(t_k)`` (as torchdiffeq does, so the backward ``y`` does not drift from the forward one).
At the end ``a(t_0) = dL/dy_0`` and ``g(t_0) = dL/dθ``. Each evaluation of the augmented
field is one evaluation of ``f`` with a graph plus one vector-Jacobian product.

This is the gradient of the *continuous* problem, computed by a second numerical solve: it
differs from the exact gradient of the discrete forward solve (what backprop computes) by the
errors of both solves, and approaches it as the tolerances tighten (``exact = False``).
Memory: the outputs, the augmented state (``2|y| + |θ|``) times the stages of the backward
method, and one network use in the autograd graph.

The error norm of the backward solve (``norm=``):

* ``"default"``: torchdiffeq's mixed norm, ``max(‖y‖, ‖a‖, max_p RMS(g_p))``, where ``‖·‖`` is
  the forward solve's norm on the state (RMS; for tuple states the max of the components'
  RMS) and ``g_p`` is the gradient integral of parameter tensor ``p``;
* ``"seminorm"``: ``max(‖y‖, ‖a‖)``, leaving the parameter integrals out of the step-size
  control (Kidger, Chen & Lyons, "'Hey, that's not an ODE': faster ODE adjoints via
  seminorms", ICML 2021): they feed nothing back into the dynamics, so their error is not
  amplified, and large networks then need far fewer backward steps.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .._checks import check_tolerance
from .._implicit import implicit_step
from .._integrate import Trajectory, integrate
from .._ivp import ODEProblem
from .._methods import get_tableau
from .._stats import Stats
from .._step_size import AdaptiveSteps, FixedSteps, Tolerance, rms_norm
from .._tableau import ButcherTableau
from ._augmented import augmented_preconditioner
from ._base import GradientMethod
from ._first_evaluation import check_closures
from ._recording import RecordingMethod

__all__ = ["ContinuousAdjoint"]

_NORMS = ("default", "seminorm")


class ContinuousAdjoint(RecordingMethod):
    """The continuous adjoint: memory ``O(|y| + |θ| + L)`` independent of the number of steps,
    a gradient as accurate as the backward solve's tolerances allow.

    Each argument left ``None`` is taken from the forward solve.

    Args:
        rtol: the backward solve's relative tolerance, when it reuses the forward solve's
            adaptive step rule: a positive number, or a tensor that broadcasts to the state
            (the flat state for tuple states). It applies to ``y`` and ``a`` entry by entry;
            the parameter integrals take its smallest entry. With ``steps``, give the
            tolerances there instead.
        atol: the absolute tolerance, likewise.
        method: the backward solve's method (name or ``ButcherTableau``).
        steps: the backward solve's step rule, as in ``symode.solve``: ``FixedSteps`` or
            ``AdaptiveSteps`` (its tolerances, controller and limits); ``None`` reuses the
            forward solve's rule (its step size, grid or controller; not its ``first_step``,
            which belongs to the forward start: the backward solve chooses its own). ``odeint_adjoint``
            translates torchdiffeq's ``adjoint_options`` dict into it.
        norm: ``"default"`` (torchdiffeq's mixed norm over ``y``, ``a`` and each parameter's
            gradient) or ``"seminorm"`` (``y`` and ``a`` only); see the module docstring.

    Costs: the backward solve's steps, each evaluation being one use of ``f`` with a graph
    and one vector-Jacobian product (``stats.nfe_backward`` and ``stats.nfe_backward_vjp``
    both count them), plus one per output interval for the initial-step heuristic of an
    adaptive backward solve.
    """

    name = "adjoint"
    exact = False
    time_gradient = True  # the usual formula: see _BackwardSolver.run

    def __init__(
        self,
        rtol: Tolerance | None = None,
        atol: Tolerance | None = None,
        method: str | ButcherTableau | None = None,
        steps: FixedSteps | AdaptiveSteps | None = None,
        norm: str | Callable[..., torch.Tensor] = "default",
    ):
        self.rtol = _checked_tolerance(rtol, "rtol")
        self.atol = _checked_tolerance(atol, "atol")
        tableau = None
        if method is not None:
            tableau = _prefixed(get_tableau, method)
        self.method = method
        if steps is not None:
            if not isinstance(steps, (FixedSteps, AdaptiveSteps)):
                raise TypeError(
                    f"ContinuousAdjoint: steps must be symode.FixedSteps or symode.AdaptiveSteps, got "
                    f"{steps!r} (odeint_adjoint takes torchdiffeq's options dict as adjoint_options)"
                )
            if rtol is not None or atol is not None:
                raise ValueError(
                    "ContinuousAdjoint: with steps, give the tolerances there "
                    "(steps=symode.AdaptiveSteps(rtol=..., atol=...)), not as rtol/atol"
                )
            if isinstance(steps, AdaptiveSteps) and tableau is not None:
                _prefixed(tableau.check_adaptive)
        self.steps = steps
        if callable(norm):
            self.norm: str | Callable[..., torch.Tensor] = norm
            return
        if not isinstance(norm, str):
            raise TypeError(f"ContinuousAdjoint: norm must be one of {list(_NORMS)} or a callable, got {norm!r}")
        if norm.lower() not in _NORMS:
            raise ValueError(f"ContinuousAdjoint: norm must be one of {list(_NORMS)} or a callable, got {norm!r}")
        self.norm = norm.lower()

    @classmethod
    def configurations(cls) -> list[GradientMethod]:
        return [cls(), cls(norm="seminorm")]

    def __repr__(self) -> str:
        args = [f"{k}={v!r}" for k, v in vars(self).items() if v is not None and not (k == "norm" and v == "default")]
        return f"{type(self).__name__}({', '.join(args)})"

    def __eq__(self, other) -> bool:  # tensors in rtol/atol: compare by identity, not by value
        return type(self) is type(other) and all(
            (a is b) if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor) else a == b
            for a, b in zip(vars(self).values(), vars(other).values())
        )

    def __hash__(self) -> int:
        return hash(type(self))

    # ----------------------------------------------------------------------------------
    def solve(self, problem: ODEProblem) -> tuple[torch.Tensor, Trajectory]:
        if problem.requires_grad:
            self._backward_solver(problem, problem.params)  # bad settings fail before the forward solve
        return super().solve(problem)

    def record(self, problem: ODEProblem, y0: torch.Tensor, f0: torch.Tensor) -> Trajectory:
        return problem.integrate(y0, f0=f0)  # only the outputs are kept

    def backward(self, problem, trajectory, grad_ys, params, with_time):
        with torch.no_grad():
            return self._backward_solver(problem, params).run(trajectory.outputs, grad_ys, with_time)

    def _backward_solver(self, problem: ODEProblem, params: Sequence[torch.Tensor]) -> _BackwardSolver:
        """The backward solve's tableau, step rule, tolerances and norm, from this object's
        settings and the forward problem's."""
        tableau = problem.tableau if self.method is None else get_tableau(self.method)
        steps = problem.steps if self.steps is None else self.steps
        if self.steps is None and isinstance(steps, AdaptiveSteps) and steps.first_step is not None:
            # the forward rule's first step belongs to the forward start (t0, y0): the backward
            # solve starts elsewhere and chooses its own (a first step of 1e-300 taken from the
            # forward solve could not even move t there)
            steps = dataclasses.replace(steps, first_step=None)
        rtol = atol = None
        if isinstance(steps, AdaptiveSteps):
            _prefixed(tableau.check_adaptive)
            if self.steps is not None:  # the tolerances of the backward rule
                rtol = _prefixed(problem.layout.tolerance, steps.rtol, "rtol")
                atol = _prefixed(problem.layout.tolerance, steps.atol, "atol")
            else:  # the forward rule, with this object's tolerances where given
                rtol = problem.rtol if self.rtol is None else _prefixed(problem.layout.tolerance, self.rtol, "rtol")
                atol = problem.atol if self.atol is None else _prefixed(problem.layout.tolerance, self.atol, "atol")
        return _BackwardSolver(problem, tuple(params), tableau, steps, rtol, atol, self.norm)


# --------------------------------------------------------------------------------------
class _BackwardSolver:
    """The backward solve of the augmented system for one forward problem."""

    def __init__(
        self,
        problem: ODEProblem,
        params: tuple[torch.Tensor, ...],
        tableau: ButcherTableau,
        steps,
        rtol,
        atol,
        norm: Any,
    ):
        self.problem = problem
        self.params = params  # those that require grad
        self.tableau = tableau
        self.steps = steps
        self.n = problem.y0.numel()
        self.param_sizes = [p.numel() for p in self.params]
        self.state_norm = problem.norm if problem.norm is not None else rms_norm
        adaptive = isinstance(steps, AdaptiveSteps)
        self.rtol = self._augmented_tolerance(rtol) if adaptive else None
        self.atol = self._augmented_tolerance(atol) if adaptive else None
        self.norm = self._augmented_norm(norm) if adaptive else None
        callbacks = problem.adjoint_callbacks
        self.callbacks = None if callbacks is None else callbacks.with_state(self._callback_state)

    def _callback_state(self, z: torch.Tensor) -> tuple[Any, ...]:
        """The augmented state as the ``_adjoint`` callbacks see it, at torchdiffeq's positions:
        ``(None, y, a, *dL/dθ_p)``; torchdiffeq's first entry, the adjoint of ``t``, is not
        integrated here (the time gradients come from a closed formula), so it is ``None``."""
        n, layout = self.n, self.problem.layout
        grads = torch.split(z[2 * n :], self.param_sizes) if self.params else ()
        shaped = [g.view(p.shape) for g, p in zip(grads, self.params)]
        return (None, layout.unflatten(z[:n]), layout.unflatten(z[n : 2 * n]), *shaped)

    def _augmented_tolerance(self, tol):
        """A tolerance for ``z = [y, a, g]``: a float, or a flat tensor (the state's tolerance
        for ``y`` and ``a``, its smallest entry for ``g``)."""
        if not isinstance(tol, torch.Tensor):
            return float(tol)
        flat = tol.reshape(-1)
        g_part = flat.min().expand(sum(self.param_sizes))
        return torch.cat([flat, flat, g_part])

    def _augmented_norm(self, kind):
        n, y_shape, state_norm = self.n, self.problem.y0.shape, self.state_norm
        sizes = self.param_sizes
        if callable(kind):  # the user's, handed (y, a, *dL/dθ_p) shaped like the state and the parameters
            shapes = [p.shape for p in self.params]

            def user_norm(err: torch.Tensor) -> torch.Tensor:
                grads = [g.view(shape) for g, shape in zip(torch.split(err[2 * n :], sizes), shapes)]
                value = torch.as_tensor(kind(err[:n].view(y_shape), err[n : 2 * n].view(y_shape), *grads))
                if value.numel() != 1:
                    raise ValueError(f"adjoint norm must return a scalar, got shape {tuple(value.shape)}")
                return value.reshape(())

            return user_norm

        def seminorm(err: torch.Tensor) -> torch.Tensor:
            return torch.maximum(state_norm(err[:n].view(y_shape)), state_norm(err[n : 2 * n].view(y_shape)))

        if kind == "seminorm" or not sizes:
            return seminorm

        def mixed_norm(err: torch.Tensor) -> torch.Tensor:
            parts = [rms_norm(g) for g in torch.split(err[2 * n :], sizes)]
            return torch.stack([seminorm(err), *parts]).max()

        return mixed_norm

    def _interval_steps(self, t_from: float, t_to: float):
        """The step rule for the backward interval ``t_from -> t_to``: the forward grid, if
        one was given, restricted to it and reversed."""
        steps = self.steps
        if isinstance(steps, FixedSteps) and steps.grid is not None:
            lo, hi = min(t_from, t_to), max(t_from, t_to)
            inner = sorted((g for g in steps.grid if lo < g < hi), reverse=t_to < t_from)
            return FixedSteps(grid=(t_from, *inner, t_to))
        return steps

    def rhs(self, t: float, z: torch.Tensor) -> torch.Tensor:
        """``dz/dt`` of the augmented system: one evaluation of ``f`` with a graph and one
        vector-Jacobian product."""
        problem, params, n = self.problem, self.params, self.n
        stats = problem.stats
        stats.nfe_backward += 1
        stats.nfe_backward_vjp += 1
        y = z[:n].view(problem.y0.shape)
        a = z[n : 2 * n].view(problem.y0.shape)
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            f = problem.func(problem.time(t), y)
            check_closures(problem, f, (y,), "ContinuousAdjoint", "an evaluation of the backward solve")
            vjps: tuple[torch.Tensor | None, ...]
            if f.requires_grad:
                vjps = torch.autograd.grad(f, (y, *params), -a, allow_unused=True)
            else:  # f depends neither on y nor on any parameter here
                vjps = (None,) * (1 + len(params))
        parts = [f.detach().reshape(-1)]
        for v, like in zip(vjps, (y, *params)):
            parts.append(
                torch.zeros(like.numel(), dtype=z.dtype, device=z.device) if v is None else v.reshape(-1).to(z.dtype)
            )
        return torch.cat(parts)

    def _implicit_step(self, dtype: torch.dtype):
        """An implicit method's step on the augmented system: Newton's method preconditioned by
        its diagonal blocks, ``J`` for ``y``, ``-J^T`` for ``a`` and zero for the parameters'
        part (``symode.gradients._augmented``), so that no Jacobian of the size of the parameters
        is ever formed; Newton's residual is the full system's, so it converges to it."""
        settings = self.problem.newton.settings(dtype, self.rtol, self.atol)
        preconditioner = augmented_preconditioner(self.problem, self.tableau, settings, self.n)
        return functools.partial(implicit_step, self.rhs, self.tableau, newton=settings, preconditioner=preconditioner)

    def run(self, ys: Sequence[torch.Tensor], grad_ys: torch.Tensor, with_time: bool = False):
        """``(dL/dy0, [dL/dt_k] or None, [dL/dθ_p])`` from the forward outputs ``ys`` and their
        cotangents. In time, the usual formula of the continuous problem: an output time
        ``t_k`` (k >= 1) moves only its own output, ``dL/dt_k = <dL/dy_k, f(t_k, y_k)>``, and
        ``dL/dt_0 = -<a(t_0), f(t_0, y_0)>`` with the adjoint ``a`` reaching ``t_0`` from the
        later outputs: one evaluation of ``f`` per output time."""
        problem, n = self.problem, self.n
        t_out = problem.t_out
        dtype, device = grad_ys.dtype, grad_ys.device
        a = grad_ys[-1].reshape(-1)
        g = torch.zeros(sum(self.param_sizes), dtype=dtype, device=device)
        time_grads = [grad_ys.new_zeros(()) for _ in t_out] if with_time else None

        def f_dot(k: int, cotangent: torch.Tensor) -> torch.Tensor:
            problem.stats.nfe_backward += 1
            return (problem.func(problem.time(t_out[k]), ys[k]).reshape(-1) * cotangent.reshape(-1)).sum()

        for k in range(len(t_out) - 1, 0, -1):
            if time_grads is not None:  # with_time
                time_grads[k] = f_dot(k, grad_ys[k])
            z = torch.cat([ys[k].reshape(-1), a, g])
            del a, g  # copied into z: not alive during the solve
            trajectory = integrate(
                self.rhs,
                z,
                [t_out[k], t_out[k - 1]],
                self.tableau,
                self._interval_steps(t_out[k], t_out[k - 1]),
                rtol=self.rtol,
                atol=self.atol,
                norm=self.norm,
                stats=Stats(),
                callbacks=self.callbacks,
                step=self._implicit_step(z.dtype) if self.tableau.implicit else None,
            )
            z = trajectory.outputs[-1]
            del trajectory
            a = z[n : 2 * n]
            if time_grads is not None and k == 1:  # with_time
                time_grads[0] = -f_dot(0, a)
            a = a + grad_ys[k - 1].reshape(-1)
            g = z[2 * n :]
        grad_y0 = a.view(problem.y0.shape)
        grads = torch.split(g, self.param_sizes) if self.params else ()
        grad_params = [gp.view(p.shape).to(p.dtype) for gp, p in zip(grads, self.params)]
        return grad_y0, time_grads, grad_params


# --------------------------------------------------------------------------------------
def _prefixed(fn: Any, *args: Any) -> Any:
    """``fn(*args)``, its ``TypeError``/``ValueError`` saying that it concerns the backward solve."""
    try:
        return fn(*args)
    except (TypeError, ValueError) as e:
        raise type(e)(f"ContinuousAdjoint: {e}") from None


def _checked_tolerance(value: Any, name: str) -> float | torch.Tensor | None:
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        raise TypeError(
            f"ContinuousAdjoint: {name} must be a positive number or a tensor that broadcasts "
            f"to the (flat) state, got a {type(value).__name__}"
        )
    _prefixed(check_tolerance, value, name)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.item())
    return value if isinstance(value, torch.Tensor) else float(value)
