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

from collections.abc import Iterator

import torch

from .._integrate import Trajectory, integrate
from .._ivp import ODEProblem
from .._runge_kutta import rk_step
from .._step_size import RecordedSteps
from ._recording import RecordingMethod, StepwiseMethod, vjp

__all__ = ["Checkpoint", "OneCheckpoint"]


class Checkpoint(StepwiseMethod):
    """Store every accepted state; backpropagate through one rebuilt step at a time.

    Backward cost per step: the ``s'`` stages that influence the solution, evaluated with a
    graph (dopri5: 6), and one backward pass through them.
    """

    name = "checkpoint"

    def record(self, problem: ODEProblem, y0: torch.Tensor, f0: torch.Tensor) -> Trajectory:
        return problem.integrate(y0, keep_states=True, f0=f0)

    def states(self, problem: ODEProblem, trajectory: Trajectory) -> Iterator[tuple[int, torch.Tensor]]:
        ys = trajectory.ys
        assert ys is not None  # record keeps every state
        return ((n, ys[n]) for n in reversed(range(len(trajectory.grid) - 1)))

    def step_back(self, problem, trajectory, n, y, lam, params, param_grads, time_grads):
        t, t_next = trajectory.grid[n], trajectory.grid[n + 1]
        rhs = problem.rhs("nfe_backward")
        stats = problem.stats

        def step(y: torch.Tensor, *dts: torch.Tensor) -> torch.Tensor:
            before = stats.nfe_backward
            y_next = rk_step(
                rhs,
                problem.tableau,
                t,
                t_next,
                y,
                with_error=False,
                stages=problem.tableau.solution_stages,
                dts=dts or None,
            )[0]
            stats.nfe_backward_vjp += stats.nfe_backward - before
            return y_next

        zero = lam.new_zeros(())
        extra = (zero, zero) if time_grads is not None else ()
        # y_{n+1} = y_n + ...: it always depends on y_n, so its pullback is never None
        mu, time_cotangents, _ = vjp(step, y, lam, params, param_grads, extra=extra)
        if time_grads is not None:
            for m, g in zip((n, n + 1), time_cotangents):
                if g is not None:
                    time_grads[m] = time_grads[m] + g
        return mu


class OneCheckpoint(RecordingMethod):
    """Store ``y_0`` only; in the backward pass re-run the solve on the recorded grid with a
    graph and backpropagate through all of it (the paper's "one checkpoint" baseline)."""

    name = "one_checkpoint"

    def record(self, problem: ODEProblem, y0: torch.Tensor, f0: torch.Tensor) -> Trajectory:
        return problem.integrate(y0, f0=f0)

    def backward(self, problem, trajectory, grad_ys, params, with_time):
        rhs = problem.rhs("nfe_backward")
        grid = RecordedSteps(tuple(trajectory.grid), tuple(trajectory.out_index), tuple(trajectory.anchors))
        carriers = [grad_ys.new_zeros(()).requires_grad_(True) for _ in problem.t_out] if with_time else []
        with torch.enable_grad():
            y0 = trajectory.outputs[0].detach().requires_grad_(True)
            before = problem.stats.nfe_backward
            outputs = torch.stack(
                integrate(rhs, y0, problem.t_out, problem.tableau, grid, time_carriers=carriers or None).outputs
            )
            problem.stats.nfe_backward_vjp += problem.stats.nfe_backward - before
            grads = torch.autograd.grad(outputs, (y0, *carriers, *params), grad_ys, allow_unused=True)
        n = len(carriers)
        time_grads = [g if g is not None else grad_ys.new_zeros(()) for g in grads[1 : 1 + n]] if with_time else None
        param_grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads[1 + n :])]
        return grads[0], time_grads, param_grads
