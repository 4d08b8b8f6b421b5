"""Butcher tableaus of explicit Runge-Kutta methods, as validated immutable data.

An explicit s-stage Runge-Kutta method advances ``y_n`` at ``t_n`` by ``h``::

    Y_i = y_n + h * sum_{j<i} a[i][j] * k_j,     k_i = f(t_n + c[i] * h, Y_i)
    y_{n+1} = y_n + h * sum_i b[i] * k_i
    error estimate = h * sum_i b_err[i] * k_i     (adaptive methods only)

``b_err`` is the difference between the propagating weights ``b`` and the weights of the
embedded method of order ``error_order``, so ``sum(b_err) == 0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from numbers import Real

__all__ = ["ButcherTableau"]

# Row sums and weight sums are checked to this absolute tolerance; coefficients given as
# decimals with 16+ digits (e.g. dopri8) carry rounding of about 1e-16 each.
_CONSISTENCY_TOL = 1e-12


def _as_float(value, what: str) -> float:
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


def _as_vector(values, name: str) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise TypeError(f"ButcherTableau.{name} must be a sequence of numbers, got {values!r}")
    return tuple(_as_float(v, f"ButcherTableau.{name}[{i}]") for i, v in enumerate(values))


def _relative_to_largest(terms):
    """``(p, w_p, ((j, w_j / w_p) for the other terms))``, ``|w_p|`` the largest weight; ``None``
    for no terms."""
    if not terms:
        return None
    p, wp = max(terms, key=lambda term: abs(term[1]))
    return p, wp, tuple((j, w / wp) for j, w in terms if j != p)


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge-Kutta method.

    Args:
        name: a short name, used in messages and statistics.
        c: stage times, length ``s``.
        a: the stage matrix, strictly lower triangular. Either ``s`` rows of length ``s``
            (zeros on and above the diagonal) or ragged rows, row ``i`` holding its ``i``
            entries ``a[i][0..i-1]`` (row 0 empty).
        b: propagating weights, length ``s``, summing to 1.
        order: the classical order of the propagating method.
        b_err: error-estimate weights ``b - b_embedded``, length ``s``, summing to 0; ``None``
            for a fixed-step-only method.
        error_order: the order of the embedded method (required with ``b_err``).

    Coefficients may be given as floats, ints or ``fractions.Fraction``; they are stored as
    Python floats. Construction raises ``ValueError``/``TypeError`` if the tableau is not a
    consistent explicit method (row sums ``sum_j a[i][j] == c[i]``, ``sum(b) == 1``,
    ``sum(b_err) == 0``).

    Derived attributes (computed once, at construction):
        fsal: First Same As Last: the last stage is evaluated at ``(t_{n+1}, y_{n+1})``, so
            it equals the first stage of the next step.
        a_terms: for each stage ``i`` the nonzero ``(j, a[i][j])``; ``b_terms``,
            ``b_err_terms``: the nonzero ``(i, b[i])`` and ``(i, b_err[i])``.
        solution_stages: the stages that influence ``y_{n+1}`` (ascending); a trailing stage
            used only by the error estimate (dopri5's FSAL stage) is not among them.
        a_sums, b_sum, b_err_sum: the same sums as ``(p, w_p, ((j, w_j / w_p), ...))``,
            relative to the largest weight ``w_p`` (``None`` for an empty sum): the form in
            which ``symode.runge_kutta.combine`` evaluates them.
    """

    name: str
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    order: int
    b_err: tuple[float, ...] | None = None
    error_order: int | None = None
    doc: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"ButcherTableau.name must be a non-empty string, got {self.name!r}")
        c = _as_vector(self.c, "c")
        b = _as_vector(self.b, "b")
        s = len(c)
        if s == 0:
            raise ValueError("ButcherTableau.c is empty: a method needs at least one stage")
        if len(b) != s:
            raise ValueError(f"ButcherTableau.b has {len(b)} entries but c has {s}; they must match")
        if isinstance(self.a, (str, bytes)) or not hasattr(self.a, "__len__") or len(self.a) != s:
            raise ValueError(f"ButcherTableau.a must have {s} rows (one per stage), got {self.a!r}")
        rows = []
        for i, row in enumerate(self.a):
            row = _as_vector(row, f"a[{i}]")
            if len(row) == s:
                if any(row[j] != 0.0 for j in range(i, s)):
                    raise ValueError(
                        f"ButcherTableau.a[{i}] has a nonzero entry on or above the diagonal: "
                        f"only explicit methods (strictly lower triangular a) are supported")
            elif len(row) == i:
                row = row + (0.0,) * (s - i)
            else:
                raise ValueError(
                    f"ButcherTableau.a[{i}] has {len(row)} entries; give {i} (ragged) or {s} (square)")
            rows.append(row)
        for i in range(s):
            row_sum = math.fsum(rows[i])
            if abs(row_sum - c[i]) > _CONSISTENCY_TOL * max(1.0, abs(c[i])):
                raise ValueError(
                    f"ButcherTableau {self.name!r}: row {i} of a sums to {row_sum!r} but c[{i}] = {c[i]!r}; "
                    f"an explicit method needs sum_j a[i][j] == c[i]")
        if abs(math.fsum(b) - 1.0) > _CONSISTENCY_TOL:
            raise ValueError(f"ButcherTableau {self.name!r}: the weights b sum to {math.fsum(b)!r}, not 1")
        if isinstance(self.order, bool) or not isinstance(self.order, int) or self.order < 1:
            raise ValueError(f"ButcherTableau.order must be a positive int, got {self.order!r}")
        b_err = None
        if self.b_err is not None:
            b_err = _as_vector(self.b_err, "b_err")
            if len(b_err) != s:
                raise ValueError(f"ButcherTableau.b_err has {len(b_err)} entries but c has {s}")
            if abs(math.fsum(b_err)) > _CONSISTENCY_TOL:
                raise ValueError(
                    f"ButcherTableau {self.name!r}: b_err sums to {math.fsum(b_err)!r}, not 0; b_err is "
                    f"b minus the embedded weights (not the embedded weights themselves)")
            if all(e == 0.0 for e in b_err):
                raise ValueError(f"ButcherTableau {self.name!r}: b_err is all zeros, so it estimates no error")
            if isinstance(self.error_order, bool) or not isinstance(self.error_order, int) or self.error_order < 1:
                raise ValueError(
                    f"ButcherTableau {self.name!r}: error_order (the embedded method's order) must be a "
                    f"positive int when b_err is given, got {self.error_order!r}")
        elif self.error_order is not None:
            raise ValueError(f"ButcherTableau {self.name!r}: error_order given without b_err")
        object.__setattr__(self, "c", c)
        object.__setattr__(self, "a", tuple(rows))
        object.__setattr__(self, "b", b)
        object.__setattr__(self, "b_err", b_err)
        self._derive()

    # ----------------------------------------------------------------------------------
    # derived facts
    @property
    def num_stages(self) -> int:
        return len(self.c)

    @property
    def adaptive(self) -> bool:
        """Whether the method has an error estimate (and so supports adaptive steps)."""
        return self.b_err is not None

    # (fsal, a_terms, b_terms, b_err_terms, solution_stages: computed once in __post_init__,
    # as plain attributes, so that torch.compile can read them)
    def _derive(self) -> None:
        s, a, b = len(self.c), self.a, self.b
        fsal = s > 1 and self.c[-1] == 1.0 and b[-1] == 0.0 and all(a[-1][j] == b[j] for j in range(s - 1))
        # Stage i influences y_{n+1} if b[i] != 0 or a later stage that does uses k_i; a trailing
        # stage used only by the error estimate (dopri5's, bosh3's, tsit5's FSAL stage) does not,
        # and an adjoint sweep never needs it.
        needed = [False] * s
        for i in reversed(range(s)):
            needed[i] = b[i] != 0.0 or any(needed[j] and a[j][i] != 0.0 for j in range(i + 1, s))
        derived = {
            "fsal": fsal,
            "a_terms": tuple(tuple((j, aij) for j, aij in enumerate(row) if aij != 0.0) for row in a),
            "b_terms": tuple((i, bi) for i, bi in enumerate(b) if bi != 0.0),
            "b_err_terms": () if self.b_err is None else tuple((i, e) for i, e in enumerate(self.b_err) if e != 0.0),
            "solution_stages": tuple(i for i in range(s) if needed[i]),
        }
        derived["a_sums"] = tuple(_relative_to_largest(terms) for terms in derived["a_terms"])
        derived["b_sum"] = _relative_to_largest(derived["b_terms"])
        derived["b_err_sum"] = _relative_to_largest(derived["b_err_terms"])
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        kind = f"adaptive {self.order}({self.error_order})" if self.adaptive else f"order {self.order}"
        return f"ButcherTableau({self.name!r}, {self.num_stages} stages, {kind})"

