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

from collections.abc import Iterator

import torch

from .._checks import check_bool, non_negative_int
from .._dense import dense_terms, interpolation_stages
from .._integrate import Trajectory
from .._ivp import ODEProblem
from .._runge_kutta import stage_state, stage_time
from ._base import GradientMethod
from ._first_evaluation import closure_check
from ._implicit_adjoint import dense_outputs_back, implicit_step_adjoint
from ._recording import StepwiseMethod, vjp
from ._revolve import reversed_states

__all__ = ["SymplecticAdjoint"]


class SymplecticAdjoint(StepwiseMethod):
    """The exact gradient of the solve with memory ``O(N + s + L)``: ``N`` stored states,
    ``s`` stages' states, one network use ``L``.

    Costs per step in the backward pass: ``s' - 1`` evaluations of ``f`` to recompute the
    stage states and ``s'`` differentiated evaluations, where ``s'`` counts the stages that
    influence the solution (dopri5: 5 + 6; rk4: 3 + 4).

    Args:
        store_stages: keep the stage states of every step from the forward pass (memory
            ``N s' |y|`` instead of ``N |y|``) and skip the recomputation. An implicit method
            recomputes its stages by Newton's method whatever this says (the step's Jacobian
            factorisation, which the adjoint solve needs, comes with them), so nothing is kept.
        max_checkpoints: keep at most this many states besides ``y0`` and recompute the others
            from the recorded step grid with a binomial (revolve) schedule, so that memory
            stops growing with ``N``; the recomputed steps reproduce the forward steps exactly.
            ``None``: keep every state.
    """

    name = "symplectic_adjoint"

    def __init__(self, store_stages: bool = False, max_checkpoints: int | None = None):
        check_bool(store_stages, "store_stages")
        if max_checkpoints is not None:
            max_checkpoints = non_negative_int(max_checkpoints, "max_checkpoints")
            if store_stages:
                raise ValueError(
                    "store_stages=True keeps every step's stages; it cannot be combined with "
                    "max_checkpoints, which bounds the memory"
                )
        self.store_stages = store_stages
        self.max_checkpoints = max_checkpoints

    @classmethod
    def configurations(cls) -> list[GradientMethod]:
        return [cls(), cls(store_stages=True), cls(max_checkpoints=2)]

    @property
    def rng_every_stage(self) -> bool:  # type: ignore[override]
        return self.store_stages

    def __repr__(self) -> str:
        args = []
        if self.store_stages:
            args.append("store_stages=True")
        if self.max_checkpoints is not None:
            args.append(f"max_checkpoints={self.max_checkpoints}")
        return f"SymplecticAdjoint({', '.join(args)})"

    def record(self, problem: ODEProblem, y0: torch.Tensor, f0: torch.Tensor) -> Trajectory:
        keep_stages = self.store_stages and not problem.tableau.implicit  # see store_stages
        return problem.integrate(y0, keep_states=self.max_checkpoints is None, keep_stages=keep_stages, f0=f0)

    def states(self, problem: ODEProblem, trajectory: Trajectory) -> Iterator[tuple[int, torch.Tensor]]:
        num_steps = len(trajectory.grid) - 1
        if self.max_checkpoints is None:
            ys = trajectory.ys
            assert ys is not None  # record keeps every state without max_checkpoints
            return ((n, ys[n]) for n in reversed(range(num_steps)))
        if num_steps == 0:  # a single output time: no step to reverse
            return iter(())
        return reversed_states(
            num_steps,
            self.max_checkpoints,
            trajectory.outputs[0],
            lambda i, j, y: _advance(problem, trajectory, i, j, y),
        )

    def step_back(self, problem, trajectory, n, y, lam, params, param_grads, time_grads, dense, out_grads):
        stored = trajectory.stages[n] if trajectory.stages is not None else None
        lam, time_cotangents = _step_adjoint(
            problem,
            n,
            trajectory.grid[n],
            trajectory.grid[n + 1],
            y,
            lam,
            params,
            param_grads,
            stored,
            with_time=time_grads is not None,
            dense=dense,
            out_grads=out_grads,
            nudge=trajectory.nudge(n),
        )
        if time_grads is not None:
            time_grads[n] = time_grads[n] + time_cotangents[0]
            time_grads[n + 1] = time_grads[n + 1] + time_cotangents[1]
        return lam


def _advance(problem: ODEProblem, trajectory: Trajectory, i: int, j: int, y: torch.Tensor) -> torch.Tensor:
    """Recompute ``y_j`` from ``y_i`` on the recorded grid, without a graph."""
    rhs = problem.rhs("nfe_backward")
    grid = trajectory.grid
    with torch.no_grad():
        for n in range(i, j):
            replay = problem.replay(n)
            y = problem.stepper(rhs if replay is None else replay.wrap(rhs))(
                grid[n],
                grid[n + 1],
                y,
                with_error=False,
                stages=problem.tableau.solution_stages,
                nudge=trajectory.nudge(n),
            )[0]
    return y


def _step_adjoint(
    problem: ODEProblem,
    n: int,
    t: float,
    t_next: float,
    y: torch.Tensor,
    lam: torch.Tensor,
    params: tuple[torch.Tensor, ...],
    param_grads: list[torch.Tensor],
    stored: list[torch.Tensor | None] | None = None,
    with_time: bool = False,
    dense: list[tuple[int, float, torch.Tensor]] | None = None,
    out_grads: list[torch.Tensor] | None = None,
    nudge: tuple[bool, bool] | None = None,
):
    """Pull the cotangent ``lam`` of ``y_{n+1}`` back through step ``n`` to ``y_n``, adding the
    parameter gradients of the step to ``param_grads`` in place. ``stored``: the step's stage
    states from the forward pass, if kept. A stochastic ``f``'s random numbers are replayed
    (``problem.replay``): the recomputation evaluates the stages in order, noting the
    generators' states before each, and each differentiated evaluation starts from its stage's.

    Returns ``(lam_n, (ct_n, ct_next))``, the second the cotangents of ``t_n`` and ``t_{n+1}``
    when ``with_time`` (else ``None``): with ``h = t_{n+1} - t_n``, stage times
    ``t_n + c_i h`` and ``g_i = kappa_i^T df/dt`` at stage ``i``, ``dL/dh = sum_j kappa_j^T k_j / h
    + sum_i c_i g_i`` and ``dL/dt_n|_h = sum_i g_i``.

    ``dense``: ``(k, theta, g_k)`` of the outputs interpolated within the step (``symode._dense``):
    their cotangents join the stage cotangents (``kappa_i += h b_i(theta) g_k``) and ``y_n``'s, and
    the stages only the interpolant uses (dopri5's last) join the sweep; the cotangent of each
    output time, ``g_k^T D`` with ``D = sum_i b_i'(theta) k_i``, goes to ``out_grads[k]`` and moves
    ``t_n``/``t_{n+1}`` by ``-(1 - theta)``/``-theta`` times it."""
    tableau = problem.tableau
    h = t_next - t
    dense = dense or []
    if tableau.implicit:
        return implicit_step_adjoint(
            problem, t, t_next, y, lam, params, param_grads, with_time, dense, out_grads, nudge
        )
    stages = interpolation_stages(tableau) if dense else tableau.solution_stages
    weights = [dense_terms(tableau, theta) for _, theta, _ in dense]
    derivatives = [dict(slope_terms) for _, slope_terms in weights]  # per output: stage -> b_i'(theta)

    # 1. the stage states: stored, or recomputed without a graph (the last stage's k is not needed)
    replay = problem.replay(n, capture=stored is None)
    Ys: list[torch.Tensor | None]
    if stored is not None:
        Ys = list(stored)
    else:
        Ys = [None] * tableau.num_stages
        with torch.no_grad():
            ks: list[torch.Tensor | None] = [None] * tableau.num_stages
            for i in stages:
                Ys[i] = Y = y if i == 0 else stage_state(tableau, i, y, h, ks)
                if replay is not None:
                    replay.before(i)
                if i != stages[-1]:
                    problem.stats.nfe_backward += 1
                    ks[i] = problem.func(problem.time(stage_time(tableau, i, t, t_next, h, nudge)), Y).detach()
            del ks, Y
    check = closure_check(problem, "SymplecticAdjoint")
    # the step's parameter cotangents are summed first and added to the running totals once:
    # each total then takes N rounded additions instead of N s' (float32: about half the error
    # at N = 1000), for |θ| more memory while a step is swept
    step_grads = [torch.zeros_like(g) for g in param_grads]

    # 2. sweep the stages in reverse, one differentiated evaluation of f at a time
    kappa: list[torch.Tensor | None] = [None] * tableau.num_stages
    for i in stages:
        if tableau.b[i] != 0.0:
            kappa[i] = lam * (h * tableau.b[i])
    for (_, _, g), (values, _) in zip(dense, weights):
        for i, bi in values:
            kappa_i = kappa[i]
            kappa[i] = g * (h * bi) if kappa_i is None else kappa_i.add(g, alpha=h * bi)
    slopes = [lam.new_zeros(()) for _ in dense] if with_time else []  # g_k^T D, summed over the stages
    lam_step: torch.Tensor | None = None  # the step's sum of mu_i, added to lam once
    ct = [lam.new_zeros(()), lam.new_zeros(())] if with_time else None
    for i in reversed(stages):
        cotangent, kappa[i] = kappa[i], None
        Yi, Ys[i] = Ys[i], None
        if cotangent is None and with_time and any(i in derivative for derivative in derivatives):
            cotangent = torch.zeros_like(lam)  # k_i is needed for the interpolant's time derivative
        if cotangent is None:  # structurally zero: nothing flows through this stage
            continue
        assert Yi is not None  # the state of every stage in stages is stored or recomputed above
        ti = stage_time(tableau, i, t, t_next, h, nudge)
        problem.stats.nfe_backward += 1
        problem.stats.nfe_backward_vjp += 1
        if replay is not None:
            replay.set_before(i)
        if ct is not None:  # with_time
            mu, (g,), k = vjp(
                lambda Y, T: problem.func(T, Y),
                Yi,
                cotangent,
                params,
                step_grads,
                extra=(problem.time(ti),),
                keep_output=True,
                check=check,
            )
            dh = (cotangent * k).sum() / h
            ct[0] = ct[0] - dh
            ct[1] = ct[1] + dh
            for j, ((_, _, g_out), derivative) in enumerate(zip(dense, derivatives)):
                if i in derivative:
                    slopes[j] = slopes[j] + derivative[i] * (g_out * k).sum()
            if g is not None:
                ct[0] = ct[0] + (1.0 - tableau.c[i]) * g
                ct[1] = ct[1] + tableau.c[i] * g
            del k, g
        else:
            mu = vjp(lambda Y: problem.func(problem.time(ti), Y), Yi, cotangent, params, step_grads, check=check)[0]  # noqa: B023 (called at once)
        if mu is None:
            continue
        # the first mu is the accumulator: a fresh tensor, which at most aliases its own dead cotangent
        lam_step = mu if lam_step is None else lam_step.add_(mu)
        for j, aij in tableau.a_terms[i]:
            kappa_j = kappa[j]
            if kappa_j is None:
                kappa[j] = mu * (h * aij)
            else:
                kappa_j.add_(mu, alpha=h * aij)
        del mu, Yi, cotangent  # free before the next stage's graph is built
    for total, g in zip(param_grads, step_grads):
        total.add_(g)
    lam_out = lam if lam_step is None else lam + lam_step
    return dense_outputs_back(lam_out, dense, slopes, ct, out_grads), ct
