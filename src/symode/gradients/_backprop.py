"""Backpropagation through the solver: exact, memory grows with steps x stages x network."""

from __future__ import annotations

import dataclasses

import torch

from .._integrate import Trajectory
from .._ivp import ODEProblem
from ._base import GradientMethod
from ._first_evaluation import check_buffers_for_iterates, closure_check

__all__ = ["Backprop"]


class Backprop(GradientMethod):
    """Differentiate the solve by recording every operation of the accepted steps in the
    autograd graph (rejected trial steps are recorded too but freed at once). The step-size
    logic is not differentiated, so this is the reference of exactness for the other methods.

    Memory: every stage's activations of every step; no evaluation of ``f`` in the backward.
    The output times are differentiated through zero-valued carriers of their gradient
    (``symode._runge_kutta``), so the values computed are those of a solve without.

    An implicit method's step is differentiated through its stage equations by the implicit
    function theorem (``symode._implicit_gradient``), not through Newton's iterates: its memory
    is that of the stages' evaluations of ``f``, as for an explicit step.
    """

    name = "backprop"

    def solve(self, problem: ODEProblem) -> tuple[torch.Tensor, Trajectory]:
        if problem.tableau.implicit:  # the stages' backward pass differentiates the parameters it knows only
            check_buffers_for_iterates(problem, f"the implicit method {problem.tableau.name!r}")
            problem = dataclasses.replace(problem, stage_check=closure_check(problem, "Backprop (implicit method)"))
        trajectory = problem.integrate(time_carriers=problem.time_carriers() if problem.wants_time_grad else None)
        return torch.stack(trajectory.outputs), trajectory
