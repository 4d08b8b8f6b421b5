"""The implicit function theorem on an implicit step's stage states, as an autograd function.

Backprop (and checkpointing, which backpropagates through recomputed steps) differentiates an
implicit step without recording Newton's iterates: the converged stage states ``Y`` leave
:class:`StageSolve` as a function of ``y_n``, the parameters and the step's end times, whose
backward pass solves the adjoint stage equations (``symode._implicit.adjoint_stages``) with the
cotangents ``omega_i`` of ``Y_i`` that the graph of the stage derivatives ``K_i = f(t_i, Y_i)``
sends back. The ``K_i`` themselves are evaluated with a graph from ``Y`` (one network use per
stage, as an explicit step records).

The parameters are those of the problem (``func``'s, or ``adjoint_params``): a tensor that
``func`` reaches otherwise and that requires grad would get no gradient through ``Y``, so each
evaluation of the backward pass is checked (``stage_check``) and such a tensor refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ._implicit import blocks
from ._krylov import gmres
from ._newton import jacobian
from ._runge_kutta import stage_time
from ._stats import SolveError
from ._tableau import ButcherTableau

__all__ = ["StageGradient", "stage_vjp", "adjoint_stages"]


def stage_vjp(
    func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    time: Callable[[float], torch.Tensor],
    tableau: ButcherTableau,
    t: float,
    t_next: float,
    nudge,
    Ys,
    params: tuple[torch.Tensor, ...],
    param_grads: list[torch.Tensor],
    time_cotangents: list[torch.Tensor] | None,
    count: Callable[[], None],
    check: Callable[..., None] | None = None,
):
    """``vjp(i, v, final, keep=True)`` for ``adjoint_stages``: ``J_i^T v`` at stage ``i``; with
    ``keep`` the stage's graph is kept between the products of one stage (a diagonally implicit
    method's refinement: one network use in the graph) and freed at its final product; without,
    it is built for the product and freed (a coupled block's sweep, one stage after another, so
    that one use is in the graph at a time). The final product also adds ``v``'s parameter
    cotangents to ``param_grads`` and, with ``time_cotangents = [ct_n, ct_next]``, those of the end times
    (``g_i = v^T df/dt``: ``(1 - c_i) g_i`` to ``t_n``, ``c_i g_i`` to ``t_{n+1}``; and ``v^T K_i / h``
    from ``h``)."""
    h = t_next - t
    held: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def vjp(i: int, v: torch.Tensor, final: bool, keep: bool = True) -> torch.Tensor | None:
        keep = keep and not final
        if i not in held:
            with torch.enable_grad():
                Y = Ys[i].detach().requires_grad_(True)
                T = time(stage_time(tableau, i, t, t_next, h, nudge)).requires_grad_(time_cotangents is not None)
                out = func(T, Y)
                count()
                if check is not None:
                    check(out, (Y, T))
            held[i] = (Y, T, out)
        Y, T, out = held[i] if keep else held.pop(i)
        if not out.requires_grad:
            return None
        with_time = final and time_cotangents is not None
        wrt = ((Y, T) if with_time else (Y,)) + (tuple(params) if final else ())
        grads = torch.autograd.grad(out, wrt, v, retain_graph=keep, allow_unused=True)
        if final:
            for acc, g in zip(param_grads, grads[2 if with_time else 1 :]):
                if g is not None:
                    acc.add_(g)
            if time_cotangents is not None:
                g = grads[1]
                dh = (v * out.detach()).sum() / h
                time_cotangents[0] = time_cotangents[0] - dh
                time_cotangents[1] = time_cotangents[1] + dh
                if g is not None:
                    time_cotangents[0] = time_cotangents[0] + (1.0 - tableau.c[i]) * g
                    time_cotangents[1] = time_cotangents[1] + tableau.c[i] * g
        return grads[0]

    def stage_jacobian(i: int) -> torch.Tensor:
        """``J_i`` at stage ``i``, ``n x n`` (``n`` products)."""
        ti = time(stage_time(tableau, i, t, t_next, h, nudge))
        count()
        return jacobian(lambda x: func(ti, x.reshape(Ys[i].shape)), Ys[i])[0]

    vjp.jacobian = stage_jacobian  # type: ignore[attr-defined]
    return vjp


class StageGradient:
    """Attaches the implicit function theorem to a step's converged stage states (the
    ``gradient`` of ``symode._implicit.implicit_step``)."""

    def __init__(self, problem: Any, check: Callable[..., None] | None = None):
        self.problem, self.check = problem, check

    def __call__(self, y, dts, Ys, lus, t, t_next, nudge):
        carriers = () if dts is None else tuple(dts)
        info = (self, lus, list(Ys), t, t_next, nudge, len(carriers))
        return list(StageSolve.apply(info, y, *carriers, *self.problem.params).unbind(0))


class StageSolve(torch.autograd.Function):
    """``Y = StageSolve(y_n, carriers..., params...)``: the stage states, differentiated by the
    implicit function theorem."""

    @staticmethod
    def forward(ctx, info, y, *inputs):
        ctx.info = info
        return torch.stack([Y.detach() for Y in info[2]])

    @staticmethod
    def backward(ctx, grad_Ys):
        gradient, lus, Ys, t, t_next, nudge, num_carriers = ctx.info
        problem = gradient.problem
        tableau = problem.tableau
        if torch.is_grad_enabled():
            raise RuntimeError(
                f"the implicit method {tableau.name!r} cannot be differentiated twice (a backward pass with "
                f"create_graph=True): the stage equations' adjoint is solved outside the graph"
            )
        params = problem.params
        param_grads = [torch.zeros_like(p) for p in params]
        zero = grad_Ys.new_zeros(())
        cts = [zero, zero] if num_carriers else None

        def count() -> None:
            problem.stats.nfe_backward += 1
            problem.stats.nfe_backward_vjp += 1

        vjp = stage_vjp(
            problem.func, problem.time, tableau, t, t_next, nudge, Ys, params, param_grads, cts, count, gradient.check
        )
        omega = list(grad_Ys.unbind(0))
        _, mu = adjoint_stages(vjp, tableau, t_next - t, lus, [None] * len(omega), omega, t)
        grad_y = sum((m for m in mu if m is not None), torch.zeros_like(omega[0]))
        carriers = tuple(cts) if cts is not None else ()
        return (None, grad_y, *carriers, *param_grads)


def adjoint_stages(
    vjp: Callable[[int, torch.Tensor, bool], torch.Tensor | None],
    tableau: ButcherTableau,
    h: float,
    lus: Any,
    rho: Sequence[torch.Tensor | None],
    omega: Sequence[torch.Tensor | None],
    where: float,
) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """Solve the adjoint of the stage equations (module docstring): ``(kappa, mu)``.

    ``vjp(i, v, final)`` is ``J_i^T v`` at stage ``i`` (``None``: ``f`` does not depend on the
    state); ``final=True`` is the last product of stage ``i``, which also adds ``v``'s parameter
    and time cotangents. ``rho``/``omega``: the outside cotangents of ``K_i``/``Y_i`` (``None``:
    zero). ``where``: the step's time, for the error when the refinement does not converge."""
    s = tableau.num_stages
    like = next(v for v in (*rho, *omega) if v is not None)
    zero = torch.zeros_like(like)
    kappa: list[torch.Tensor] = [zero] * s
    mu: list[torch.Tensor | None] = [None] * s
    for block in reversed(blocks(tableau)):
        c = []
        for j in block:  # rho_j, the later blocks' mu, and omega of this block through A_BB^T
            rho_j = rho[j]
            cj = zero if rho_j is None else rho_j
            for i in range(s):
                a_ij = tableau.a[i][j]
                if a_ij == 0.0:
                    continue
                term = mu[i] if i not in block else omega[i]
                if term is not None:
                    cj = cj + (h * a_ij) * term
            c.append(cj)
        c_b = torch.stack(c)
        a_bb = torch.tensor([[tableau.a[i][j] for j in block] for i in block], dtype=like.dtype, device=like.device)
        if all(v == 0.0 for v in a_bb.reshape(-1).tolist()):  # an explicit stage
            k_b = c_b
        else:
            k_b = _refined(vjp, tableau, block, h, lus, c_b, a_bb, where)
        for i, k in zip(block, k_b):
            kappa[i] = k
            jt_i, omega_i = vjp(i, k, True), omega[i]
            mu[i] = jt_i if omega_i is None else (omega_i if jt_i is None else omega_i + jt_i)
    return kappa, mu


#: the refinement's sweeps before it is judged slow, and the largest state solved directly then
_FAST_SWEEPS, _DIRECT_LIMIT, _MAX_SWEEPS = 8, 2048, 200
#: the relative residual of each matrix-free inner solve of the refinement (``Newton(jacobian="krylov")``)
_KRYLOV_RTOL = 1e-6


def _refined(vjp, tableau: ButcherTableau, block, h: float, lus, c_b: torch.Tensor, a_bb, where: float) -> torch.Tensor:
    """``kappa_B`` from ``(I - h (A_BB^T (x) I) diag(J_i^T)) kappa_B = c_B`` by iterative refinement
    preconditioned by the step's LU, to round-off. Where the Jacobian at the stages differs
    much from the one at the step's start (a stiff problem taking long steps) the refinement is
    slow: for a state of at most ``_DIRECT_LIMIT`` entries the system is then formed with the
    stages' own Jacobians (``vjp.jacobian(i)``, ``n`` products each) and solved directly.
    Matrix-free (``Newton(jacobian="krylov")``), the inner solve is GMRES on this operator
    itself, to ``_KRYLOV_RTOL``; its sweeps end at GMRES's round-off floor too."""
    m = len(block)
    zero = torch.zeros_like(c_b[0])
    eps = torch.finfo(c_b.dtype).eps

    def operator(k_b: torch.Tensor) -> torch.Tensor:  # k_b - h (A_BB^T (x) I) diag(J_i^T) k_b
        jt = torch.stack([_or_zero(vjp(i, k, False, m == 1), zero) for i, k in zip(block, k_b.reshape(c_b.shape))])
        return (k_b.reshape(c_b.shape) - h * (a_bb.T @ jt.reshape(m, -1)).reshape(c_b.shape)).reshape(k_b.shape)

    matrix_free = getattr(lus, "matrix_free", False)

    def inner(rhs: torch.Tensor) -> torch.Tensor:
        if matrix_free:  # GMRES on the stages' own operator
            return gmres(operator, rhs.reshape(-1), _KRYLOV_RTOL, 4 * lus.max_iters)[0].reshape(rhs.shape)
        return lus.solve(block, rhs.reshape(m, -1), transpose=True).reshape(rhs.shape)

    k_b = inner(c_b)
    previous = math.inf
    for sweep in range(_MAX_SWEEPS):
        update = inner(c_b - operator(k_b))
        k_b = k_b + update
        size = float(update.abs().max())
        largest = float(k_b.abs().max())
        if size <= 8 * eps * largest or size == 0.0:
            return k_b
        if not math.isfinite(size):  # a cotangent overflowed (the loss, in float32?): it goes on, as in torch's
            return k_b  # own backward passes, instead of failing 200 sweeps later as unconverged
        if matrix_free and size > 0.5 * previous and size <= eps**0.75 * largest:
            return k_b  # GMRES's round-off floor (float64: 1.8e-12 relative): no sweep gets below it
        if sweep >= _FAST_SWEEPS and size > 0.5 * previous and zero.numel() <= _DIRECT_LIMIT:
            return _direct(vjp, tableau, block, h, c_b)
        previous = size
    raise SolveError(
        f"the adjoint of {tableau.name!r}'s stage equations did not converge in the step at t = {where!r}: the "
        f"Jacobian of f varies too much within the step for its value at the step's start to precondition it; "
        f"take smaller steps (tighter rtol/atol, or a smaller step_size)",
        where,
        0,
    )


def _direct(vjp, tableau: ButcherTableau, block, h: float, c_b: torch.Tensor) -> torch.Tensor:
    """The block's adjoint system formed with each stage's Jacobian and solved by LU."""
    m, n = len(block), c_b[0].numel()
    jacobians = [vjp.jacobian(i) for i in block]
    matrix = torch.eye(m * n, dtype=c_b.dtype, device=c_b.device)
    for r, j in enumerate(block):  # kappa_j - h sum_i a_ij J_i^T kappa_i = c_j
        for q, i in enumerate(block):
            if tableau.a[i][j] != 0.0:
                matrix[r * n : (r + 1) * n, q * n : (q + 1) * n] -= h * tableau.a[i][j] * jacobians[q].T
    return torch.linalg.solve(matrix, c_b.reshape(-1)).reshape(c_b.shape)


def _or_zero(x: torch.Tensor | None, zero: torch.Tensor) -> torch.Tensor:
    return zero if x is None else x
