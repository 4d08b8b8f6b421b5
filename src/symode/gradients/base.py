"""The interface every gradient method implements."""

from __future__ import annotations

import abc

import torch

from ..integrate import Trajectory
from ..problem import Problem

__all__ = ["GradientMethod"]


class GradientMethod(abc.ABC):
    """How a solve is differentiated.

    ``solve(problem)`` integrates the problem and returns ``(ys, trajectory)``: the states at
    the output times stacked into one tensor of shape ``(len(t), *y0.shape)``, connected to
    ``problem.y0`` and ``problem.params`` by autograd in whatever way the method chooses, and
    the trajectory (accepted grid, statistics). A method is *exact* when its gradient is the
    gradient of the discrete solve with the accepted steps held fixed, i.e. what
    backpropagation through the solver computes, up to round-off.
    """

    name: str = ""
    exact: bool = True
    #: whether the method differentiates with respect to the output times ``t``
    time_gradient: bool = True

    @abc.abstractmethod
    def solve(self, problem: Problem) -> tuple[torch.Tensor, Trajectory]:
        ...

    @classmethod
    def configurations(cls) -> list["GradientMethod"]:
        """One instance per distinct way of working (options that change the algorithm), so
        that tests and benchmarks discover every variant."""
        return [cls()]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash(type(self))
