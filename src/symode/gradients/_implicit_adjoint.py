"""The symplectic adjoint for implicit Runge-Kutta methods: one step pulled back.

The partner method of an implicit Runge-Kutta method is implicit too (Sanz-Serna, SIAM Review
2016), and its stage equations are linear in the adjoint variables. In reverse-mode variables,
with ``lambda`` the cotangent of ``y_{n+1}``: the cotangents ``kappa_i`` of the stage
derivatives satisfy ``kappa_j = h b_j lambda + h sum_i a_ij J_i^T kappa_i``, solved block by
block with vector-Jacobian products only (``symode._implicit_gradient.adjoint_stages``: one stage at a
time for a diagonally implicit method, keeping one use of ``f`` in the autograd graph; the
coupled system for a fully implicit one, one use at a time per sweep); then
``lambda_n = lambda + sum_i J_i^T kappa_i`` and the parameters gain ``sum_i (df_i/dtheta)^T kappa_i``.

The stage states are recomputed from ``y_n`` by the forward step's own Newton solve (the same
settings, the same arithmetic: the same stages), which also gives the Jacobian whose LU
preconditions the adjoint solve. Memory: ``N`` states, the step's ``s`` stages and one network use.
"""

from __future__ import annotations

import torch

from .._dense import dense_terms
from .._implicit import solve_stages
from .._implicit_gradient import adjoint_stages, stage_vjp
from .._ivp import ODEProblem
from .._stats import SolveError
from ._first_evaluation import closure_check

__all__ = ["implicit_step_adjoint", "dense_outputs_back"]


def implicit_step_adjoint(
    problem: ODEProblem,
    t: float,
    t_next: float,
    y: torch.Tensor,
    lam: torch.Tensor,
    params: tuple[torch.Tensor, ...],
    param_grads: list[torch.Tensor],
    with_time: bool,
    dense: list[tuple[int, float, torch.Tensor]],
    out_grads: list[torch.Tensor] | None,
    nudge: tuple[bool, bool] | None,
):
    """``_step_adjoint`` of ``symode.gradients._symplectic`` for an implicit tableau: returns
    ``(lambda_n, (ct_n, ct_next) or None)``."""
    tableau = problem.tableau
    h = t_next - t
    solved = solve_stages(
        problem.rhs("nfe_backward"),
        tableau,
        t,
        t_next,
        y,
        problem.newton_settings,
        None,
        nudge=nudge,
        start=problem.jacobians.replaying(),  # the Jacobian the forward step started from
    )
    if solved is None:  # the forward step converged from the same inputs: only a changed f gets here
        raise SolveError(
            f"recomputing the step from t = {t!r} to t = {t_next!r} of {tableau.name!r}, Newton's method did not "
            f"converge although it did in the forward solve: func changed between the forward and the backward pass",
            t,
            0,
        )
    Ys, Ks, lus = solved
    rho: list[torch.Tensor | None] = [None] * tableau.num_stages
    for i, bi in enumerate(tableau.b):
        if bi != 0.0:
            rho[i] = lam * (h * bi)
    slopes = []
    for _, theta, g in dense:
        values, derivative = dense_terms(tableau, theta)
        for i, bi in values:
            rho_i = rho[i]
            rho[i] = g * (h * bi) if rho_i is None else rho_i + g * (h * bi)
        slopes.append(sum(((g * Ks[i]).sum() * d for i, d in derivative), lam.new_zeros(())))
    ct = [lam.new_zeros(()), lam.new_zeros(())] if with_time else None
    step_grads = [torch.zeros_like(g) for g in param_grads]

    def count() -> None:
        problem.stats.nfe_backward += 1
        problem.stats.nfe_backward_vjp += 1

    check = closure_check(problem, "SymplecticAdjoint")
    vjp = stage_vjp(problem.func, problem.time, tableau, t, t_next, nudge, Ys, params, step_grads, ct, count, check)
    _, mu = adjoint_stages(vjp, tableau, h, lus, rho, [None] * tableau.num_stages, t)
    for total, g in zip(param_grads, step_grads):
        total.add_(g)
    lam_out = lam
    for m in mu:
        if m is not None:
            lam_out = lam_out + m
    return dense_outputs_back(lam_out, dense, slopes, ct, out_grads), ct


def dense_outputs_back(lam_out, dense, slopes, ct, out_grads):
    """The end of a step's pullback for its interpolated outputs ``dense`` (``(k, theta, g_k)``):
    ``y_n`` enters each with weight 1, so ``lam_n`` gains ``g_k``; and (``ct`` given) the
    cotangent of each output time, ``slopes[j] = g_k^T D``, goes to ``out_grads[k]`` and moves
    ``t_n``/``t_{n+1}`` by ``-(1 - theta)``/``-theta`` times it. Returns ``lam_n``."""
    for _, _, g in dense:
        lam_out = lam_out + g
    if ct is not None and out_grads is not None:
        for (k, theta, _), slope in zip(dense, slopes):
            out_grads[k] = out_grads[k] + slope
            ct[0] = ct[0] - (1.0 - theta) * slope
            ct[1] = ct[1] - theta * slope
    return lam_out
