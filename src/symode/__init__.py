"""symode: explicit Runge-Kutta ODE solvers for PyTorch, differentiated exactly with minimal
memory by the symplectic adjoint method."""

from .compat import (odeint, odeint_adjoint, odeint_checkpoint, odeint_onecheckpoint,
                     odeint_symplectic_adjoint)
from .gradients import (Backprop, Checkpoint, ContinuousAdjoint, GradientMethod, OneCheckpoint,
                        SymplecticAdjoint)
from .integrate import SolveError, Stats
from .methods import TABLEAUS, get_tableau
from .solve import Solution, solve
from .step_size import AdaptiveSteps, FixedSteps
from .tableau import ButcherTableau

__version__ = "0.1.0"

__all__ = [
    "odeint", "odeint_adjoint", "odeint_checkpoint", "odeint_onecheckpoint", "odeint_symplectic_adjoint",
    "solve", "Solution", "Stats", "SolveError",
    "Backprop", "Checkpoint", "OneCheckpoint", "SymplecticAdjoint", "ContinuousAdjoint", "GradientMethod",
    "FixedSteps", "AdaptiveSteps", "ButcherTableau", "TABLEAUS", "get_tableau",
]
