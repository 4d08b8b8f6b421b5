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

from .._dense import interpolate, interpolation_stages
from .._integrate import Trajectory, integrate
from .._ivp import ODEProblem
from .._step_size import RecordedSteps
from ._first_evaluation import checked_rhs, closure_check
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

    def step_back(self, problem, trajectory, n, y, lam, params, param_grads, time_grads, dense, out_grads):
        t, t_next = trajectory.grid[n], trajectory.grid[n + 1]
        tableau = problem.tableau
        rhs = problem.rhs("nfe_backward")
        replay = problem.replay(n)  # a stochastic f: the forward step's random numbers
        if replay is not None:
            rhs = replay.wrap(rhs)
        stats = problem.stats
        stages = interpolation_stages(tableau) if dense else tableau.solution_stages
        take = problem.stepper(rhs)

        def step(y: torch.Tensor, *dts: torch.Tensor) -> torch.Tensor:
            before = stats.nfe_backward
            ends = (dts[0], dts[1]) if dts else None
            y_next, _, ks, _ = take(t, t_next, y, with_error=False, stages=stages, dts=ends, nudge=trajectory.nudge(n))
            stats.nfe_backward_vjp += stats.nfe_backward - before
            if not dense:
                return y_next
            outs = [
                interpolate(tableau, y, t_next - t, theta, ks, ends, dts[2 + j] if dts else None)
                for j, (_, theta, _) in enumerate(dense)
            ]
            return torch.stack([y_next, *outs])

        zero = lam.new_zeros(())
        extra = (zero,) * (2 + len(dense)) if time_grads is not None else ()
        cotangent = torch.stack([lam, *(g for _, _, g in dense)]) if dense else lam
        # y_{n+1} = y_n + ...: it always depends on y_n, so its pullback is never None
        mu, time_cotangents, _ = vjp(
            step, y, cotangent, params, param_grads, extra=extra, check=closure_check(problem, "Checkpoint")
        )
        if time_grads is not None:
            for m, g in zip((n, n + 1), time_cotangents):
                if g is not None:
                    time_grads[m] = time_grads[m] + g
            for (k, _, _), g in zip(dense, time_cotangents[2:]):
                if g is not None:
                    out_grads[k] = out_grads[k] + g
        return mu


class OneCheckpoint(RecordingMethod):
    """Store ``y_0`` only; in the backward pass re-run the solve on the recorded grid with a
    graph and backpropagate through all of it (the paper's "one checkpoint" baseline)."""

    name = "one_checkpoint"

    def record(self, problem: ODEProblem, y0: torch.Tensor, f0: torch.Tensor) -> Trajectory:
        return problem.integrate(y0, f0=f0)

    def backward(self, problem, trajectory, grad_ys, params, with_time):
        rhs = checked_rhs(problem, problem.rhs("nfe_backward"), "OneCheckpoint")
        carriers = [grad_ys.new_zeros(()).requires_grad_(True) for _ in problem.t_out] if with_time else []
        with torch.enable_grad():
            y0 = trajectory.outputs[0].detach().requires_grad_(True)
            before = problem.stats.nfe_backward
            if problem.rng_tape is None:
                grid = RecordedSteps(
                    tuple(trajectory.grid),
                    tuple(trajectory.out_index),
                    tuple(trajectory.anchors),
                    interpolate=bool(trajectory.out_theta),
                    nudges=None if trajectory.nudges is None else tuple(trajectory.nudges),
                )
                outputs = integrate(
                    rhs,
                    y0,
                    problem.t_out,
                    problem.tableau,
                    grid,
                    time_carriers=carriers or None,
                    step=problem.stepper(rhs),
                ).outputs
            else:
                outputs = _replayed_solve(problem, trajectory, rhs, y0, carriers)
            stacked = torch.stack(outputs)
            del outputs  # the states themselves need not outlive the stacked copy
            problem.stats.nfe_backward_vjp += problem.stats.nfe_backward - before
            grads = torch.autograd.grad(stacked, (y0, *carriers, *params), grad_ys, allow_unused=True)
        n = len(carriers)
        time_grads = [g if g is not None else grad_ys.new_zeros(()) for g in grads[1 : 1 + n]] if with_time else None
        param_grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads[1 + n :])]
        return grads[0], time_grads, param_grads


def _replayed_solve(
    problem: ODEProblem, trajectory: Trajectory, rhs, y0: torch.Tensor, carriers: list[torch.Tensor]
) -> list[torch.Tensor]:
    """The forward solve again on the recorded grid, with a graph, replaying a stochastic ``f``'s
    random numbers step by step (each step evaluates its stages from the first: an FSAL stage is
    evaluated again at the next step's start, with the same random numbers, so the values are
    the forward solve's)."""
    grid, anchors = trajectory.grid, trajectory.anchors
    zero = y0.new_zeros(())

    def carrier(a: int | None) -> torch.Tensor:
        return zero if a is None else carriers[a]

    outputs, y = [y0], y0
    tableau = problem.tableau
    for n in range(len(grid) - 1):
        replay = problem.replay(n)
        assert replay is not None  # called with a tape only
        dts = (carrier(anchors[n]), carrier(anchors[n + 1])) if carriers else None
        thetas, k_next = trajectory.out_theta, len(outputs)
        dense = bool(thetas) and k_next < len(thetas) and trajectory.out_index[k_next] == n + 1
        dense = dense and thetas[k_next] is not None
        y_prev = y
        y, _, ks, _ = problem.stepper(replay.wrap(rhs))(
            grid[n],
            grid[n + 1],
            y,
            with_error=False,
            stages=interpolation_stages(tableau) if dense else tableau.solution_stages,
            dts=dts,
            nudge=trajectory.nudge(n),
        )
        h = grid[n + 1] - grid[n]
        for k in range(len(outputs), len(trajectory.out_index)):  # the outputs this step reaches, in order
            if trajectory.out_index[k] != n + 1:
                break
            theta = thetas[k] if thetas else None
            if theta is None:
                outputs.append(y)
            else:
                outputs.append(interpolate(tableau, y_prev, h, theta, ks, dts, carriers[k] if carriers else None))
        del ks, y_prev
    return outputs
