"""The symplectic adjoint method (Matsubara, Miyatake & Yaguchi, NeurIPS 2021).

Forward: integrate without an autograd graph, keeping only the accepted ``(t_n, y_n)``.
Backward, step by step from the last: recompute the stage states ``Y_i`` of the step from
``y_n`` (no graph), then sweep the stages in reverse. The cotangent of stage derivative ``k_i``
is ``kappa_i = h b_i lam + h sum_{j>i} a_ji mu_j``, and one vector-Jacobian product through one
evaluation of ``f`` gives ``mu_i = J_i^T kappa_i`` (and the parameter part); then
``lam <- lam + sum_i mu_i``. This is the adjoint system integrated by the symplectic partner of
the forward Runge-Kutta method (Sanz-Serna, SIAM Review 2016), written in reverse-mode
variables, so it needs no division by ``b_i`` and no special case for zero weights; it is the
exact gradient of the discrete solve.

Memory: ``N`` checkpoints, ``s`` stage states and ``s`` stage cotangents, and one use of
``f`` in the autograd graph at a time.
"""

from __future__ import annotations

import warnings

import torch

from ..integrate import Trajectory
from ..problem import Problem
from ..runge_kutta import stage_state, stage_time
from .base import GradientMethod

__all__ = ["SymplecticAdjoint"]


class SymplecticAdjoint(GradientMethod):
    """The exact gradient of the solve with memory ``O(N + s + L)``: ``N`` stored states,
    ``s`` stages' states, one network use ``L``.

    Costs per step in the backward pass: ``s' - 1`` evaluations of ``f`` to recompute the
    stage states and ``s'`` differentiated evaluations, where ``s'`` counts the stages that
    influence the solution (dopri5: 5 + 6; rk4: 3 + 4).
    """

    name = "symplectic_adjoint"

    def solve(self, problem: Problem) -> tuple[torch.Tensor, Trajectory]:
        if not problem.requires_grad:
            with torch.no_grad():
                trajectory = problem.integrate()
            return torch.stack(trajectory.outputs), trajectory
        f0 = _first_evaluation_checked(problem)
        holder = {}
        ys = _SymplecticAdjointFunction.apply(problem, f0, holder, problem.y0, *problem.params)
        return ys, holder["trajectory"]


def _first_evaluation_checked(problem: Problem) -> torch.Tensor:
    """Evaluate ``f(t0, y0)`` once with a graph, to find tensors that ``f`` uses and that
    require grad but are not among the parameters: the adjoint could give them no gradient,
    so that would be a silent error. Returns the evaluation, detached, for reuse."""
    t0 = problem.time(problem.t_out[0])
    y = problem.y0.detach().requires_grad_(True)  # so that f sees a state that requires grad, as in the sweep
    with torch.enable_grad():
        problem.stats.nfe_forward += 1
        f0 = problem.func(t0, y)
        known = {id(p) for p in problem.params} | {id(t0), id(y)}
        foreign = [v for v in _graph_leaves(f0) if id(v) not in known]
    if foreign:
        shapes = ", ".join(str(tuple(v.shape)) for v in foreign)
        message = (f"func uses {len(foreign)} tensor(s) that require grad but are not among the "
                   f"parameters given to the symplectic adjoint (shapes {shapes}); they would get no "
                   f"gradient.")
        if problem.params_explicit:
            warnings.warn(message + " Add them to adjoint_params if their gradient is wanted.", stacklevel=4)
        else:
            raise ValueError(message + " Pass every such tensor in adjoint_params=(...), or make func an "
                             "nn.Module that holds them as parameters.")
    return f0.detach()


def _graph_leaves(output: torch.Tensor) -> list[torch.Tensor]:
    """The leaf tensors (requiring grad) that ``output``'s autograd graph reaches."""
    if output.grad_fn is None:
        return [output] if output.requires_grad else []
    leaves, seen, stack = {}, set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None:
            leaves[id(variable)] = variable
        stack.extend(next_node for next_node, _ in node.next_functions)
    return list(leaves.values())


class _SymplecticAdjointFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, problem: Problem, f0: torch.Tensor, holder: dict, y0: torch.Tensor, *params):
        trajectory = problem.integrate(y0.detach(), keep_states=True, f0=f0)
        holder["trajectory"] = trajectory
        ctx.problem = problem
        ctx.trajectory = trajectory
        return torch.stack(trajectory.outputs)

    @staticmethod
    def backward(ctx, grad_ys: torch.Tensor):
        problem, trajectory = ctx.problem, ctx.trajectory
        params = problem.params
        wanted = [p.requires_grad for p in params]
        diff_params = tuple(p for p, w in zip(params, wanted) if w)
        param_grads = [torch.zeros_like(p) for p in diff_params]
        ts, ys, out_index = trajectory.ts, trajectory.ys, trajectory.out_index
        k = len(out_index) - 1  # the next output to meet, going backward
        lam = torch.zeros_like(grad_ys[0])
        for n in reversed(range(len(ts))):
            if k >= 0 and out_index[k] == n:  # an output time: add its cotangent
                lam = lam + grad_ys[k]
                k -= 1
            if n > 0:
                lam = _step_adjoint(problem, ts[n - 1], ts[n], ys[n - 1], lam, diff_params, param_grads)
        grads = iter(param_grads)
        param_out = [next(grads) if w else None for w in wanted]
        return (None, None, None, lam, *param_out)


def _step_adjoint(problem: Problem, t: float, t_next: float, y: torch.Tensor, lam: torch.Tensor,
                  params: tuple[torch.Tensor, ...], param_grads: list[torch.Tensor]) -> torch.Tensor:
    """Pull the cotangent ``lam`` of ``y_{n+1}`` back through one step to ``y_n``, adding the
    parameter gradients of the step to ``param_grads`` in place."""
    tableau = problem.tableau
    h = t_next - t
    stages = tableau.solution_stages
    stats = problem.stats
    func, time = problem.func, problem.time

    # 1. recompute the stage states without a graph (the last stage's k is not needed)
    Ys: list[torch.Tensor | None] = [None] * tableau.num_stages
    with torch.no_grad():
        ks: list[torch.Tensor | None] = [None] * tableau.num_stages
        for i in stages:
            Ys[i] = y if i == 0 else stage_state(tableau, i, y, h, ks)
            if i != stages[-1]:
                stats.nfe_backward += 1
                ks[i] = func(time(stage_time(tableau, i, t, t_next, h)), Ys[i]).detach()
        del ks

    # 2. sweep the stages in reverse, one differentiated evaluation of f at a time
    kappa: list[torch.Tensor | None] = [None] * tableau.num_stages
    for i in stages:
        if tableau.b[i] != 0.0:
            kappa[i] = lam * (h * tableau.b[i])
    lam_out = lam.clone()
    for i in reversed(stages):
        cotangent, kappa[i] = kappa[i], None
        Yi, Ys[i] = Ys[i], None
        if cotangent is None:  # structurally zero: nothing flows through this stage
            continue
        mu = _stage_vjp(problem, stage_time(tableau, i, t, t_next, h), Yi, cotangent, params, param_grads)
        if mu is None:
            continue
        lam_out.add_(mu)
        for j, aij in tableau.a_terms[i]:
            if kappa[j] is None:
                kappa[j] = mu * (h * aij)
            else:
                kappa[j].add_(mu, alpha=h * aij)
        del mu, Yi, cotangent  # free before the next stage's graph is built
    return lam_out


def _stage_vjp(problem: Problem, t: float, Y: torch.Tensor, cotangent: torch.Tensor,
               params: tuple[torch.Tensor, ...], param_grads: list[torch.Tensor]) -> torch.Tensor | None:
    """One differentiated evaluation of ``f`` at ``(t, Y)``: add ``cotangent^T df/dθ`` to
    ``param_grads`` and return ``cotangent^T df/dy`` (``None`` if ``f`` ignores ``y``).
    A function of its own so that the graph and the stage's gradients die on return."""
    problem.stats.nfe_backward += 1
    problem.stats.nfe_backward_vjp += 1
    with torch.enable_grad():
        Y = Y.detach().requires_grad_(True)
        k = problem.func(problem.time(t), Y)
        if not k.requires_grad:
            return None  # f depends neither on the state nor on any parameter here
        grads = torch.autograd.grad(k, (Y, *params), cotangent, allow_unused=True)
    for acc, g in zip(param_grads, grads[1:]):
        if g is not None:
            acc.add_(g)
    return grads[0]
