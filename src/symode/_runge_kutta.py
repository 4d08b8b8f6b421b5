"""One explicit Runge-Kutta step, as pure functions of a tableau.

These functions are shared by every pass that evaluates a step: the forward solve (with or
without an autograd graph) and the recomputation in the backward pass of the symplectic
adjoint. Using the same arithmetic in every pass is what makes the stored and the recomputed
stage states bit-identical, and so the gradient methods agree to round-off.

``rhs(t, y, dt=None)`` takes a Python float time and a tensor state and returns ``dy/dt``.

Gradients with respect to the step's end times: ``dts = (d_n, d_{n+1})`` are tensors of
value zero whose gradient is that of ``t_n`` and ``t_{n+1}`` (e.g. ``t[k] - t[k].detach()``).
Each stage time is then handed to ``rhs`` as ``dt = d_n + c_i (d_{n+1} - d_n)`` and every
combination ``y + h sum_j w_j k_j`` gets ``+ (sum_j w_j k_j) (d_{n+1} - d_n)``: terms of value
exactly zero, so the values computed are bit for bit those without ``dts``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import overload

import torch

from ._tableau import ButcherTableau, WeightedSum

Rhs = Callable[..., torch.Tensor]

__all__ = ["stage_time", "combine", "stage_state", "rk_step", "Nudged"]


class Nudged(float):
    """A stage time just beside a discontinuity of ``f`` in time (torchdiffeq's ``jump_t`` and
    ``perturb``): ``f`` is handed the next representable time towards ``toward`` (+1.0 or -1.0),
    in the dtype it receives times in, so that it sees the side the step lies on."""

    toward: float

    def __new__(cls, value: float, toward: float) -> Nudged:
        out = super().__new__(cls, value)
        out.toward = toward
        return out


@overload
def stage_time(
    tableau: ButcherTableau, i: int, t: float, t_next: float, h: float, nudge: tuple[bool, bool] | None = None
) -> float: ...
@overload
def stage_time(
    tableau: ButcherTableau,
    i: int,
    t: float,
    t_next: float,
    h: float | torch.Tensor,
    nudge: tuple[bool, bool] | None = None,
) -> float | torch.Tensor: ...
def stage_time(
    tableau: ButcherTableau,
    i: int,
    t: float,
    t_next: float,
    h: float | torch.Tensor,
    nudge: tuple[bool, bool] | None = None,
) -> float | torch.Tensor:
    """The time of stage ``i`` of the step ``t -> t_next = t + h``.

    A stage with ``c_i == 1`` is evaluated at ``t_next`` itself (not ``t + h``, which can
    differ from it by rounding), so an FSAL stage is exactly the next step's first stage.
    ``nudge = (start, end)``: the stages at ``t`` (``c_i == 0``) / at ``t_next`` (``c_i == 1``)
    are evaluated just inside the step (:class:`Nudged`), beside a discontinuity there.
    """
    ci = tableau.c[i]
    if ci == 1.0:
        if nudge is not None and nudge[1]:
            return Nudged(t_next, 1.0 if t > t_next else -1.0)
        return t_next
    if ci == 0.0 and nudge is not None and nudge[0]:
        return Nudged(t, 1.0 if t_next > t else -1.0)
    return t + ci * h


@overload
def combine(
    y: torch.Tensor,
    h: float | torch.Tensor,
    weights: WeightedSum | None,
    ks: Sequence[torch.Tensor | None],
    dh: torch.Tensor | None = None,
) -> torch.Tensor: ...
@overload
def combine(
    y: None,
    h: float | torch.Tensor,
    weights: WeightedSum,
    ks: Sequence[torch.Tensor | None],
    dh: torch.Tensor | None = None,
) -> torch.Tensor: ...
@overload
def combine(
    y: torch.Tensor | None,
    h: float | torch.Tensor,
    weights: WeightedSum | None,
    ks: Sequence[torch.Tensor | None],
    dh: torch.Tensor | None = None,
) -> torch.Tensor | None: ...
def combine(
    y: torch.Tensor | None,
    h: float | torch.Tensor,
    weights: WeightedSum | None,
    ks: Sequence[torch.Tensor | None],
    dh: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """``y + h * sum_j w_j k_j`` (``y=None``: just ``h * sum``), with the weights given as
    ``(p, w_p, ((j, w_j / w_p), ...))`` (``tableau.a_sums[i]``, ``b_sum``, ``b_err_sum``;
    ``None``: no terms).

    The sum is formed first and added to ``y`` once, so that the increment, small against
    ``y``, is rounded once (in float32 this keeps the solution an order of magnitude closer to
    the float64 one than adding term by term). It is formed relative to the largest weight
    ``w_p``: ``y + (h w_p) * (k_p + sum_{j != p} (w_j / w_p) k_j)``, one tensor operation per
    term (a single term is one ``add``), which is what the forward and the backward passes pay
    per combination. ``dh``: a zero-valued tensor carrying the gradient of ``h``. ``h`` may be
    a 0-dim tensor (a compiled step, where a Python float would be specialised on)."""
    if weights is None:  # a stage that uses no earlier stage (a row of zeros)
        return y
    p, wp, rest = weights
    total = ks[p]
    assert total is not None  # the weights refer to evaluated stages only
    for j, w in rest:
        kj = ks[j]
        assert kj is not None
        total = total.add(kj, alpha=w)
    if y is None:
        out = total * (h * wp)
    elif isinstance(h, torch.Tensor):
        out = y + total * (h * wp)
    else:
        out = y.add(total, alpha=h * wp)
    if dh is not None:
        out = out + total * (dh * wp)
    return out


def stage_state(
    tableau: ButcherTableau,
    i: int,
    y: torch.Tensor,
    h: float | torch.Tensor,
    ks: Sequence[torch.Tensor | None],
    dh: torch.Tensor | None = None,
) -> torch.Tensor:
    """The state ``Y_i = y + h * sum_{j<i} a_ij k_j`` of stage ``i``."""
    return combine(y, h, tableau.a_sums[i], ks, dh)


def stage_time_perturbation(tableau: ButcherTableau, i: int, dts) -> torch.Tensor | None:
    """The zero-valued gradient carrier of stage ``i``'s time (see the module docstring)."""
    if dts is None:
        return None
    d_t, d_next = dts
    ci = tableau.c[i]
    if ci == 0.0:
        return d_t
    if ci == 1.0:
        return d_next
    return d_t + ci * (d_next - d_t)


def rk_step(
    rhs: Rhs,
    tableau: ButcherTableau,
    t: float,
    t_next: float,
    y: torch.Tensor,
    k1: torch.Tensor | None = None,
    *,
    with_error: bool = True,
    stages: Sequence[int] | None = None,
    dts=None,
    keep_stage_states: bool = False,
    h: torch.Tensor | None = None,
    times: Sequence[torch.Tensor] | None = None,
    nudge: tuple[bool, bool] | None = None,
):
    """Take one step ``t -> t_next`` from ``y``.

    Args:
        k1: ``f(t, y)`` if already known (the FSAL stage of the previous step, or the
            evaluation made by the initial step heuristic); it is then not evaluated again.
        with_error: also return the error estimate ``h * sum_i b_err_i k_i``.
        stages: evaluate only these stages (ascending). Defaults to every stage when an
            error estimate is wanted, else to ``tableau.solution_stages``.
        dts: zero-valued carriers of the gradients of ``t`` and ``t_next`` (module docstring).
        keep_stage_states: return every stage state; otherwise each is dropped once its
            derivative is evaluated (``Ys`` then holds ``None`` but for an FSAL last stage).
        h, times: the step size (a 0-dim tensor) and the time handed to ``rhs`` for each
            stage, given instead of ``t``/``t_next`` by a compiled step (``symode._compiled``).
        nudge: ``(start, end)``: evaluate the stages at the step's start/end just inside the
            step (``stage_time``), beside a discontinuity of ``f`` in time.

    Returns ``(y_next, error_or_None, ks, Ys)``: ``ks[i]``/``Ys[i]`` are the stage
    derivatives/states, ``None`` for stages not evaluated. For an FSAL tableau the last
    stage state *is* ``y_next`` (the same tensor), so the next step's ``k1 = ks[-1]``.
    """
    if tableau.implicit:
        raise TypeError(
            f"{tableau.name!r} is an implicit method: its steps solve the stage equations (symode._implicit."
            f"implicit_step, through ODEProblem.stepper), which rk_step does not"
        )
    step: float | torch.Tensor = t_next - t if h is None else h
    s = tableau.num_stages
    if stages is None:
        stages = range(s) if (with_error or tableau.fsal) else tableau.solution_stages
    dh = None if dts is None else dts[1] - dts[0]
    ks: list[torch.Tensor | None] = [None] * s
    Ys: list[torch.Tensor | None] = [None] * s
    for i in stages:
        Yi = y if i == 0 else stage_state(tableau, i, y, step, ks, dh)
        if keep_stage_states or (i == s - 1 and tableau.fsal):
            Ys[i] = Yi
        if i == 0 and k1 is not None:
            ks[0] = k1
        elif times is not None:
            ks[i] = rhs(times[i], Yi)
        elif dts is None:
            ks[i] = rhs(stage_time(tableau, i, t, t_next, step, nudge), Yi)
        else:
            ks[i] = rhs(stage_time(tableau, i, t, t_next, step, nudge), Yi, stage_time_perturbation(tableau, i, dts))
    if tableau.fsal and Ys[-1] is not None:
        y_next = Ys[-1]
    else:
        y_next = combine(y, step, tableau.b_sum, ks, dh)
    error = None
    if with_error:
        tableau.check_adaptive()
        with torch.no_grad():  # the error estimate only steers the step size: never differentiated
            error = combine(None, step, tableau.b_err_sum, ks)
    return y_next, error, ks, Ys
