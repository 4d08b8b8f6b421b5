"""``ODEProblem``: a validated initial value problem, as the gradient methods see it.

``symode.solve`` turns the user's ``func``, ``y0`` and ``t`` into an ``ODEProblem``: one
state tensor (tuple states are flattened into one vector, see ``StateLayout``), output times
as Python floats, the tableau, the step-size rule, the tolerances and the parameters to
differentiate. Gradient methods only use this object, so none of them handles tuples, dtypes
or input checks.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ._implicit import implicit_step
from ._integrate import Trajectory, integrate
from ._newton import JacobianTape, Newton, NewtonSettings
from ._random import RandomTape, StepReplay
from ._runge_kutta import Nudged, rk_step
from ._state import StateLayout
from ._stats import Stats
from ._step_size import AdaptiveSteps, FixedSteps, Norm, RecordedSteps
from ._tableau import ButcherTableau

__all__ = ["ODEProblem", "Rhs", "StepCallbacks"]

#: ``rhs(t, y, dt=None)``: ``f`` at a float time (``dt``: a zero-valued tensor that carries the
#: time's gradient), counting each call.
Rhs = Callable[..., torch.Tensor]


class StepCallbacks:
    """torchdiffeq's step callbacks of ``func`` (``callback_step``, ``callback_accept_step``,
    ``callback_reject_step``), called by the forward solve's time loop with ``(t, y, dt)``: ``t``
    and ``dt`` as float64 0-dim tensors (``t + dt`` is the step's end), ``y`` in ``y0``'s
    structure. The backward passes do not call them. ``suffix="_adjoint"``: the continuous
    adjoint's callbacks (``callback_step_adjoint``...), which its backward solve calls with the
    augmented state that :meth:`with_state` converts it to."""

    NAMES = ("callback_step", "callback_accept_step", "callback_reject_step")

    def __init__(self, func: Any, layout: StateLayout, suffix: str = ""):
        self.hooks = [getattr(func, name + suffix, None) for name in self.NAMES]
        self.convert: Callable[[torch.Tensor], Any] = layout.unflatten

    @classmethod
    def of(cls, func: Any, layout: StateLayout, suffix: str = "") -> StepCallbacks | None:
        if not any(callable(getattr(func, name + suffix, None)) for name in cls.NAMES):
            return None
        return cls(func, layout, suffix)

    def with_state(self, convert: Callable[[torch.Tensor], Any]) -> StepCallbacks:
        """These callbacks, handed ``convert(y)`` for the time loop's state ``y``."""
        other = copy.copy(self)
        other.convert = convert
        return other

    def _call(self, which: int, t: float, y: torch.Tensor, h: float) -> None:
        hook = self.hooks[which]
        if callable(hook):
            with torch.no_grad():
                time, step = (torch.tensor(x, dtype=torch.float64) for x in (t, h))
                hook(time, self.convert(y.detach()), step)

    def step(self, t: float, y: torch.Tensor, h: float) -> None:
        self._call(0, t, y, h)

    def accept(self, t: float, y: torch.Tensor, h: float) -> None:
        self._call(1, t, y, h)

    def reject(self, t: float, y: torch.Tensor, h: float) -> None:
        self._call(2, t, y, h)


@dataclass(frozen=True)
class ODEProblem:
    """What a gradient method is given (the extension contract; see ``GradientMethod``).

    Attributes:
        func: ``func(t, y)``, the vector field on the flat state tensor, ``t`` a 0-dim tensor
            of the state's dtype; it checks what the user's ``func`` returns.
        y0: the initial state as one tensor (tuple states flattened; see ``layout``).
        t_out: the output times as Python floats (float64), ``t_out[0]`` the initial time;
            strictly monotone.
        tableau: the Runge-Kutta method.
        steps: the step-size rule: ``FixedSteps`` or ``AdaptiveSteps``; ``RecordedSteps`` to
            replay the steps of an earlier solve (``symode._events``: the solve to an event).
        layout: the state's structure (``StateLayout``): tuple components, tolerance and
            norm conversions.
        rtol, atol: the tolerances of adaptive steps as floats or tensors shaped like ``y0``
            (``None`` for fixed steps).
        norm: the error norm of adaptive steps on ``y0``'s shape (``None`` for fixed steps).
        params: the tensors to differentiate besides ``y0`` (those that require grad).
        params_explicit: whether the user named them (``adjoint_params``).
        buffers: the buffers of ``func`` when it is an ``nn.Module`` (the methods that
            evaluate ``func`` again in a backward pass check that it leaves them alone).
        t: the output times as the user gave them, when their gradient is asked for (else
            ``None``).
        compile: take the forward steps with ``torch.compile`` (``symode._compiled``).
        stats: the counts of this solve; the gradient methods add their backward counts.
        callbacks: ``func``'s step callbacks (torchdiffeq's), called by the forward solve.
        adjoint_callbacks: ``func``'s ``_adjoint`` step callbacks, for the continuous adjoint's
            backward solve.
        newton: how an implicit method's stage equations are solved (``symode.Newton``).
        stage_check: called on each evaluation of ``func`` in an implicit step's backward pass
            (``symode._implicit_gradient``), to refuse tensors that would get no gradient.
        rng_tape: when ``func`` draws random numbers and an exact method evaluates it again
            in its backward pass: the random generators' states of the forward solve, per
            accepted step (``symode._random.RandomTape``), which ``integrate`` records and the
            backward pass replays (``problem.replay(n)``); ``None`` otherwise.
        jacobians: an implicit method's Jacobian points, per step (``symode._newton.JacobianTape``):
            ``integrate`` records them and ``stepper`` elsewhere replays them.
    """

    func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    y0: torch.Tensor
    t_out: Sequence[float]
    tableau: ButcherTableau
    steps: FixedSteps | AdaptiveSteps | RecordedSteps
    layout: StateLayout
    rtol: float | torch.Tensor | None = None
    atol: float | torch.Tensor | None = None
    norm: Norm | None = None
    params: tuple[torch.Tensor, ...] = ()
    params_explicit: bool = False
    buffers: tuple[torch.Tensor, ...] = ()
    t: torch.Tensor | None = None
    compile: bool = False
    stats: Stats = field(default_factory=Stats)
    rng_tape: RandomTape | None = None
    callbacks: StepCallbacks | None = None
    adjoint_callbacks: StepCallbacks | None = None
    newton: Newton = field(default_factory=Newton)
    stage_check: Callable[..., None] | None = None
    jacobians: JacobianTape = field(default_factory=JacobianTape)

    def time(self, t: float) -> torch.Tensor:
        """The time tensor handed to ``func``: 0-dim, of the state's dtype and device (a
        ``Nudged`` time: the next one representable in that dtype, towards its side)."""
        value = torch.scalar_tensor(t, dtype=self.y0.dtype, device=self.y0.device)
        if isinstance(t, Nudged):
            value = torch.nextafter(value, torch.full_like(value, t.toward * math.inf))
        return value

    def rhs(self, counter: str = "nfe_forward") -> Rhs:
        """``rhs(t_float, y, dt=None)``, counting each call in ``stats.<counter>``; ``dt``
        is a zero-valued tensor added to the time to carry its gradient."""
        func, time, stats = self.func, self.time, self.stats

        def rhs(t: float, y: torch.Tensor, dt: torch.Tensor | None = None) -> torch.Tensor:
            stats.count(counter)
            return func(time(t) if dt is None else time(t) + dt, y)

        return rhs

    def integrate(
        self,
        y0: torch.Tensor | None = None,
        *,
        keep_states: bool = False,
        keep_stages: bool = False,
        keep_derivatives: bool = False,
        f0: torch.Tensor | None = None,
        time_carriers: Sequence[torch.Tensor] | None = None,
        until: Callable[..., bool] | None = None,
    ) -> Trajectory:
        """The forward solve: run the time loop from ``y0`` (default: the problem's), counting
        the calls of ``f`` in ``stats.nfe_forward``; with ``compile``, its steps are compiled
        (``symode._compiled``). ``keep_states``/``keep_stages`` keep every accepted state/the
        stage states of every step, ``keep_derivatives`` the stage derivatives the continuous
        extension uses (for ``symode.solve(dense=True)``); ``f0 = f(t0, y0)`` if already evaluated;
        ``time_carriers``: see ``time_carriers``; ``until``: see ``symode._integrate.integrate``."""
        rhs = self.rhs()
        step: Callable[..., Any] | None = None
        if self.rng_tape is not None:
            rhs = self.rng_tape.recording(rhs)
        if self.compile:  # imported here: torch.compile's machinery is slow to import
            from ._compiled import CompiledStep

            def count(n: int) -> None:
                self.stats.count("nfe_forward", n)

            step = CompiledStep(self.func, rhs, self.tableau, count, self.y0.dtype, self.y0.device)
        else:
            step = self.stepper(rhs, recording=True)
        return integrate(
            rhs,
            self.y0 if y0 is None else y0,
            self.t_out,
            self.tableau,
            self.steps,
            rtol=self.rtol,
            atol=self.atol,
            norm=self.norm,
            keep_states=keep_states,
            keep_stages=keep_stages,
            keep_derivatives=keep_derivatives,
            stats=self.stats,
            f0=f0,
            time_carriers=time_carriers,
            step=step,
            tape=self.rng_tape,
            callbacks=self.callbacks,
            until=until,
        )

    def stepper(self, rhs: Rhs, recording: bool = False) -> Callable[..., Any]:
        """The function that takes one step of the tableau with ``rhs``, with ``rk_step``'s
        signature after ``(rhs, tableau)``: an implicit tableau's steps solve their stages with
        the problem's Newton settings and, with a graph, differentiate them by the implicit
        function theorem. ``recording``: the forward solve, which chooses the Jacobian each step
        starts from and notes it (``jacobians``); else the steps are recomputations of the
        forward ones, which start from the noted Jacobians: every pass finds the same stages."""
        if not self.tableau.implicit:
            return functools.partial(rk_step, rhs, self.tableau)
        from ._implicit_gradient import StageGradient

        gradient = StageGradient(self, self.stage_check)
        return functools.partial(
            implicit_step,
            rhs,
            self.tableau,
            newton=self.newton_settings,
            stats=self.stats,
            gradient=gradient,
            start=self.jacobians.recording() if recording else self.jacobians.replaying(),
        )

    @property
    def newton_settings(self) -> NewtonSettings:
        """The tolerances an implicit method's stages are solved to: the one source for the
        forward steps and for every recomputation of them, which must find the same stages."""
        return self.newton.settings(self.y0.dtype, self.rtol, self.atol)

    def replay(self, n: int, capture: bool = False) -> StepReplay | None:
        """The replay of accepted step ``n``'s random numbers (``symode._random``), or ``None``
        when ``func`` draws none: wrap the step's ``rhs`` with it (``replay.wrap(rhs)``), and
        evaluate the stages from the first, in order."""
        return None if self.rng_tape is None else self.rng_tape.step(n, capture)

    @property
    def wants_time_grad(self) -> bool:
        """Whether the gradient with respect to the output times is asked for."""
        return torch.is_grad_enabled() and self.t is not None and self.t.requires_grad

    def time_carriers(self) -> list[torch.Tensor]:
        """Per output time, a tensor of value zero whose gradient is that of ``t[k]``
        (in the state's dtype): see ``symode._runge_kutta``."""
        if self.t is None:
            raise ValueError("the output times' gradient was not asked for (ODEProblem.t is None)")
        zero = self.t - self.t.detach()
        return list(zero.to(self.y0.dtype).unbind())

    @property
    def requires_grad(self) -> bool:
        """Whether a gradient is asked for at all (grad mode on and something requires it)."""
        return torch.is_grad_enabled() and (
            self.y0.requires_grad
            or any(p.requires_grad for p in self.params)
            or (self.t is not None and self.t.requires_grad)
        )
