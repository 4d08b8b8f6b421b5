"""symode: Runge-Kutta ODE solvers for PyTorch, differentiated exactly with minimal memory by
the symplectic adjoint method.

The public API is what this module exports (``__all__``) and the subpackages
``symode.gradients`` (the gradient methods and their extension contract) and
``symode.bench`` (the benchmark toolkit). Modules whose names start with ``_`` are private.
"""

from importlib.metadata import PackageNotFoundError, version

from ._compat import (
    make_steps,
    odeint,
    odeint_adjoint,
    odeint_checkpoint,
    odeint_dense,
    odeint_event,
    odeint_onecheckpoint,
    odeint_symplectic_adjoint,
)
from ._dense_solution import DenseSolution
from ._events import Event, EventHit
from ._methods import TABLEAUS, get_tableau
from ._newton import Newton
from ._solve import Solution, solve
from ._state import StateLayout
from ._stats import SolveError, Stats
from ._step_size import DEFAULT_ATOL, DEFAULT_RTOL, AdaptiveSteps, FixedSteps
from ._tableau import ButcherTableau
from .gradients import Backprop, Checkpoint, ContinuousAdjoint, GradientMethod, OneCheckpoint, SymplecticAdjoint

try:
    __version__ = version("torch-symode")
except PackageNotFoundError:  # run from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = [
    "odeint",
    "odeint_adjoint",
    "odeint_checkpoint",
    "odeint_onecheckpoint",
    "odeint_symplectic_adjoint",
    "odeint_dense",
    "odeint_event",
    "make_steps",
    "solve",
    "Solution",
    "DenseSolution",
    "Event",
    "EventHit",
    "Stats",
    "SolveError",
    "Backprop",
    "Checkpoint",
    "OneCheckpoint",
    "SymplecticAdjoint",
    "ContinuousAdjoint",
    "GradientMethod",
    "FixedSteps",
    "AdaptiveSteps",
    "Newton",
    "DEFAULT_RTOL",
    "DEFAULT_ATOL",
    "ButcherTableau",
    "TABLEAUS",
    "get_tableau",
    "StateLayout",
    "__version__",
]
