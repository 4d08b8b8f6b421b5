"""Gradient methods: objects that say how a solve is differentiated."""

from .adjoint import ContinuousAdjoint
from .backprop import Backprop
from .base import GradientMethod
from .checkpoint import Checkpoint, OneCheckpoint
from .symplectic import SymplecticAdjoint

__all__ = ["GradientMethod", "Backprop", "ContinuousAdjoint", "Checkpoint", "OneCheckpoint", "SymplecticAdjoint", "GRADIENT_METHODS", "get_gradient_method"]

#: every gradient method of the package, by its shorthand name
GRADIENT_METHODS: dict[str, type[GradientMethod]] = {
    cls.name: cls for cls in (Backprop, Checkpoint, OneCheckpoint, SymplecticAdjoint, ContinuousAdjoint)
}
_ALIASES = {"symplectic": "symplectic_adjoint", "backprop_through_solver": "backprop",
            "continuous_adjoint": "adjoint", "aca": "checkpoint", "onecheckpoint": "one_checkpoint"}


def get_gradient_method(gradient) -> GradientMethod:
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
            f"or an object such as symode.SymplecticAdjoint()")
    raise TypeError(
        f"gradient must be a string such as 'symplectic_adjoint' or a GradientMethod object, got {gradient!r}")
