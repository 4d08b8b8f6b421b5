"""Dense output: the solution between step ends, from a step's stages.

A continuous extension gives, for ``theta`` in [0, 1]::

    y(t_n + theta h) ~ y_n + h sum_i b_i(theta) k_i          (``ButcherTableau.b_dense``)

It is linear in ``y_n`` and the stage derivatives ``k_i``, which is what lets every gradient
method differentiate it exactly: backprop records it, checkpointing rebuilds it with the step,
and the symplectic adjoint folds an output's cotangent ``g`` into the step's stage cotangents
(``kappa_i += h b_i(theta) g``) and into ``y_n``'s (``+= g``).

The methods of the catalogue carry their own extensions (dopri5: Shampine's; tsit5:
Tsitouras'; dopri8: one of order 5 derived for symode). Any other method gets the cubic
Hermite interpolant through ``y_n``, ``y_{n+1}`` and their derivatives ``f(t_n, y_n) = k_1``
and ``f(t_{n+1}, y_{n+1})``: an FSAL method's last stage; for a method that is not FSAL,
:func:`interpolation_tableau` appends that evaluation as an extra stage (``c = 1``, its row of
``a`` equal to ``b``, weight 0), which makes the method FSAL: the next step reuses it as its
first stage, so the interpolant costs one evaluation of ``f`` per solve.

Gradients with respect to the output time ``t`` (``theta = (t - t_n) / h``): with the
zero-valued carriers ``d_n``, ``d_{n+1}``, ``d_t`` of ``t_n``, ``t_{n+1}``, ``t`` (see
``symode._runge_kutta``), ``h b_i(theta)`` moves by ``b_i(theta) (d_{n+1} - d_n) +
b_i'(theta) (d_t - (1 - theta) d_n - theta d_{n+1})``: the first term is the step-size
dependence every combination has, the second the interpolant's time derivative
``D = sum_i b_i'(theta) k_i`` (``dy/dt`` of the interpolant).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from ._runge_kutta import combine
from ._tableau import ButcherTableau, Terms, _relative_to_largest

__all__ = [
    "interpolation_tableau",
    "fixed_grid_tableau",
    "interpolation_stages",
    "dense_terms",
    "interpolate",
    "hermite_rows",
]


def hermite_rows(tableau: ButcherTableau) -> tuple[tuple[float, ...], ...]:
    """The cubic Hermite interpolant's ``b_dense`` for an FSAL tableau (its last stage is
    ``f(t_{n+1}, y_{n+1})``): ``b_i(theta) = (3 theta^2 - 2 theta^3) b_i`` plus ``theta - 2
    theta^2 + theta^3`` for the first stage and ``theta^3 - theta^2`` for the last."""
    s = tableau.num_stages
    rows = []
    for i, bi in enumerate(tableau.b):
        row = [0.0, 3.0 * bi, -2.0 * bi]
        if i == 0:
            row = [row[0] + 1.0, row[1] - 2.0, row[2] + 1.0]
        if i == s - 1:
            row = [row[0], row[1] - 1.0, row[2] + 1.0]
        rows.append(tuple(row))
    return tuple(rows)


@functools.cache
def interpolation_tableau(tableau: ButcherTableau) -> ButcherTableau:
    """``tableau`` in the form the dense solves take: with ``b_dense``, and, when the
    interpolant needs ``f(t_{n+1}, y_{n+1})`` and the method is not FSAL, with that evaluation
    appended as an FSAL stage (module docstring). The steps and the solution are those of
    ``tableau``; only the stages differ."""
    s = tableau.num_stages
    rows = tableau.b_dense
    if rows is not None and len(rows) == s:
        return tableau
    if tableau.implicit:
        return _with(tableau, tableau.c, tableau.a, tableau.b, tableau.b_err, _implicit_hermite_rows(tableau))
    if tableau.fsal and rows is None:
        return _with(tableau, tableau.c, tableau.a, tableau.b, tableau.b_err, hermite_rows(tableau))
    if tableau.fsal:
        raise ValueError(
            f"ButcherTableau {tableau.name!r} is FSAL (its last stage is f(t_n+1, y_n+1)), so b_dense needs {s} "
            f"rows, not {s + 1}"
        )
    extended = _with_fsal_stage(tableau)
    return _with(extended, extended.c, extended.a, extended.b, extended.b_err, rows or hermite_rows(extended))


@functools.cache
def fixed_grid_tableau(tableau: ButcherTableau, interp: str) -> ButcherTableau:
    """``tableau`` with torchdiffeq's fixed-grid interpolant: ``"linear"`` between the step's
    ends (``b_i(theta) = theta b_i``) or ``"cubic"`` (the Hermite interpolant, with
    ``f(t_{n+1}, y_{n+1})`` appended as an FSAL stage where the method is not FSAL)."""
    if interp == "linear":
        return _with(tableau, tableau.c, tableau.a, tableau.b, tableau.b_err, tuple((bi,) for bi in tableau.b))
    if tableau.implicit:
        return _with(tableau, tableau.c, tableau.a, tableau.b, tableau.b_err, _implicit_hermite_rows(tableau))
    if tableau.fsal:
        return _with(tableau, tableau.c, tableau.a, tableau.b, tableau.b_err, hermite_rows(tableau))
    extended = _with_fsal_stage(tableau)
    return _with(extended, extended.c, extended.a, extended.b, extended.b_err, hermite_rows(extended))


def _implicit_hermite_rows(tableau: ButcherTableau) -> tuple[tuple[float, ...], ...]:
    """The cubic Hermite interpolant of an implicit method whose first stage is ``f(t_n, y_n)``
    and whose last stage state is the solution (an ESDIRK such as Kvaerno's, the trapezoidal
    rule, TR-BDF2); any other implicit method has no interpolant here."""
    if not (tableau.explicit_first_stage and tableau.stiffly_accurate):
        raise ValueError(
            f"the implicit method {tableau.name!r} has no continuous extension here (the cubic Hermite "
            f"interpolant needs an explicit first stage and a stiffly accurate last one, as kvaerno3/4/5, "
            f"trapezoid and trbdf2 have): make every output time a step end (symode.AdaptiveSteps("
            f"interpolate=False), or fixed steps without interp), or use interp='linear'"
        )
    return hermite_rows(tableau)


def _with_fsal_stage(tableau: ButcherTableau) -> ButcherTableau:
    """``tableau`` with ``f(t_{n+1}, y_{n+1})`` appended as a stage (``c = 1``, its row of ``a``
    equal to ``b``, weight 0): an FSAL method with the same steps and solution."""
    b_err = None if tableau.b_err is None else (*tableau.b_err, 0.0)
    a = tuple(row[:i] for i, row in enumerate(tableau.a)) + (tableau.b,)  # ragged rows
    return _with(tableau, (*tableau.c, 1.0), a, (*tableau.b, 0.0), b_err, None)


def _with(tableau: ButcherTableau, c, a, b, b_err, b_dense) -> ButcherTableau:
    return ButcherTableau(
        tableau.name,
        c=c,
        a=a,
        b=b,
        order=tableau.order,
        b_err=b_err,
        error_order=tableau.error_order,
        doc=tableau.doc,
        b_dense=b_dense,
    )


@functools.cache
def interpolation_stages(tableau: ButcherTableau) -> tuple[int, ...]:
    """The stages a step that holds an interpolated output evaluates (ascending): those with a
    nonzero weight in ``b`` or ``b_dense``, and those these use."""
    rows = tableau.b_dense
    assert rows is not None  # an interpolation tableau
    s = tableau.num_stages
    needed = [False] * s
    for i in reversed(range(s)):
        used = tableau.b[i] != 0.0 or any(c != 0.0 for c in rows[i])
        needed[i] = used or any(needed[j] and tableau.a[j][i] != 0.0 for j in range(i + 1, s))
    return tuple(i for i in range(s) if needed[i])


def dense_terms(tableau: ButcherTableau, theta: float) -> tuple[Terms, Terms]:
    """The nonzero ``(i, b_i(theta))`` and ``(i, b_i'(theta))``, in float64."""
    rows = tableau.b_dense
    assert rows is not None  # an interpolation tableau
    values, slopes = [], []
    for i, row in enumerate(rows):
        value = slope = 0.0
        for p in reversed(range(len(row))):  # Horner: b_i = theta (c_0 + theta (c_1 + ...))
            slope = slope * theta + (p + 1) * row[p]
            value = value * theta + row[p]
        value *= theta
        if value != 0.0:
            values.append((i, value))
        if slope != 0.0:
            slopes.append((i, slope))
    return tuple(values), tuple(slopes)


def interpolate(
    tableau: ButcherTableau,
    y: torch.Tensor,
    h: float,
    theta: float,
    ks: Sequence[torch.Tensor | None],
    dts: tuple[torch.Tensor, torch.Tensor] | None = None,
    d_out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``y_n + h sum_i b_i(theta) k_i``: the state at ``t_n + theta h`` in the step from ``y = y_n``
    with stage derivatives ``ks``; ``dts``/``d_out``: the zero-valued carriers of the step's
    end times' and of the output time's gradients (module docstring)."""
    values, slopes = dense_terms(tableau, theta)
    dh = None if dts is None else dts[1] - dts[0]
    out = combine(y, h, _relative_to_largest(values), ks, dh)
    if dts is not None and d_out is not None and slopes:
        slope_sum = _relative_to_largest(slopes)
        assert slope_sum is not None and dh is not None  # slopes is not empty; dts is given
        out = out + combine(None, 1.0, slope_sum, ks) * (d_out - dts[0] - theta * (dts[1] - dts[0]))
    return out
