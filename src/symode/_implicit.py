"""One implicit Runge-Kutta step: the stage equations solved by Newton's method, and their
adjoint solved with vector-Jacobian products.

The step ``t_n -> t_n + h`` of an implicit tableau solves for the stage states::

    Y_i = y_n + h sum_j a_ij K_j,    K_i = f(t_n + c_i h, Y_i),    y_{n+1} = y_n + h sum_i b_i K_i

The stages are solved in *blocks*: one stage at a time for a diagonally implicit method (a stage
whose diagonal entry is zero, the first of an ESDIRK, is evaluated), all together for a fully
implicit one. Newton's method is simplified (the chord method): the Jacobian ``J = df/dy`` at
``(t_n, y_n)``, formed by autograd, and one LU factorisation of ``I - h A_BB (x) J`` per block
shape. It has converged when the error left, estimated from the update in tolerance units
(``||dY / (atol + rtol |y_n|)||_rms``) and the iteration's rate, is at most 1 (``_converged``). Each
``K_i`` is then ``f`` evaluated once at the converged ``Y_i``: that evaluation, and the step's
solution from it, are the same arithmetic in every pass (with or without a graph, forward or
recomputed in a backward pass), which is what makes the gradient methods agree to round-off.

Gradients are those of the discrete scheme whose stage equations hold (the implicit function
theorem), never backpropagation through Newton's iterates. With cotangents ``rho_i`` on ``K_i``
and ``omega_i`` on ``Y_i`` from outside the step, the cotangents ``kappa`` of ``K`` and ``mu``
of ``Y`` satisfy, linearised at the converged stages (``J_i = df/dy`` at ``(t_i, Y_i)``)::

    mu_i = omega_i + J_i^T kappa_i,      kappa_j = rho_j + h sum_i a_ij mu_i

a linear system solved block by block, last block first (``symode._implicit_gradient.adjoint_stages``): for a block
``B``, ``(I - h (A_BB^T (x) I) diag(J_i^T)) kappa_B = c_B``, by iterative refinement with the
forward's LU of ``I - h A_BB (x) J`` (its transpose) as preconditioner and one vector-Jacobian
product per stage per sweep, to round-off. Then ``y_n``'s cotangent gains ``sum_i mu_i``, the
parameters' ``sum_i (df_i/dtheta)^T kappa_i``. Backprop wraps the stage solve in an autograd
function whose backward is this solve (``omega`` from the graph of the ``K_i``); the symplectic
adjoint calls it with ``rho_i = h b_i lambda`` (``symode.gradients``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ._krylov import KrylovSolver
from ._newton import REUSE_RATE, NewtonSettings
from ._random import rng_states, same_states
from ._runge_kutta import combine, stage_time, stage_time_perturbation
from ._stats import SolveError, Stats
from ._tableau import ButcherTableau, _relative_to_largest

__all__ = ["implicit_step", "solve_stages", "blocks"]


@functools.cache
def blocks(tableau: ButcherTableau) -> tuple[tuple[int, ...], ...]:
    """The stages solved together, in order: single stages for a diagonally implicit method,
    all of them for a fully implicit one."""
    s = tableau.num_stages
    if tableau.diagonally_implicit:
        return tuple((i,) for i in range(s))
    return (tuple(range(s)),)


def _stage_terms(tableau: ButcherTableau, i: int, before: int):
    """Row ``i`` of ``a`` on the stages solved before the block starting at ``before``."""
    return _relative_to_largest(tuple((j, w) for j, w in tableau.a_terms[i] if j < before))


def _chord(at, block, Y, base, h_a, lus, scale, max_iters: int, stats: Stats | None, refresh, rates, strict: bool):
    """The chord iteration on one block of stages, ``Y - base - h A_BB F(Y) = 0``: the converged
    ``Y`` or ``None``. Where it contracts slowly (rate above 0.3) or diverges, the Jacobian is
    formed again, at the current iterate of the block's last stage (``refresh(i, Y_i)``), and
    the iteration goes on with it (towards Newton's method proper): a long stiff step, over
    which the Jacobian changes much. ``refresh=None``: never (a given preconditioner). Each
    update's size over the one before is appended to ``rates`` (``inf`` for a refresh).
    ``strict`` (a Jacobian kept from an earlier step): it must show that it still contracts fast,
    each update at most ``REUSE_RATE`` times the one before, and the first update never counts as
    converged (a stale Jacobian stiffer than the present one makes every update small);
    otherwise ``None``, and the step is solved again from a Jacobian at its start."""
    previous = math.inf
    for _ in range(max_iters):
        F = torch.stack([at(i)(Yi) for i, Yi in zip(block, Y)])
        delta = -lus.solve(block, Y - base - h_a @ F)
        if not bool(torch.isfinite(delta).all()):
            return None
        Y = Y + delta
        size = max(_rms(d / scale) for d in delta)
        if stats is not None:
            stats.num_newton_iters += 1
        if previous < math.inf:
            rates.append(size / previous if previous > 0.0 else 0.0)
            if strict and rates[-1] > REUSE_RATE:
                return None
        elif strict:
            previous = size
            continue
        if _converged(size, previous):
            return Y
        if refresh is not None and size > 0.3 * previous:
            rates.append(math.inf)
            lus = refresh(block[-1], Y[-1])
            if stats is not None:
                stats.num_jacobians += 1
        elif size > 2.0 * previous:  # diverging: the step is too long for the chord iteration
            return None
        previous = size
    return None


def _converged(size: float, previous: float) -> bool:
    """Whether the chord iteration has converged: its update, in tolerance units, is at most 1
    (the tolerance is a hundredth of the solve's by default, as diffrax's and Hairer's RADAU5's
    are; estimating the error left from the iteration's rate instead, ``theta / (1 - theta)``
    times the update, took four times the steps on Van der Pol for no accuracy gained)."""
    del previous
    return size <= 1.0


def _rms(x: torch.Tensor) -> float:
    return float(x.pow(2).mean().sqrt())


def solve_stages(
    rhs: Callable[..., torch.Tensor],
    tableau: ButcherTableau,
    t: float,
    t_next: float,
    y: torch.Tensor,
    newton: NewtonSettings,
    stats: Stats | None,
    k1: torch.Tensor | None = None,
    nudge: tuple[bool, bool] | None = None,
    preconditioner: Callable[[float, float, torch.Tensor], Any] | None = None,
    start: Any = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor], Any] | None:
    """The converged stage states and their derivatives ``(Ys, Ks, factorisations)``, without a
    graph; ``None`` when Newton's method does not converge. Deterministic in its inputs.
    ``preconditioner(t, h, y)``: the factorisations of ``I - h A_BB (x) J`` (an object with
    ``solve(block, rhs, transpose=False)``) in place of those of the Jacobian by autograd;
    ``start``: which Jacobian the iteration starts from (``JacobianTape.recording()`` or
    ``.replaying()``; ``None``: the one at ``(t, y)``)."""
    h = t_next - t
    given = y
    with torch.no_grad():
        y = y.detach()
        flat = y.reshape(-1)

        def at(i: int) -> Callable[[torch.Tensor], torch.Tensor]:
            ti = stage_time(tableau, i, t, t_next, h, nudge)
            return lambda x: rhs(ti, x.reshape(y.shape)).reshape(-1)

        fresh = True
        if preconditioner is not None:
            lus = preconditioner(t, h, y)
        else:  # the Jacobian is a preconditioner only: its time need not be nudged

            def compute(tp: float, yp: torch.Tensor) -> Any:
                return newton.point(lambda x: rhs(tp, x), yp)

            found, fresh = start.get(t, given, compute) if start is not None else (compute(t, y), True)
            lus = newton.solver(tableau, h, found)
        if stats is not None and fresh:
            stats.num_jacobians += 1
        scale = (newton.atol + newton.rtol * y.abs()).reshape(-1)
        rates: list[float] = []
        kept = start is not None and not start.own(t)  # a Jacobian from an earlier step's start
        solved = _solve_blocks(
            at, tableau, flat, h, k1, lus, scale, newton, stats, rates, preconditioner is None, y, kept
        )
        if solved is None and kept:  # solved again from a Jacobian at its own start
            found = start.fresh(t, given, compute)
            if found is not None:
                if stats is not None:
                    stats.num_jacobians += 1
                lus = newton.solver(tableau, h, found)
                rates.clear()
                solved = _solve_blocks(at, tableau, flat, h, k1, lus, scale, newton, stats, rates, True, y, False)
        if solved is None:
            return None
        if start is not None:
            start.converged(bool(rates) and all(rate <= REUSE_RATE for rate in rates))
        Ys, Ks = solved
        out_Ys = [Yi.reshape(y.shape) for Yi in Ys]
        out_Ks = [Ki.reshape(y.shape) for Ki in Ks]
    return out_Ys, out_Ks, lus


def _solve_blocks(at, tableau, flat, h, k1, lus, scale, newton, stats, rates, refreshes: bool, y, strict: bool):
    """The stage states and derivatives of the step, block by block (``_chord``), flat; ``None``
    when an iteration does not converge. ``refreshes``: whether the Jacobian may be formed anew
    within the step (not with a given preconditioner, nor a kept one: ``strict``)."""
    s = tableau.num_stages
    Ys: list[torch.Tensor | None] = [None] * s
    Ks: list[torch.Tensor | None] = [None] * s
    guess = None  # a stage derivative of this step (never k1, so that every pass iterates alike)
    for block in blocks(tableau):
        known = [combine(flat, h, _stage_terms(tableau, i, block[0]), Ks) for i in block]
        if all(tableau.a[i][j] == 0.0 for i in block for j in block):  # an explicit stage
            for i, Yi in zip(block, known):
                Ys[i] = Yi
                Ks[i] = k1.detach().reshape(-1) if (i == 0 and k1 is not None) else at(i)(Yi)
                guess = Ks[i]
            continue
        Y = torch.stack([Yi if guess is None else Yi + (h * tableau.a[i][i]) * guess for i, Yi in zip(block, known)])
        base = torch.stack(known)
        a_bb = torch.tensor([[tableau.a[i][j] for j in block] for i in block], dtype=y.dtype, device=y.device)
        refresh = None
        if refreshes and not strict:

            def refresh(i: int, x: torch.Tensor) -> Any:
                func = at(i)
                shape = y.shape
                return newton.linearise(tableau, h, lambda v: func(v.reshape(-1)).reshape(shape), x.reshape(shape))

        Y = _chord(at, block, Y, base, h * a_bb, lus, scale, newton.max_iters, stats, refresh, rates, strict)
        if Y is None:
            return None
        for i, Yi in zip(block, Y):
            Ys[i] = Yi
            Ks[i] = guess = at(i)(Yi)
    return [Yi for Yi in Ys if Yi is not None], [Ki for Ki in Ks if Ki is not None]


def implicit_step(
    rhs: Callable[..., torch.Tensor],
    tableau: ButcherTableau,
    t: float,
    t_next: float,
    y: torch.Tensor,
    k1: torch.Tensor | None = None,
    *,
    newton: NewtonSettings,
    stats: Stats | None = None,
    gradient: Callable[..., Any] | None = None,
    preconditioner: Callable[[float, float, torch.Tensor], Any] | None = None,
    start: Any = None,
    with_error: bool = True,
    stages: Sequence[int] | None = None,
    dts=None,
    keep_stage_states: bool = False,
    nudge: tuple[bool, bool] | None = None,
):
    """``rk_step`` for an implicit tableau: ``(y_next, error, ks, Ys)``. ``gradient(y, dts,
    Ys, lus, t, t_next, nudge)``: with an autograd graph wanted, attaches the implicit function
    theorem to the stage states (``symode._implicit_gradient``) and returns them with it.
    Newton's method not converging: ``error`` is infinite (an adaptive solve retries the step
    smaller); without an error estimate, ``SolveError``."""
    del stages  # every stage is solved
    before = rng_states(y.device)
    solved = solve_stages(
        rhs, tableau, t, t_next, y, newton, stats, k1=k1, nudge=nudge, preconditioner=preconditioner, start=start
    )
    if not same_states(before, rng_states(y.device)):
        raise ValueError(
            f"func draws random numbers (dropout in training mode, torch.randn, ...), but the implicit method "
            f"{tableau.name!r} evaluates it at every Newton iterate, so its stage equations change with every "
            f"draw and have no solution to differentiate; put such layers in eval mode (func.eval()), draw the "
            f"noise once outside func, or use an explicit method"
        )
    if solved is None:
        if with_error:
            inf = torch.full_like(y.detach(), math.inf)  # the step is rejected; the retry reuses k1
            return y, inf, [k1] + [None] * (tableau.num_stages - 1), [None] * tableau.num_stages
        raise SolveError(
            f"Newton's method did not converge on the stage equations of {tableau.name!r} in the step from t = {t!r} "
            f"to t = {t_next!r} ({newton.max_iters} iterations); take smaller steps (step_size), raise "
            f"symode.Newton(max_iters=...), or use an adaptive implicit method such as 'kvaerno5'",
            t,
            stats.num_accepted if stats is not None else 0,
        )
    Ys, ks, lus = solved
    h = t_next - t
    dh = None if dts is None else dts[1] - dts[0]
    if gradient is not None and torch.is_grad_enabled():
        Ys = gradient(y, dts, Ys, lus, t, t_next, nudge)
        ks = [
            rhs(stage_time(tableau, i, t, t_next, h, nudge), Yi)
            if dts is None
            else rhs(stage_time(tableau, i, t, t_next, h, nudge), Yi, stage_time_perturbation(tableau, i, dts))
            for i, Yi in enumerate(Ys)
        ]
    y_next = combine(y, h, tableau.b_sum, ks, dh)
    error = None
    if with_error:
        tableau.check_adaptive()
        with torch.no_grad():
            error = combine(None, h, tableau.b_err_sum, ks)
            assert error is not None  # an adaptive tableau's b_err has terms
            if tableau.diagonally_implicit:  # filtered, as Hairer & Wanner's (IV.8): stiff components damped
                last = (tableau.num_stages - 1,)
                error = lus.solve(last, error.reshape(1, -1)).reshape(error.shape)
    if isinstance(lus, KrylovSolver):
        lus.release()  # its graphs: the gradient's refinement solves with the stages' own products
    return y_next, error, list(ks), list(Ys) if keep_stage_states else [None] * tableau.num_stages
