"""A validated initial value problem, as the gradient methods see it.

``symode.solve`` turns the user's ``func``, ``y0`` and ``t`` into a ``Problem``: one state
tensor (tuple states are flattened into one vector), output times as Python floats, the
tableau, the step-size rule and the parameters to differentiate. Gradient methods only use
this object, so none of them handles tuples, dtypes or input checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .integrate import Stats, Trajectory, integrate
from .step_size import AdaptiveSteps, FixedSteps
from .tableau import ButcherTableau

__all__ = ["Problem"]


@dataclass
class Problem:
    """``func(t, y)``: the vector field on the state tensor, with ``t`` a 0-dim tensor.

    ``rtol``/``atol`` are floats or tensors shaped like ``y0``; ``norm`` maps an error
    (scaled by the tolerances) to a 0-dim tensor. ``params`` are the tensors to differentiate
    besides ``y0``; ``params_explicit`` says whether the user named them (``adjoint_params``).
    """

    func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    y0: torch.Tensor
    t_out: list[float]
    tableau: ButcherTableau
    steps: FixedSteps | AdaptiveSteps
    rtol: object = None
    atol: object = None
    norm: Callable[[torch.Tensor], torch.Tensor] | None = None
    params: tuple[torch.Tensor, ...] = ()
    params_explicit: bool = False
    stats: Stats = field(default_factory=Stats)
    t: torch.Tensor | None = None  # the output times as the user gave them (for their gradient)
    compile: bool = False  # take the forward steps with torch.compile (symode.compiled)

    def time(self, t: float) -> torch.Tensor:
        """The time tensor handed to ``func``: 0-dim, of the state's dtype and device."""
        return torch.scalar_tensor(t, dtype=self.y0.dtype, device=self.y0.device)

    def rhs(self, counter: str = "nfe_forward") -> Callable[..., torch.Tensor]:
        """``rhs(t_float, y, dt=None)``, counting each call in ``stats.<counter>``; ``dt``
        is a zero-valued tensor added to the time to carry its gradient."""
        func, time, stats = self.func, self.time, self.stats

        def rhs(t: float, y: torch.Tensor, dt: torch.Tensor | None = None) -> torch.Tensor:
            setattr(stats, counter, getattr(stats, counter) + 1)
            return func(time(t) if dt is None else time(t) + dt, y)
        return rhs

    def integrate(self, y0: torch.Tensor | None = None, *, keep_states: bool = False,
                  keep_stages: bool = False, f0: torch.Tensor | None = None,
                  time_carriers=None) -> Trajectory:
        """Run the time loop from ``y0`` (default: the problem's), counting forward calls;
        with ``compile``, its steps are compiled (``symode.compiled``)."""
        rhs, step = self.rhs(), None
        if self.compile:
            from .compiled import CompiledStep
            step = CompiledStep(self.func, rhs, self.tableau, self.stats, "nfe_forward", self.y0.dtype, self.y0.device)
        return integrate(rhs, self.y0 if y0 is None else y0, self.t_out, self.tableau, self.steps,
                         rtol=self.rtol, atol=self.atol, norm=self.norm, keep_states=keep_states,
                         keep_stages=keep_stages, stats=self.stats, f0=f0, time_carriers=time_carriers, step=step)

    @property
    def wants_time_grad(self) -> bool:
        """Whether the gradient with respect to the output times is asked for."""
        return torch.is_grad_enabled() and self.t is not None and self.t.requires_grad

    def time_carriers(self) -> list[torch.Tensor]:
        """Per output time, a tensor of value zero whose gradient is that of ``t[k]``
        (in the state's dtype): see ``symode.runge_kutta``."""
        zero = self.t - self.t.detach()
        return list(zero.to(self.y0.dtype).unbind())

    @property
    def requires_grad(self) -> bool:
        """Whether a gradient is asked for at all (grad mode on and something requires it)."""
        return torch.is_grad_enabled() and (self.y0.requires_grad or any(p.requires_grad for p in self.params)
                                            or (self.t is not None and self.t.requires_grad))
