"""Checkpointing: store states in the forward pass, rebuild graphs in the backward pass.

* ``Checkpoint`` (ACA: Zhuang et al., "Adaptive Checkpoint Adjoint", ICML 2020): store every
  accepted ``(t_n, y_n)``; in the backward pass rebuild one step's graph at a time from
  ``y_n`` and backpropagate through it. Memory ``O(N + s L)``.
* ``OneCheckpoint`` (the baseline of Matsubara et al. 2021): store ``y_0`` only; in the
  backward pass re-run the whole solve on the recorded grid with a graph and backpropagate.
  Memory ``O(N s L)``, like backprop, plus a second forward pass.

Both are exact: the rebuilt steps are the forward steps, on the recorded grid, with the same
arithmetic.
"""

from __future__ import annotations

from typing import Iterator

import torch

from ..integrate import Trajectory, integrate
from ..problem import Problem
from ..runge_kutta import rk_step
from ..step_size import FixedSteps
from ._recording import RecordingMethod, StepwiseMethod, vjp

__all__ = ["Checkpoint", "OneCheckpoint"]


class Checkpoint(StepwiseMethod):
    """Store every accepted state; backpropagate through one rebuilt step at a time.

    Backward cost per step: the ``s'`` stages that influence the solution, evaluated with a
    graph (dopri5: 6), and one backward pass through them.
    """

    name = "checkpoint"

    def record(self, problem: Problem, y0: torch.Tensor, f0: torch.Tensor) -> Trajectory:
        return problem.integrate(y0, keep_states=True, f0=f0)

    def states(self, problem: Problem, trajectory: Trajectory) -> Iterator[tuple[int, torch.Tensor]]:
        return ((n, trajectory.ys[n]) for n in reversed(range(len(trajectory.ts) - 1)))

    def step_back(self, problem, trajectory, n, y, lam, params, param_grads):
        t, t_next = trajectory.ts[n], trajectory.ts[n + 1]
        rhs = problem.rhs("nfe_backward")

        def step(y: torch.Tensor) -> torch.Tensor:
            before = problem.stats.nfe_backward
            y_next = rk_step(rhs, problem.tableau, t, t_next, y, with_error=False,
                             stages=problem.tableau.solution_stages)[0]
            problem.stats.nfe_backward_vjp += problem.stats.nfe_backward - before
            return y_next

        # y_{n+1} = y_n + ...: it always depends on y_n, so the pullback is never None
        return vjp(problem, t, y, lam, params, param_grads, step=step)


class OneCheckpoint(RecordingMethod):
    """Store ``y_0`` only; in the backward pass re-run the solve on the recorded grid with a
    graph and backpropagate through all of it (the paper's "one checkpoint" baseline)."""

    name = "one_checkpoint"

    def record(self, problem: Problem, y0: torch.Tensor, f0: torch.Tensor) -> Trajectory:
        return problem.integrate(y0, f0=f0)

    def backward(self, problem, trajectory, grad_ys, params):
        rhs = problem.rhs("nfe_backward")
        grid = FixedSteps(grid=trajectory.ts) if len(trajectory.ts) > 1 else None
        with torch.enable_grad():
            y0 = trajectory.outputs[0].detach().requires_grad_(True)
            before = problem.stats.nfe_backward
            if grid is None:
                outputs = torch.stack([y0])
            else:
                outputs = torch.stack(integrate(rhs, y0, problem.t_out, problem.tableau, grid).outputs)
            problem.stats.nfe_backward_vjp += problem.stats.nfe_backward - before
            grads = torch.autograd.grad(outputs, (y0, *params), grad_ys, allow_unused=True)
        param_grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads[1:])]
        return grads[0], param_grads
