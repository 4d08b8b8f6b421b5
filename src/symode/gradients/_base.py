"""The interface every gradient method implements."""

from __future__ import annotations

import abc

import torch

from .._integrate import Trajectory
from .._ivp import ODEProblem

__all__ = ["GradientMethod"]


class GradientMethod(abc.ABC):
    """How a solve is differentiated: the contract every gradient method implements.

    ``solve(problem)`` integrates the problem and returns ``(ys, trajectory)``:

    * ``ys``: the states at the output times stacked into one tensor of shape
      ``(len(problem.t_out), *problem.y0.shape)``, connected by autograd to ``problem.y0``,
      to ``problem.params`` and (when ``problem.t`` is not ``None`` and ``time_gradient`` is
      true) to ``problem.t``, in whatever way the method chooses;
    * ``trajectory``: the :class:`Trajectory` of the time loop (its accepted ``grid``,
      ``out_index``, ``outputs``; ``stats`` is ``problem.stats``).

    What the problem guarantees (:class:`ODEProblem`): ``y0`` is one floating tensor (tuple
    states are already flattened), ``t_out`` holds at least one strictly monotone float,
    ``func(t, y)`` checks what the user's function returns (shape, dtype, device), the
    tolerances and the norm are set exactly when ``steps`` is ``AdaptiveSteps``, and
    ``params`` are the tensors to differentiate that require grad. Run the forward solve with
    ``problem.integrate(...)`` (the one time loop, which counts evaluations and honours
    ``compile``); count backward evaluations of ``f`` in ``problem.stats.nfe_backward``
    (``problem.rhs("nfe_backward")`` does).

    A method is *exact* (``exact = True``) when its gradient is the gradient of the discrete
    solve with the accepted steps held fixed, i.e. what backpropagation through the solver
    computes, up to round-off; the test suite checks every exact method of
    ``symode.gradients.GRADIENT_METHODS`` against backprop, in every configuration that
    :meth:`configurations` lists. A method with a backward pass of its own subclasses
    :class:`RecordingMethod` (``record`` + ``backward``) or :class:`StepwiseMethod`
    (``record`` + ``states`` + ``step_back``: the backward loop over the steps is written
    once there).
    """

    name: str = ""
    exact: bool = True
    #: whether the method differentiates with respect to the output times ``t``
    time_gradient: bool = True

    @abc.abstractmethod
    def solve(self, problem: ODEProblem) -> tuple[torch.Tensor, Trajectory]:
        """Solve ``problem``; return the stacked outputs and the trajectory (see the class)."""

    @classmethod
    def configurations(cls) -> list[GradientMethod]:
        """One instance per distinct way of working (options that change the algorithm), so
        that tests and benchmarks discover every variant."""
        return [cls()]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash(type(self))
