"""torchdiffeq-style functions: ``odeint(func, y0, t, rtol, atol, method, options)``.

``options`` is translated into a step-size rule once, by ``make_steps`` (in
``symode.step_size``, re-exported here), with unknown keys rejected:

* fixed steps: ``step_size`` (steps per output interval) or ``grid`` (step endpoints);
  any method, adaptive ones included, takes fixed steps when given one of them;
* adaptive steps: ``first_step``, ``max_num_steps``, ``controller`` (``"pi"`` or ``"i"``),
  ``safety``, ``ifactor``, ``dfactor``.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch

from .gradients import Checkpoint, ContinuousAdjoint, OneCheckpoint, SymplecticAdjoint
from .solve import solve
from .step_size import make_steps

__all__ = ["odeint", "odeint_adjoint", "odeint_checkpoint", "odeint_onecheckpoint", "odeint_symplectic_adjoint",
           "make_steps"]

def odeint(func: Callable, y0, t, *, rtol=1e-7, atol=1e-9, method="dopri5",
           options: Mapping | None = None, gradient="backprop",
           adjoint_params: Sequence[torch.Tensor] | None = None, compile: bool = False):
    """Solve ``dy/dt = func(t, y)`` from ``y0`` at ``t[0]``; return the states at ``t``
    (shape ``(len(t), *y0.shape)``, or a tuple for a tuple ``y0``).

    As torchdiffeq's ``odeint``, plus ``gradient`` (``"backprop"``, ``"symplectic_adjoint"``
    or a gradient object) to choose how the solve is differentiated. See
    ``symode.solve`` for the arguments (``compile`` included) and the dtype policy and
    ``symode.compat`` for the options.
    """
    steps = make_steps(method, rtol, atol, options)
    return solve(func, y0, t, method=method, steps=steps, gradient=gradient, adjoint_params=adjoint_params,
                 compile=compile).ys


def odeint_symplectic_adjoint(func: Callable, y0, t, *, rtol=1e-7, atol=1e-9, method="dopri5",
                              options: Mapping | None = None,
                              adjoint_params: Sequence[torch.Tensor] | None = None, compile: bool = False):
    """``odeint`` differentiated by the symplectic adjoint method: the exact gradient of the
    solve with memory of the stored states plus one network use (the name and signature of
    the authors' ``torch_symplectic_adjoint``)."""
    return odeint(func, y0, t, rtol=rtol, atol=atol, method=method, options=options,
                  gradient=SymplecticAdjoint(), adjoint_params=adjoint_params, compile=compile)


def odeint_checkpoint(func: Callable, y0, t, *, rtol=1e-7, atol=1e-9, method="dopri5",
                      options: Mapping | None = None, adjoint_params: Sequence[torch.Tensor] | None = None,
                      compile: bool = False):
    """``odeint`` differentiated by checkpointing every accepted step and backpropagating
    through one rebuilt step at a time (ACA; the authors' ``odeint_checkpoint``)."""
    return odeint(func, y0, t, rtol=rtol, atol=atol, method=method, options=options,
                  gradient=Checkpoint(), adjoint_params=adjoint_params, compile=compile)


def odeint_onecheckpoint(func: Callable, y0, t, *, rtol=1e-7, atol=1e-9, method="dopri5",
                         options: Mapping | None = None, adjoint_params: Sequence[torch.Tensor] | None = None,
                      compile: bool = False):
    """``odeint`` differentiated by storing ``y0`` only and backpropagating through a
    re-run of the whole solve (the authors' ``odeint_onecheckpoint``)."""
    return odeint(func, y0, t, rtol=rtol, atol=atol, method=method, options=options,
                  gradient=OneCheckpoint(), adjoint_params=adjoint_params, compile=compile)


def odeint_adjoint(func: Callable, y0, t, *, rtol=1e-7, atol=1e-9, method="dopri5",
                   options: Mapping | None = None, adjoint_rtol=None, adjoint_atol=None,
                   adjoint_method=None, adjoint_options: Mapping | None = None,
                   adjoint_params: Sequence[torch.Tensor] | None = None, compile: bool = False):
    """``odeint`` differentiated by the continuous adjoint method (torchdiffeq's
    ``odeint_adjoint``): memory independent of the number of steps, a gradient as accurate as
    the backward solve. ``adjoint_rtol``/``adjoint_atol``/``adjoint_method``/``adjoint_options``
    set the backward solve (``None``: as the forward one); ``adjoint_options`` may hold
    ``"norm": "seminorm"`` to leave the parameter gradients out of its error control."""
    norm = "default"
    if adjoint_options is not None:
        if not isinstance(adjoint_options, Mapping):
            raise TypeError(f"adjoint_options must be a dict, got {type(adjoint_options).__name__}")
        adjoint_options = dict(adjoint_options)
        norm = adjoint_options.pop("norm", "default")
    gradient = ContinuousAdjoint(rtol=adjoint_rtol, atol=adjoint_atol, method=adjoint_method,
                                 options=adjoint_options, norm=norm)
    return odeint(func, y0, t, rtol=rtol, atol=atol, method=method, options=options,
                  gradient=gradient, adjoint_params=adjoint_params, compile=compile)
