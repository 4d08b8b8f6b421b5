"""The catalogue of named implicit Runge-Kutta methods (``symode._implicit`` takes their steps).

Diagonally implicit: implicit Euler, implicit midpoint, the trapezoidal rule, Alexander's SDIRK2,
TR-BDF2 and Kvaerno's ESDIRK pairs 3(2), 4(3), 5(4) (adaptive; A-L stable, stiffly accurate).
Fully implicit: Gauss-Legendre of orders 4 and 6 and Radau IIA of orders 3 and 5. The names of
the methods torchdiffeq has are torchdiffeq's. Coefficients are those of the cited papers;
irrational ones are formed in float64 from their closed forms (a method parameter that is a
polynomial root, Kvaerno's gamma, is found to round-off).
"""

from __future__ import annotations

import math
from fractions import Fraction

from ._tableau import ButcherTableau

__all__ = ["IMPLICIT_TABLEAUS"]

_q = Fraction


def _root(coefficients: tuple[float, ...], lo: float, hi: float) -> float:
    """The root in ``[lo, hi]`` of the polynomial with these coefficients (highest first), by bisection."""

    def p(x: float) -> float:
        return math.fsum(c * x ** (len(coefficients) - 1 - i) for i, c in enumerate(coefficients))

    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if (p(lo) < 0) == (p(mid) < 0):
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _row_sums(a) -> tuple[float, ...]:
    return tuple(math.fsum(row) for row in a)


def _esdirk(name: str, lower: list[list[float]], gamma: float, order: int, b_hat_row: int, doc: str) -> ButcherTableau:
    """An ESDIRK pair from its strictly lower rows (stages 2..s) and diagonal ``gamma``: stiffly
    accurate (``b`` is the last row), the embedded weights the row ``b_hat_row``, padded."""
    s = len(lower) + 1
    a = [[0.0] * s]
    for i, row in enumerate(lower, start=1):
        a.append([*row, gamma, *([0.0] * (s - i - 1))])
    b = a[-1]
    b_hat = [*a[b_hat_row][: b_hat_row + 1], *([0.0] * (s - b_hat_row - 1))]
    b_hat[b_hat_row] = gamma
    c = _row_sums(a)
    c = (*c[:-1], 1.0)
    return ButcherTableau(
        name, c=c, a=a, b=b, order=order, b_err=[x - y for x, y in zip(b, b_hat)], error_order=order - 1, doc=doc
    )


_s3, _s6, _s15, _s2 = math.sqrt(3.0), math.sqrt(6.0), math.sqrt(15.0), math.sqrt(2.0)

implicit_euler = ButcherTableau(
    "implicit_euler", c=[1], a=[[1]], b=[1], order=1, doc="Backward Euler: L-stable, order 1."
)
implicit_midpoint = ButcherTableau(
    "implicit_midpoint",
    c=[_q(1, 2)],
    a=[[_q(1, 2)]],
    b=[1],
    order=2,
    doc="The implicit midpoint rule (Gauss, 1 stage): symplectic, A-stable, order 2.",
)
trapezoid = ButcherTableau(
    "trapezoid",
    c=[0, 1],
    a=[[0, 0], [_q(1, 2), _q(1, 2)]],
    b=[_q(1, 2), _q(1, 2)],
    order=2,
    doc="The trapezoidal rule (Crank-Nicolson) as a 2-stage ESDIRK: A-stable, order 2.",
)
_g2 = 1.0 - _s2 / 2.0
sdirk2 = ButcherTableau(
    "sdirk2",
    c=[_g2, 1.0],
    a=[[_g2, 0.0], [1.0 - _g2, _g2]],
    b=[1.0 - _g2, _g2],
    order=2,
    doc="Alexander's 2-stage SDIRK (SIAM J. Numer. Anal. 14, 1977): L-stable, stiffly accurate, order 2.",
)
_gt = 2.0 - _s2
trbdf2 = ButcherTableau(
    "trbdf2",
    c=[0.0, _gt, 1.0],
    a=[[0.0, 0.0, 0.0], [_gt / 2, _gt / 2, 0.0], [_s2 / 4, _s2 / 4, _gt / 2]],
    b=[_s2 / 4, _s2 / 4, _gt / 2],
    order=2,
    doc="TR-BDF2 (Bank et al. 1985; Hosea & Shampine 1996) as a 3-stage ESDIRK: L-stable, order 2.",
)
gl4 = ButcherTableau(
    "gl4",
    c=[0.5 - _s3 / 6, 0.5 + _s3 / 6],
    a=[[0.25, 0.25 - _s3 / 6], [0.25 + _s3 / 6, 0.25]],
    b=[0.5, 0.5],
    order=4,
    doc="Gauss-Legendre, 2 stages: symplectic, A-stable, order 4.",
)
gl6 = ButcherTableau(
    "gl6",
    c=[0.5 - _s15 / 10, 0.5, 0.5 + _s15 / 10],
    a=[
        [5 / 36, 2 / 9 - _s15 / 15, 5 / 36 - _s15 / 30],
        [5 / 36 + _s15 / 24, 2 / 9, 5 / 36 - _s15 / 24],
        [5 / 36 + _s15 / 30, 2 / 9 + _s15 / 15, 5 / 36],
    ],
    b=[5 / 18, 4 / 9, 5 / 18],
    order=6,
    doc="Gauss-Legendre, 3 stages: symplectic, A-stable, order 6.",
)
radauIIA3 = ButcherTableau(
    "radauIIA3",
    c=[_q(1, 3), 1],
    a=[[_q(5, 12), _q(-1, 12)], [_q(3, 4), _q(1, 4)]],
    b=[_q(3, 4), _q(1, 4)],
    order=3,
    doc="Radau IIA, 2 stages: L-stable, stiffly accurate, order 3.",
)
_radau5_a = [
    [(88 - 7 * _s6) / 360, (296 - 169 * _s6) / 1800, (-2 + 3 * _s6) / 225],
    [(296 + 169 * _s6) / 1800, (88 + 7 * _s6) / 360, (-2 - 3 * _s6) / 225],
    [(16 - _s6) / 36, (16 + _s6) / 36, 1 / 9],
]
radauIIA5 = ButcherTableau(
    "radauIIA5",
    c=[(4 - _s6) / 10, (4 + _s6) / 10, 1.0],
    a=_radau5_a,
    b=_radau5_a[-1],
    order=5,
    doc="Radau IIA, 3 stages (Hairer & Wanner's RADAU5, fixed steps): L-stable, stiffly accurate, order 5.",
)

# Kvaerno, "Singly diagonally implicit Runge-Kutta methods with an explicit first stage", BIT 44 (2004)
_k3 = _root((6.0, -18.0, 9.0, -1.0), 0.4, 0.5)  # gamma: L-stability of the order-3 method
kvaerno3 = _esdirk(
    "kvaerno3",
    [
        [_k3],
        [(-4 * _k3**2 + 6 * _k3 - 1) / (4 * _k3), (-2 * _k3 + 1) / (4 * _k3)],
        [(6 * _k3 - 1) / (12 * _k3), -1 / ((24 * _k3 - 12) * _k3), (-6 * _k3**2 + 6 * _k3 - 1) / (6 * _k3 - 3)],
    ],
    _k3,
    3,
    2,
    "Kvaerno's ESDIRK 3(2), 4 stages (BIT 44, 2004): A-L stable, stiffly accurate; adaptive.",
)
_k4 = _root((24.0, -96.0, 72.0, -16.0, 1.0), 0.5, 0.6)  # gamma: L-stability of the order-4 method


def _p4(*coefficients: float) -> float:
    return math.fsum(c * _k4 ** (len(coefficients) - 1 - i) for i, c in enumerate(coefficients))


kvaerno4 = _esdirk(
    "kvaerno4",
    [
        [_k4],
        [_p4(144, -180, 81, -15, 1) * _k4 / _p4(12, -6, 1) ** 2, _p4(-36, 39, -15, 2) * _k4 / _p4(12, -6, 1) ** 2],
        [
            _p4(-144, 396, -330, 117, -18, 1) / (12 * _k4**2 * _p4(12, -9, 2)),
            _p4(72, -126, 69, -15, 1) / (12 * _k4**2 * _p4(3, -1)),
            _p4(-6, 6, -1) * _p4(12, -6, 1) ** 2 / (12 * _k4**2 * _p4(12, -9, 2) * _p4(3, -1)),
        ],
        [
            _p4(288, -312, 120, -18, 1) / (48 * _k4**2 * _p4(12, -9, 2)),
            _p4(24, -12, 1) / (48 * _k4**2 * _p4(3, -1)),
            -(_p4(12, -6, 1) ** 3) / (48 * _k4**2 * _p4(3, -1) * _p4(12, -9, 2) * _p4(6, -6, 1)),
            _p4(-24, 36, -12, 1) / _p4(24, -24, 4),
        ],
    ],
    _k4,
    4,
    3,
    "Kvaerno's ESDIRK 4(3), 5 stages (BIT 44, 2004): A-L stable, stiffly accurate; adaptive.",
)
kvaerno5 = _esdirk(
    "kvaerno5",
    [
        [0.26],
        [0.13, 0.84033320996790809],
        [0.22371961478320505, 0.47675532319799699, -0.06470895363112615],
        [0.16648564323248321, 0.10450018841591720, 0.03631482272098715, -0.13090704451073998],
        [0.13855640231268224, 0.0, -0.04245337201752043, 0.02446657898003141, 0.61943039072480676],
        [
            0.13659751177640291,
            0.0,
            -0.05496908796538376,
            -0.04118626728321046,
            0.62993304899016403,
            0.06962479448202728,
        ],
    ],
    0.26,
    5,
    5,
    "Kvaerno's ESDIRK 5(4), 7 stages (BIT 44, 2004): A-L stable, stiffly accurate; adaptive.",
)

#: the implicit methods by name
IMPLICIT_TABLEAUS: dict[str, ButcherTableau] = {
    t.name: t
    for t in (
        implicit_euler,
        implicit_midpoint,
        trapezoid,
        sdirk2,
        trbdf2,
        kvaerno3,
        kvaerno4,
        kvaerno5,
        gl4,
        gl6,
        radauIIA3,
        radauIIA5,
    )
}
