"""Gradient methods: objects that say how a solve is differentiated, and the contract a new
one implements.

The methods: :class:`Backprop`, :class:`Checkpoint`, :class:`OneCheckpoint`,
:class:`SymplecticAdjoint` (exact: the gradient of the discrete solve, to round-off) and
:class:`ContinuousAdjoint` (the gradient of the continuous problem, by a backward solve).

The extension contract (see :class:`GradientMethod`): a method receives an
:class:`ODEProblem` (the validated problem: one flat state tensor, output times as floats,
the tableau, the step rule, the parameters) and returns the stacked outputs and the
:class:`Trajectory` of the time loop. :class:`RecordingMethod` and :class:`StepwiseMethod`
are templates for methods with a backward pass of their own; :func:`vjp` is the one
vector-Jacobian product they build on.
"""

from .._integrate import Trajectory
from .._ivp import ODEProblem
from ._adjoint import ContinuousAdjoint
from ._backprop import Backprop
from ._base import GradientMethod
from ._checkpoint import Checkpoint, OneCheckpoint
from ._recording import RecordingMethod, StepwiseMethod, vjp
from ._symplectic import SymplecticAdjoint

__all__ = [
    "GradientMethod",
    "Backprop",
    "ContinuousAdjoint",
    "Checkpoint",
    "OneCheckpoint",
    "SymplecticAdjoint",
    "GRADIENT_METHODS",
    "get_gradient_method",
    "ODEProblem",
    "Trajectory",
    "RecordingMethod",
    "StepwiseMethod",
    "vjp",
]

#: every gradient method of the package, by its shorthand name
GRADIENT_METHODS: dict[str, type[GradientMethod]] = {
    cls.name: cls for cls in (Backprop, Checkpoint, OneCheckpoint, SymplecticAdjoint, ContinuousAdjoint)
}
_ALIASES = {
    "symplectic": "symplectic_adjoint",
    "backprop_through_solver": "backprop",
    "continuous_adjoint": "adjoint",
    "aca": "checkpoint",
    "onecheckpoint": "one_checkpoint",
}


def get_gradient_method(gradient: object) -> GradientMethod:
    """A ``GradientMethod`` from an instance, a class or a shorthand string."""
    if isinstance(gradient, GradientMethod):
        return gradient
    if isinstance(gradient, type) and issubclass(gradient, GradientMethod):
        return gradient()
    if isinstance(gradient, str):
        key = gradient.lower().replace("-", "_")
        key = _ALIASES.get(key, key)
        if key in GRADIENT_METHODS:
            return GRADIENT_METHODS[key]()
        raise ValueError(
            f"unknown gradient method {gradient!r}; use one of {sorted(GRADIENT_METHODS)} "
            f"or an object such as symode.SymplecticAdjoint()"
        )
    raise TypeError(
        f"gradient must be a string such as 'symplectic_adjoint' or a GradientMethod object, got {gradient!r}"
    )
