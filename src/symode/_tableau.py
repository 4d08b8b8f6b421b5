"""Butcher tableaus of Runge-Kutta methods, explicit and implicit, as validated immutable data.

An s-stage Runge-Kutta method advances ``y_n`` at ``t_n`` by ``h``::

    Y_i = y_n + h * sum_j a[i][j] * k_j,     k_i = f(t_n + c[i] * h, Y_i)
    y_{n+1} = y_n + h * sum_i b[i] * k_i
    error estimate = h * sum_i b_err[i] * k_i     (adaptive methods only)

An explicit method has ``a`` strictly lower triangular (``j < i``), so the stages are evaluated in
turn; an implicit one (an entry on or above the diagonal) solves the stage equations
(``symode._implicit``).

``b_err`` is the difference between the propagating weights ``b`` and the weights of the
embedded method of order ``error_order``, so ``sum(b_err) == 0``.

A continuous extension (dense output) replaces ``b`` by polynomials in ``theta`` in [0, 1]::

    y(t_n + theta * h) ~ y_n + h * sum_i b_i(theta) * k_i,    b_i(theta) = sum_p b_dense[i][p] * theta**(p + 1)

with ``b_i(1) == b_i`` (see ``symode._dense``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from numbers import Real
from typing import Any

__all__ = ["ButcherTableau"]

# Row sums and weight sums are checked to this absolute tolerance; coefficients given as
# decimals with 16+ digits (e.g. dopri8) carry rounding of about 1e-16 each.
_CONSISTENCY_TOL = 1e-12


def _as_float(value: Any, what: str) -> float:
    if isinstance(value, (bool, str, bytes)):
        raise TypeError(f"{what} must be a real number, got {value!r}")
    if not isinstance(value, (Real, Fraction)):
        try:
            value = float(value)  # numpy scalars, 0-dim tensors
        except (TypeError, ValueError):
            raise TypeError(f"{what} must be a real number, got {value!r}") from None
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return value


def _as_vector(values: Any, name: str) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise TypeError(f"ButcherTableau.{name} must be a sequence of numbers, got {values!r}")
    return tuple(_as_float(v, f"ButcherTableau.{name}[{i}]") for i, v in enumerate(values))


def _dense_rows(name: str, rows: Any, b: tuple[float, ...]) -> tuple[tuple[float, ...], ...]:
    """``b_dense`` as float rows, checked: one row per stage, of one length, ``b_i(1) == b_i``
    (the interpolant ends on the step's solution) and ``sum_i b_i(theta) == theta``."""
    s = len(b)
    if isinstance(rows, (str, bytes)) or not hasattr(rows, "__len__") or len(rows) not in (s, s + 1):
        raise ValueError(
            f"ButcherTableau {name!r}: b_dense must have {s} rows (one per stage), or {s + 1} (the last for "
            f"f(t_n+1, y_n+1), evaluated as an extra stage), got {rows!r}"
        )
    if len(rows) == s + 1:
        b = (*b, 0.0)
    out = tuple(_as_vector(row, f"b_dense[{i}]") for i, row in enumerate(rows))
    degree = len(out[0])
    if degree == 0 or any(len(row) != degree for row in out):
        raise ValueError(f"ButcherTableau {name!r}: the rows of b_dense must have one, nonzero length")
    for i, row in enumerate(out):
        if abs(math.fsum(row) - b[i]) > _CONSISTENCY_TOL * max(1.0, abs(b[i])):
            raise ValueError(
                f"ButcherTableau {name!r}: b_dense[{i}] sums to {math.fsum(row)!r} at theta = 1, but b[{i}] = "
                f"{b[i]!r}; the interpolant must end on the step's solution"
            )
    for p in range(degree):
        total = math.fsum(row[p] for row in out)
        if abs(total - (1.0 if p == 0 else 0.0)) > _CONSISTENCY_TOL:
            raise ValueError(
                f"ButcherTableau {name!r}: the theta**{p + 1} coefficients of b_dense sum to {total!r}, not "
                f"{1 if p == 0 else 0}; sum_i b_i(theta) must be theta"
            )
    return out


def _relative_to_largest(terms: Terms) -> WeightedSum | None:
    """``(p, w_p, ((j, w_j / w_p) for the other terms))``, ``|w_p|`` the largest weight; ``None``
    for no terms."""
    if not terms:
        return None
    p, wp = max(terms, key=lambda term: abs(term[1]))
    return p, wp, tuple((j, w / wp) for j, w in terms if j != p)


#: A weighted sum ``sum_j w_j k_j`` in the form ``combine`` evaluates it: ``(p, w_p, ((j, w_j / w_p), ...))``,
#: relative to the largest weight ``w_p`` (``None`` for an empty sum).
WeightedSum = tuple[int, float, tuple[tuple[int, float], ...]]
#: The nonzero terms ``((j, w_j), ...)`` of a row of weights.
Terms = tuple[tuple[int, float], ...]

Coefficients = Sequence[Real | Fraction | float]


@dataclass(frozen=True, init=False)
class ButcherTableau:
    """A Runge-Kutta method, explicit or implicit.

    Args:
        name: a short name, used in messages and statistics.
        c: stage times, length ``s``.
        a: the stage matrix: ``s`` rows of length ``s`` (an explicit method has zeros on and
            above the diagonal; an implicit one does not), or, for an explicit method, ragged
            rows, row ``i`` holding its ``i`` entries ``a[i][0..i-1]`` (row 0 empty).
        b: propagating weights, length ``s``, summing to 1.
        order: the classical order of the propagating method.
        b_err: error-estimate weights ``b - b_embedded``, length ``s``, summing to 0; ``None``
            for a fixed-step-only method.
        error_order: the order of the embedded method (required with ``b_err``).
        doc: a line on the method and its source, for documentation.
        b_dense: a continuous extension: per stage, the coefficients of ``theta**1,
            theta**2, ...`` of ``b_i(theta)`` (rows of equal length), with ``b_i(1) == b_i``
            and ``sum_i b_i(theta) == theta``; ``None``: the solvers build a Hermite
            interpolant (``symode._dense``). A method that is not FSAL may give ``s + 1``
            rows: the last is the weight of ``f(t_{n+1}, y_{n+1})``, which the solvers then
            evaluate as an extra stage (it is the next step's first).

    Coefficients may be given as floats, ints or ``fractions.Fraction``; they are stored as
    Python floats (``a`` as ``s`` full rows). Construction raises ``ValueError``/``TypeError``
    if the tableau is not a consistent method (row sums ``sum_j a[i][j] == c[i]``,
    ``sum(b) == 1``, ``sum(b_err) == 0``).

    Derived fields (computed once, at construction; plain attributes, so that
    ``torch.compile`` reads them):

    Attributes:
        fsal: First Same As Last: the last stage is evaluated at ``(t_{n+1}, y_{n+1})``, so
            it equals the first stage of the next step (explicit methods only).
        implicit: ``a`` has a nonzero entry on or above the diagonal: the stages are solved
            for (``symode._implicit``), not evaluated in turn.
        diagonally_implicit: implicit with ``a`` lower triangular (SDIRK, ESDIRK): the stages
            are solved one at a time.
        stiffly_accurate: ``c[-1] == 1`` and the last row of ``a`` is ``b``: the last stage
            state is the step's solution (Radau IIA, the ESDIRK pairs).
        explicit_first_stage: the first row of ``a`` is zero: ``k_1 = f(t_n, y_n)``.
        a_terms: for each stage ``i`` the nonzero ``(j, a[i][j])``.
        b_terms: the nonzero ``(i, b[i])``.
        b_err_terms: the nonzero ``(i, b_err[i])`` (empty for a fixed-step method).
        solution_stages: the stages that influence ``y_{n+1}`` (ascending); a trailing stage
            used only by the error estimate (dopri5's FSAL stage) is not among them.
        a_sums: per stage, its weighted sum relative to the largest weight (``WeightedSum``:
            ``(p, w_p, ((j, w_j / w_p), ...))``, ``None`` for an empty row), the form in
            which ``combine`` evaluates it.
        b_sum: the same for ``b``.
        b_err_sum: the same for ``b_err`` (``None`` for a fixed-step method).
    """

    name: str
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    order: int
    b_err: tuple[float, ...] | None = None
    error_order: int | None = None
    doc: str = field(default="", compare=False, repr=False)
    b_dense: tuple[tuple[float, ...], ...] | None = None
    # derived
    fsal: bool = field(init=False, compare=False, repr=False)
    implicit: bool = field(init=False, compare=False, repr=False)
    diagonally_implicit: bool = field(init=False, compare=False, repr=False)
    stiffly_accurate: bool = field(init=False, compare=False, repr=False)
    explicit_first_stage: bool = field(init=False, compare=False, repr=False)
    a_terms: tuple[Terms, ...] = field(init=False, compare=False, repr=False)
    b_terms: Terms = field(init=False, compare=False, repr=False)
    b_err_terms: Terms = field(init=False, compare=False, repr=False)
    solution_stages: tuple[int, ...] = field(init=False, compare=False, repr=False)
    a_sums: tuple[WeightedSum | None, ...] = field(init=False, compare=False, repr=False)
    b_sum: WeightedSum | None = field(init=False, compare=False, repr=False)
    b_err_sum: WeightedSum | None = field(init=False, compare=False, repr=False)

    def __init__(
        self,
        name: str,
        c: Coefficients,
        a: Sequence[Coefficients],
        b: Coefficients,
        order: int,
        b_err: Coefficients | None = None,
        error_order: int | None = None,
        doc: str = "",
        b_dense: Sequence[Coefficients] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"ButcherTableau.name must be a non-empty string, got {name!r}")
        if not isinstance(doc, str):
            raise TypeError(f"ButcherTableau.doc must be a string, got {doc!r}")
        c_ = _as_vector(c, "c")
        b_ = _as_vector(b, "b")
        s = len(c_)
        if s == 0:
            raise ValueError("ButcherTableau.c is empty: a method needs at least one stage")
        if len(b_) != s:
            raise ValueError(f"ButcherTableau.b has {len(b_)} entries but c has {s}; they must match")
        if isinstance(a, (str, bytes)) or not hasattr(a, "__len__") or len(a) != s:
            raise ValueError(f"ButcherTableau.a must have {s} rows (one per stage), got {a!r}")
        rows = []
        for i, given in enumerate(a):
            row = _as_vector(given, f"a[{i}]")
            if len(row) == s:
                pass  # entries on or above the diagonal make the method implicit
            elif len(row) == i:
                row = row + (0.0,) * (s - i)
            else:
                raise ValueError(f"ButcherTableau.a[{i}] has {len(row)} entries; give {i} (ragged) or {s} (square)")
            rows.append(row)
        for i in range(s):
            row_sum = math.fsum(rows[i])
            if abs(row_sum - c_[i]) > _CONSISTENCY_TOL * max(1.0, abs(c_[i])):
                raise ValueError(
                    f"ButcherTableau {name!r}: row {i} of a sums to {row_sum!r} but c[{i}] = {c_[i]!r}; "
                    f"a Runge-Kutta method needs sum_j a[i][j] == c[i]"
                )
        if abs(math.fsum(b_) - 1.0) > _CONSISTENCY_TOL:
            raise ValueError(f"ButcherTableau {name!r}: the weights b sum to {math.fsum(b_)!r}, not 1")
        if isinstance(order, bool) or not isinstance(order, int) or order < 1:
            raise ValueError(f"ButcherTableau.order must be a positive int, got {order!r}")
        b_err_ = None
        if b_err is not None:
            b_err_ = _as_vector(b_err, "b_err")
            if len(b_err_) != s:
                raise ValueError(f"ButcherTableau.b_err has {len(b_err_)} entries but c has {s}")
            if abs(math.fsum(b_err_)) > _CONSISTENCY_TOL:
                raise ValueError(
                    f"ButcherTableau {name!r}: b_err sums to {math.fsum(b_err_)!r}, not 0; b_err is "
                    f"b minus the embedded weights (not the embedded weights themselves)"
                )
            if all(e == 0.0 for e in b_err_):
                raise ValueError(f"ButcherTableau {name!r}: b_err is all zeros, so it estimates no error")
            if isinstance(error_order, bool) or not isinstance(error_order, int) or error_order < 1:
                raise ValueError(
                    f"ButcherTableau {name!r}: error_order (the embedded method's order) must be a "
                    f"positive int when b_err is given, got {error_order!r}"
                )
        elif error_order is not None:
            raise ValueError(f"ButcherTableau {name!r}: error_order given without b_err")
        a_ = tuple(rows)
        b_dense_ = None if b_dense is None else _dense_rows(name, b_dense, b_)
        set_ = functools.partial(object.__setattr__, self)
        for key, value in (
            ("name", name),
            ("c", c_),
            ("a", a_),
            ("b", b_),
            ("order", order),
            ("b_err", b_err_),
            ("error_order", error_order),
            ("doc", doc),
            ("b_dense", b_dense_),
        ):
            set_(key, value)
        # derived facts
        implicit = any(a_[i][j] != 0.0 for i in range(s) for j in range(i, s))
        lower = all(a_[i][j] == 0.0 for i in range(s) for j in range(i + 1, s))
        fsal = (
            not implicit and s > 1 and c_[-1] == 1.0 and b_[-1] == 0.0 and all(a_[-1][j] == b_[j] for j in range(s - 1))
        )
        # Stage i influences y_{n+1} if b[i] != 0 or a later stage that does uses k_i; a trailing
        # stage used only by the error estimate (dopri5's, bosh3's, tsit5's FSAL stage) does not,
        # and an adjoint sweep never needs it. The stages of an implicit method are solved together.
        needed = [implicit] * s
        for i in reversed(range(s)):
            needed[i] = needed[i] or b_[i] != 0.0 or any(needed[j] and a_[j][i] != 0.0 for j in range(i + 1, s))
        a_terms = tuple(tuple((j, aij) for j, aij in enumerate(row) if aij != 0.0) for row in a_)
        b_terms = tuple((i, bi) for i, bi in enumerate(b_) if bi != 0.0)
        b_err_terms = () if b_err_ is None else tuple((i, e) for i, e in enumerate(b_err_) if e != 0.0)
        set_("fsal", fsal)
        set_("implicit", implicit)
        set_("diagonally_implicit", implicit and lower)
        set_("stiffly_accurate", c_[-1] == 1.0 and a_[-1] == b_)
        set_("explicit_first_stage", all(v == 0.0 for v in a_[0]))
        set_("a_terms", a_terms)
        set_("b_terms", b_terms)
        set_("b_err_terms", b_err_terms)
        set_("solution_stages", tuple(i for i in range(s) if needed[i]))
        set_("a_sums", tuple(_relative_to_largest(terms) for terms in a_terms))
        set_("b_sum", _relative_to_largest(b_terms))
        set_("b_err_sum", _relative_to_largest(b_err_terms))

    @property
    def num_stages(self) -> int:
        return len(self.c)

    @property
    def adaptive(self) -> bool:
        """Whether the method has an error estimate (and so supports adaptive steps)."""
        return self.b_err is not None

    def check_adaptive(self) -> None:
        """Raise ``ValueError`` unless the method has an error estimate: the one message for
        every place that needs adaptive steps (the time loop, ``solve``, ``odeint``'s options,
        the continuous adjoint's backward solve)."""
        if self.b_err is None:
            raise ValueError(
                f"method {self.name!r} takes fixed steps: give options={{'step_size': h}} (or options={{'grid': "
                f"times}}) to odeint; it has no error estimate and needs a step size: "
                f"steps=symode.FixedSteps(step_size=h) to symode.solve; or choose an adaptive method such as "
                f"'dopri5'"
            )

    def __repr__(self) -> str:
        kind = f"adaptive {self.order}({self.error_order})" if self.adaptive else f"order {self.order}"
        return f"ButcherTableau({self.name!r}, {self.num_stages} stages, {kind})"
